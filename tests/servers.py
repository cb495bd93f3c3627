"""Real HTTP servers for tests: `chalice local` (or `make run`'s server) in a child process."""
import os
import resource
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

    `kind='dev'` (the default) runs `make run`'s server (`python -m devserver`:
    Chalice's LocalGateway under uvicorn, the app on a pool of worker threads,
    so concurrent requests reach the app and the store at the same time);
    `args` are more of its command-line flags (short timeouts, say, or
    `--project-dir` to serve another Chalice project).
    `kind='chalice'` runs stock `chalice local`. `nofile` sets the server
    process's file descriptor limit (`ulimit -n`).
    """

    def __init__(self, env=None, kind='dev', cwd=ROOT, log_path=None, args=(), nofile=None):
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault('PYTHONUNBUFFERED', '1')
        self.kind = kind
        self.cwd = cwd
        self.log_path = log_path
        self.args = list(args)
        self.nofile = nofile
        self.proc = None

    def command(self):
        if self.kind == 'dev':
            return [sys.executable, '-m', 'devserver',
                    '--host', '127.0.0.1', '--port', str(self.port)] + self.args
        chalice = os.path.join(os.path.dirname(sys.executable), 'chalice')
        return [chalice, 'local', '--host', '127.0.0.1', '--port', str(self.port),
                '--no-autoreload']

    def start(self, timeout=30):
        self._log = open(self.log_path, 'wb') if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=self._limits if self.nofile else None)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError('server exited with %s' % code)
            try:
                urllib.request.urlopen(self.url + '/', timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError('server did not answer on %s within %ss' % (self.url, timeout))

    def _limits(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

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
