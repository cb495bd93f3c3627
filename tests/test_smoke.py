"""deploy/smoke.py (`make smoke`): green against a working API, red on the first broken step.

Run against `make run`'s server (tests/servers.py) with open and with protected
writes, and against a stand-in API that answers every request with a 500.
"""
import http.server
import os
import subprocess
import sys
import threading

import pytest

from servers import ROOT, LocalServer

SMOKE = os.path.join(ROOT, 'deploy', 'smoke.py')
TOKEN = 'smoke-token-1f2e3d'


def run_smoke(url, token=None, via_make=False):
    env = {k: v for k, v in os.environ.items() if k not in ('SMOKE_TOKEN', 'TOKEN')}
    if via_make:
        cmd = ['make', '--no-print-directory', 'smoke', 'URL=' + url]
        if token:
            cmd.append('TOKEN=' + token)
    else:
        cmd = [sys.executable, SMOKE, url]
        if token:
            env['SMOKE_TOKEN'] = token
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def cars_in(db_path):
    import sqlite3
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT count(*) FROM cars").fetchone()[0]


@pytest.fixture
def server_env(tmp_path):
    env = {'CARS_STORE': 'sqlite', 'CARS_DB_PATH': str(tmp_path / 'cars.db')}
    env.pop('CARS_AUTH_TOKENS', None)
    return env


def test_smoke_passes_against_an_open_api_and_leaves_no_car(server_env):
    env = dict(server_env, CARS_AUTH_TOKENS='')
    with LocalServer(env=env) as server:
        result = run_smoke(server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [line.split()[1] for line in result.stdout.splitlines() if line.startswith('ok')]
    assert steps == ['health', 'create', 'read', 'conditional', 'list', 'delete', '404']
    assert cars_in(server_env['CARS_DB_PATH']) == 0


def test_smoke_with_a_token_checks_that_writes_without_one_are_refused(server_env):
    env = dict(server_env, CARS_AUTH_TOKENS=TOKEN)
    with LocalServer(env=env) as server:
        result = run_smoke(server.url, token=TOKEN, via_make=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'ok    401 without token' in result.stdout
    assert TOKEN not in result.stdout + result.stderr  # make must not echo it
    assert cars_in(server_env['CARS_DB_PATH']) == 0


def test_smoke_fails_on_a_protected_api_without_a_token_and_names_the_step(server_env):
    env = dict(server_env, CARS_AUTH_TOKENS=TOKEN)
    with LocalServer(env=env) as server:
        result = run_smoke(server.url)
    assert result.returncode == 1
    assert 'FAIL  create' in result.stdout
    assert 'expected 201, got 401' in result.stdout


class _Always500(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        body = b'{"type":"about:blank","title":"Internal Server Error","status":500}'
        self.send_response(500)
        self.send_header('Content-Type', 'application/problem+json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


class _BrokenReads(_Always500):
    """Healthy, creates car 1234, then fails to read it; records what it is asked."""
    requests = []

    def _json(self, status, body, headers=()):
        data = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _answer(self):
        self.requests.append((self.command, self.path))
        self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if (self.command, self.path) == ('GET', '/api/v1/health'):
            return self._json(200, '{"status": "ok", "store": "fake"}')
        if (self.command, self.path) == ('POST', '/api/v1/cars'):
            return self._json(201, '{"id": "1234"}', [('ETag', '"1-a"'),
                                                       ('Location', '/api/v1/cars/1234')])
        if (self.command, self.path) == ('DELETE', '/api/v1/cars/1234'):
            self.send_response(204)
            self.end_headers()
            return None
        return super()._answer()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer


def serve(handler):
    """A stand-in API on a free loopback port, stopped on exit."""
    import contextlib

    @contextlib.contextmanager
    def running():
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield 'http://127.0.0.1:%d/' % server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
    return running()


def test_smoke_deletes_its_car_when_a_later_step_fails():
    _BrokenReads.requests = []
    with serve(_BrokenReads) as url:
        result = run_smoke(url)
    assert result.returncode == 1
    assert 'FAIL  read' in result.stdout
    assert ('DELETE', '/api/v1/cars/1234') in _BrokenReads.requests
    assert 'clean-up: DELETE car 1234 -> 204' in result.stdout


def test_smoke_fails_fast_against_an_api_answering_500():
    with serve(_Always500) as url:
        result = run_smoke(url)
    assert result.returncode == 1
    assert result.stdout.startswith('FAIL  health')
    assert 'expected 200, got 500' in result.stdout
    assert 'create' not in result.stdout
