"""Real HTTP servers for tests: `chalice local` (or `make run`'s server) in a child process."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class LocalServer(object):
    """A server process on a free loopback port, stopped by PID.

    `kind='dev'` (the default) runs `make run`'s server (`python -m
    chalicelib.local_server`: Chalice's LocalGateway under one event loop, one
    request at a time); `kind='threaded'` runs it with `--threads` (Chalice's
    own thread-per-connection server with a deep backlog), which the
    concurrency tests use so that their requests reach the app at the same
    time; `kind='chalice'` runs stock `chalice local`.
    """

    def __init__(self, env=None, kind='dev', cwd=ROOT, log_path=None):
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault('PYTHONUNBUFFERED', '1')
        self.kind = kind
        self.cwd = cwd
        self.log_path = log_path
        self.proc = None

    def command(self):
        if self.kind in ('dev', 'threaded'):
            return [sys.executable, '-m', 'chalicelib.local_server',
                    '--host', '127.0.0.1', '--port', str(self.port)] + (
                        ['--threads'] if self.kind == 'threaded' else [])
        chalice = os.path.join(os.path.dirname(sys.executable), 'chalice')
        return [chalice, 'local', '--host', '127.0.0.1', '--port', str(self.port),
                '--no-autoreload']

    def start(self, timeout=30):
        self._log = open(self.log_path, 'wb') if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('server exited with %s' % self.proc.returncode)
            try:
                urllib.request.urlopen(self.url + '/', timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError('server did not answer on %s within %ss' % (self.url, timeout))

    def stop(self, sig=None):
        if self.proc is None:
            return
        if sig is not None:
            self.proc.send_signal(sig)
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
