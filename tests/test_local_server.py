"""`make run`'s server (python -m devserver: uvicorn + LocalGateway) against real sockets.

Raw-socket probes check what the HTTP layer answers to malformed, slow,
oversized and pipelined requests; the rest checks that the app is served as
`chalice local` serves it. No assertion depends on timing: where a request
must still be in progress, the test holds it (a lock the app waits for).
"""
import contextlib
import fcntl
import http.client
import json
import socket
import textwrap
import time

import pytest

from servers import LocalServer

pytestmark = pytest.mark.http

CAR = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic', 'color': 'blue'}
# Short enough that the timeout tests finish soon; they assert what happens, not when.
SHORT_TIMEOUTS = ['--timeout-body', '1', '--timeout-keep-alive', '1']


def _env(db_path, **more):
    # Its own sqlite file, open writes: nothing shared with other tests' servers.
    return dict({'CARS_STORE': 'sqlite', 'CARS_DB_PATH': str(db_path), 'CARS_AUTH_TOKENS': ''},
                **more)


@pytest.fixture
def server(tmp_path):
    with LocalServer(env=_env(tmp_path / 'cars.db'),
                     log_path=str(tmp_path / 'server.log')) as srv:
        srv.log_file = tmp_path / 'server.log'
        yield srv


@pytest.fixture
def short_timeouts(tmp_path):
    with LocalServer(env=_env(tmp_path / 'cars.db'), args=SHORT_TIMEOUTS,
                     log_path=str(tmp_path / 'server.log')) as srv:
        yield srv


# A Chalice project of its own, served by `python -m devserver --project-dir`:
# routes that wait for what the test controls, so that "still in progress"
# is a fact, not a matter of timing.
HELD_APP = textwrap.dedent('''
    import fcntl
    import os
    import threading

    from chalice import Chalice

    app = Chalice(app_name='held')
    HERE = os.path.dirname(os.path.abspath(__file__))
    # None passes until eight requests are in the app at once (it breaks, and
    # the requests fail, if they never are).
    EIGHT = threading.Barrier(8, timeout=20)


    @app.route('/')
    def index():
        return {'hello': 'world'}


    @app.route('/together')
    def together():
        EIGHT.wait()
        return {'n': app.current_request.query_params['n']}


    @app.route('/held/{name}')
    def held(name):
        # Say so (a line in a file the test waits for), then wait until the
        # test lets go of its lock on HERE/hold.
        with open(os.path.join(HERE, name + '.entered'), 'a') as f:
            f.write('entered\\n')
        with open(os.path.join(HERE, 'hold')) as f:
            fcntl.flock(f, fcntl.LOCK_SH)
        return {'released': name}
''')


@pytest.fixture(scope='module')
def held_app(tmp_path_factory):
    project = tmp_path_factory.mktemp('held')
    (project / 'app.py').write_text(HELD_APP)
    (project / '.chalice').mkdir()
    (project / '.chalice' / 'config.json').write_text(json.dumps(
        {'version': '2.0', 'app_name': 'held', 'stages': {'dev': {}}}))
    (project / 'hold').touch()
    with LocalServer(args=['--project-dir', str(project)],
                     log_path=str(project / 'server.log')) as srv:
        srv.project = project
        yield srv


@contextlib.contextmanager
def _holding(server):
    """While inside, /held/<name> requests wait in the app."""
    with open(server.project / 'hold') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_until(condition, what, seconds=30):
    """Wait for something that must happen; the bound only stops a broken server hanging."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, 'still waiting for ' + what
        time.sleep(0.01)


def _connect(server):
    return http.client.HTTPConnection('127.0.0.1', server.port, timeout=30)


def _request(conn, method, path, body=None, headers=None):
    headers = dict(headers or {})
    if body is not None:
        body = json.dumps(body)
        headers['Content-Type'] = 'application/json'
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def _raw(server):
    return socket.create_connection(('127.0.0.1', server.port), timeout=30)


def _read_response(sock, buf=b''):
    """(status, headers, body, rest) for one response read off a raw socket."""
    while b'\r\n\r\n' not in buf:
        chunk = sock.recv(65536)
        assert chunk, 'connection closed before a response head'
        buf += chunk
    head, _, buf = buf.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(':')
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    headers = {k: v[0] if len(v) == 1 else v for k, v in headers.items()}
    length = int(headers.get('content-length', 0))
    while len(buf) < length:
        chunk = sock.recv(65536)
        assert chunk, 'connection closed inside a body'
        buf += chunk
    return status, headers, buf[:length], buf[length:]


def _closed(sock, rest=b''):
    """True once the server closes the connection having sent nothing more."""
    sock.settimeout(30)
    try:
        return rest == b'' and sock.recv(1) == b''
    except ConnectionResetError:
        return True


def _problem(headers, body, status):
    assert headers['content-type'] == 'application/problem+json'
    assert json.loads(body)['status'] == status
    return True


# --- the app, served as `chalice local` serves it -------------------------------

def test_serves_the_api_with_the_sqlite_store(server):
    conn = _connect(server)
    response, body = _request(conn, 'GET', '/')
    assert (response.status, body) == (200, b'Hello, world')
    response, body = _request(conn, 'POST', '/api/v1/cars', CAR)
    assert response.status == 201
    car = json.loads(body)
    response, body = _request(conn, 'GET', '/api/v1/cars/%s/' % car['id'])
    assert response.status == 200
    assert json.loads(body) == car
    assert response.getheader('ETag')
    response, body = _request(conn, 'GET', '/api/v1/health')
    assert json.loads(body) == {'status': 'ok', 'store': 'sqlite'}


def test_writes_one_access_log_line_per_request(server):
    conn = _connect(server)
    for path in ('/', '/api/v1/cars?limit=2', '/nope'):
        _request(conn, 'GET', path)
    conn.close()
    server.stop()  # flushes and closes the log
    lines = [line for line in server.log_file.read_text().splitlines() if '"GET ' in line]
    assert [line.split('"')[1:3] for line in lines[-3:]] == [
        ['GET / HTTP/1.1', ' 200 -'], ['GET /api/v1/cars?limit=2 HTTP/1.1', ' 200 -'],
        ['GET /nope HTTP/1.1', ' 404 -']]


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = _connect(server)
    response, body = _request(conn, 'POST', '/api/v1/cars', CAR)
    path = '/api/v1/cars/%s' % json.loads(body)['id']
    _request(conn, 'GET', path)
    sock = conn.sock
    for _ in range(200):
        response, body = _request(conn, 'GET', path)
        assert response.status == 200
        assert json.loads(body)['make'] == 'Toyota'
        assert not response.will_close
    # http.client reconnects silently when the server closes; the same socket
    # object means every request travelled on the one connection.
    assert conn.sock is sock


def test_unknown_path_is_a_404_problem_for_every_method(server):
    conn = _connect(server)
    for method, path in (('GET', '/nope'), ('POST', '/api/v2/cars'),
                         ('DELETE', '/api/v1/cars/1234/extra?x=1')):
        response, body = _request(conn, method, path)
        assert response.status == 404, (method, path)
        assert response.getheader('Content-Type') == 'application/problem+json'
        problem = json.loads(body)
        assert problem['status'] == 404
        assert problem['title'] == 'Not Found'
        assert problem['type'] and problem['detail']


def test_a_bad_car_id_is_still_the_apps_own_404_problem(server):
    response, body = _request(_connect(server), 'GET', '/api/v1/cars/71ag')
    assert response.status == 404
    assert json.loads(body)['status'] == 404


def test_an_unknown_method_is_the_apps_405_problem(server):
    response, body = _request(_connect(server), 'TRACE', '/api/v1/cars')
    assert response.status == 405
    assert response.getheader('Allow')
    assert json.loads(body)['status'] == 405


def test_204_and_304_answers_carry_no_content_length(server):
    conn = _connect(server)
    response, body = _request(conn, 'POST', '/api/v1/cars', CAR)
    path = '/api/v1/cars/%s' % json.loads(body)['id']
    tag = response.getheader('ETag')
    sock = _raw(server)
    sock.sendall(b'GET %s HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n'
                 % (path.encode(), tag.encode())
                 + b'DELETE %s HTTP/1.1\r\nHost: x\r\n\r\n' % path.encode()
                 + b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    status, headers, body, rest = _read_response(sock)
    assert (status, body) == (304, b'')
    assert 'content-length' not in headers and 'transfer-encoding' not in headers
    status, headers, body, rest = _read_response(sock, rest)
    assert (status, body) == (204, b'')
    assert 'content-length' not in headers and 'transfer-encoding' not in headers
    # The connection is still in step: the next answer is the next request's.
    status, _, body, _ = _read_response(sock, rest)
    assert (status, body) == (200, b'Hello, world')


def test_repeated_if_match_lines_reach_the_app_as_one_list(server):
    conn = _connect(server)
    response, body = _request(conn, 'POST', '/api/v1/cars', CAR)
    path = '/api/v1/cars/%s' % json.loads(body)['id']
    sock = _raw(server)
    body = b'{"color": "red"}'
    sock.sendall(b'PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'If-Match: *\r\nIf-Match: "1-x"\r\nContent-Length: %d\r\n\r\n%s'
                 % (path.encode(), len(body), body))
    status, headers, body, _ = _read_response(sock)
    # `*, "1-x"` is not `*` (which alone would let the write through): the app
    # refuses `*` beside a tag.
    assert status == 400 and _problem(headers, body, status)
    assert json.loads(_request(conn, 'GET', path)[1])['color'] == 'blue'


def test_repeated_authorization_lines_reach_the_app_as_one_value(tmp_path):
    with LocalServer(env=_env(tmp_path / 'cars.db', CARS_AUTH_TOKENS='a')) as srv:
        body = json.dumps(CAR).encode()
        request = (b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                   b'%sContent-Length: %d\r\n\r\n%s')
        sock = _raw(srv)
        sock.sendall(request % (b'Authorization: Bearer a\r\n', len(body), body))
        assert _read_response(sock)[0] == 201
        # "Bearer a, Bearer b" is no single valid token: refused, never created.
        sock.sendall(request % (b'Authorization: Bearer a\r\nAuthorization: Bearer b\r\n',
                                len(body), body))
        status, headers, answer, _ = _read_response(sock)
        assert status == 400 and _problem(headers, answer, status)


# --- malformed requests: uvicorn's parser (httptools) and the Host check --------

# httptools refuses these; uvicorn answers its own plain-text 400.
UNPARSABLE = {
    'two Content-Length lines': b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n'
                                b'Content-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
    'Content-Length of 5,001 digits': b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\n'
                                      b'Content-Length: ' + b'9' * 5001 + b'\r\n\r\n',
    'space in a header name': b'GET / HTTP/1.1\r\nHost: x\r\nX Name: v\r\n\r\n',
    'NUL in a header name': b'GET / HTTP/1.1\r\nHost: x\r\nX\x00Name: v\r\n\r\n',
    '@ in a header name': b'GET / HTTP/1.1\r\nHost: x\r\nX@Name: v\r\n\r\n',
    'NUL in a header value': b'GET / HTTP/1.1\r\nHost: x\r\nX-Name: a\x00b\r\n\r\n',
    'lone CR in a header value': b'GET / HTTP/1.1\r\nHost: x\r\nX-Name: a\rb\r\n\r\n',
    'NBSP as a separator': b'GET\xc2\xa0/ HTTP/1.1\r\nHost: x\r\n\r\n',
    'HTTP/+1.+1': b'GET / HTTP/+1.+1\r\nHost: x\r\n\r\n',
    'HTTP/1.1_0': b'GET / HTTP/1.1_0\r\nHost: x\r\n\r\n',
    'garbage request line': b'GARBAGE\r\nHost: x\r\n\r\n',
    'negative Content-Length': b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
}

# httptools lets these through; the server counts the Host lines (RFC 9112 3.2).
BAD_HOSTS = {
    'HTTP/1.1 without Host': b'GET / HTTP/1.1\r\n\r\n',
    'two Host lines': b'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
}


@pytest.mark.parametrize('name', list(UNPARSABLE))
def test_an_unparsable_request_is_a_400_and_the_connection_closes(server, name):
    sock = _raw(server)
    sock.sendall(UNPARSABLE[name])
    status, _, _, rest = _read_response(sock)
    assert status == 400
    # Nothing after it is answered (the smuggled GET included).
    assert _closed(sock, rest)


@pytest.mark.parametrize('name', list(BAD_HOSTS))
def test_a_request_without_exactly_one_host_is_a_400_problem_and_closes(server, name):
    sock = _raw(server)
    sock.sendall(BAD_HOSTS[name])
    status, headers, body, rest = _read_response(sock)
    assert status == 400 and _problem(headers, body, 400)
    assert _closed(sock, rest)


def test_http_1_0_needs_no_host_and_is_answered_then_closed(server):
    # uvicorn closes every HTTP/1.0 connection after its answer (keep-alive
    # asked or not), which HTTP/1.0 allows.
    sock = _raw(server)
    sock.sendall(b'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
    status, _, body, rest = _read_response(sock)
    assert (status, body) == (200, b'Hello, world')
    assert _closed(sock, rest)


def test_expect_100_continue_gets_an_interim_response_before_the_body(server):
    body = json.dumps(CAR).encode()
    sock = _raw(server)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Expect: 100-continue\r\nContent-Length: %d\r\n\r\n' % len(body))
    status, _, interim_body, rest = _read_response(sock)
    assert (status, interim_body) == (100, b'')
    sock.sendall(body)
    status, headers, created, _ = _read_response(sock, rest)
    assert status == 201
    assert json.loads(created)['make'] == 'Toyota'


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    body = json.dumps(CAR).encode()
    sock = _raw(server)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n%s' % (len(body), body)
                 + b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' + b'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n'
                 + b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    rest = b''
    statuses = []
    for _ in range(4):
        status, headers, _, rest = _read_response(sock, rest)
        statuses.append(status)
    assert statuses == [201, 200, 404, 200]
    assert headers['connection'] == 'close'
    assert _closed(sock, rest)


def test_a_body_split_across_many_packets_is_read_whole(server):
    body = json.dumps(CAR).encode()
    sock = _raw(server)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = (b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
            b'Content-Length: %d\r\n\r\n%s' % (len(body), body))
    for i in range(0, len(data), 7):
        sock.sendall(data[i:i + 7])
        time.sleep(0.001)
    status, _, created, _ = _read_response(sock)
    assert status == 201
    assert json.loads(created)['color'] == 'blue'


# --- bodies over 64 KiB -----------------------------------------------------------

def test_a_declared_1_mib_body_is_refused_with_413_from_the_head_alone(server):
    sock = _raw(server)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n' % (1024 * 1024))
    # Not one byte of the body is sent: the answer cannot have waited for it.
    status, headers, body, rest = _read_response(sock)
    assert status == 413 and _problem(headers, body, 413)
    assert json.loads(body)['type'].endswith('#problem-body-too-large')
    assert _closed(sock, rest)


def test_a_chunked_body_is_refused_with_413_once_past_64_kib_without_the_rest(server):
    sock = _raw(server)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Transfer-Encoding: chunked\r\n\r\n%x\r\n' % (1024 * 1024))
    # 64 KiB and one byte of a 1 MiB chunk, in pieces, and then nothing more:
    # the answer must come without the rest of the body.
    for _ in range(64):
        sock.sendall(b'x' * 1024)
    sock.sendall(b'x')
    status, headers, body, rest = _read_response(sock)
    assert status == 413 and _problem(headers, body, 413)
    assert _closed(sock, rest)


def test_a_body_within_64_kib_reaches_the_app(server):
    # The app's own body rules still apply to it (this one is not JSON).
    body = b'x' * (64 * 1024)
    sock = _raw(server)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n%s' % (len(body), body))
    status, headers, answer, _ = _read_response(sock)
    assert status == 400 and json.loads(answer)['type'].endswith('#problem-malformed-body')


# --- timeouts ---------------------------------------------------------------------

def test_a_body_that_stops_arriving_is_a_408_problem_and_closes(short_timeouts):
    sock = _raw(short_timeouts)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Content-Length: 100\r\n\r\n{"make": ')
    status, headers, body, rest = _read_response(sock)
    assert status == 408 and _problem(headers, body, 408)
    assert _closed(sock, rest)


def test_an_idle_keep_alive_connection_is_closed(short_timeouts):
    sock = _raw(short_timeouts)
    sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    status, headers, body, rest = _read_response(sock)
    assert (status, body) == (200, b'Hello, world')
    assert 'connection' not in headers  # kept alive, until idle too long
    assert _closed(sock, rest)


# --- concurrency: worker threads, held requests, limits ----------------------------

def test_eight_requests_are_in_the_app_at_once_each_with_its_own_current_request(held_app):
    # /together returns only once eight requests wait in it together: eight
    # worker threads. Each answers from app.current_request after all eight
    # have set theirs, so a request shared between threads would show.
    conns = [_connect(held_app) for _ in range(8)]
    for n, conn in enumerate(conns):
        conn.request('GET', '/together?n=%d' % n)
    for n, conn in enumerate(conns):
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {'n': str(n)})


def test_a_request_is_answered_while_another_is_held_in_the_app(held_app):
    slow, quick = _connect(held_app), _connect(held_app)
    with _holding(held_app):
        slow.request('GET', '/held/slow')
        _wait_until((held_app.project / 'slow.entered').exists, 'the held request in the app')
        # The held one keeps a worker thread; the quick one gets another.
        response, body = _request(quick, 'GET', '/')
        assert (response.status, json.loads(body)) == (200, {'hello': 'world'})
    response = slow.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {'released': 'slow'})


def test_requests_queued_behind_held_ones_still_run_each_exactly_once(held_app):
    # Two held requests take the steady threads; the next ones queue for them,
    # and past a short wait spare threads take them. Once the steady threads
    # are free again they reach the same queued requests, which must not run twice.
    held = [_connect(held_app) for _ in range(3)]
    with _holding(held_app):
        for n, conn in enumerate(held):
            conn.request('GET', '/held/queued-%d' % n)
        for n in range(3):
            _wait_until((held_app.project / ('queued-%d.entered' % n)).exists,
                        'held request %d in the app' % n)
        response, body = _request(_connect(held_app), 'GET', '/')
        assert (response.status, json.loads(body)) == (200, {'hello': 'world'})
    for n, conn in enumerate(held):
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (200,
                                                                  {'released': 'queued-%d' % n})
    # Both steady threads are idle again, the queue behind them drained.
    response, body = _request(_connect(held_app), 'GET', '/')
    assert response.status == 200
    for n in range(3):
        assert (held_app.project / ('queued-%d.entered' % n)).read_text() == 'entered\n'


def test_a_connection_is_answered_while_another_has_pipelined_requests_held(held_app):
    pipeline = _raw(held_app)
    with _holding(held_app):
        pipeline.sendall(b'GET /held/piped HTTP/1.1\r\nHost: x\r\n\r\n'
                         + b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' * 3)
        _wait_until((held_app.project / 'piped.entered').exists, 'the held request in the app')
        response, body = _request(_connect(held_app), 'GET', '/')
        assert (response.status, json.loads(body)) == (200, {'hello': 'world'})
    # Then the pipeline is answered in full, in order.
    status, _, body, rest = _read_response(pipeline)
    assert (status, json.loads(body)) == (200, {'released': 'piped'})
    for _ in range(3):
        status, _, body, rest = _read_response(pipeline, rest)
        assert (status, json.loads(body)) == (200, {'hello': 'world'})


def test_a_connection_past_limit_concurrency_gets_503(tmp_path):
    # Long keep-alive: the first connection stays open while the second asks.
    with LocalServer(env=_env(tmp_path / 'cars.db'),
                     args=['--limit-concurrency', '2', '--timeout-keep-alive', '600']) as srv:
        first = _connect(srv)
        assert _request(first, 'GET', '/')[0].status == 200
        # uvicorn counts the asking connection too: with one open, two is the limit.
        response, _ = _request(_connect(srv), 'GET', '/')
        assert response.status == 503


def test_running_out_of_descriptors_does_not_stop_the_server(tmp_path):
    """1,100 connections that never finish a head, under ulimit -n 1024."""
    log = tmp_path / 'server.log'
    with LocalServer(env=_env(tmp_path / 'cars.db'), nofile=1024, log_path=str(log)) as srv:
        half_open = []
        try:
            for _ in range(1100):
                sock = socket.socket()
                sock.settimeout(30)
                sock.connect(('127.0.0.1', srv.port))  # the kernel's backlog queues the rest
                sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n')  # never finished
                half_open.append(sock)
            # More connections than descriptors: accept() fails, and asyncio says so.
            _wait_until(lambda: 'socket.accept() out of system resource' in log.read_text(),
                        'accept() to run out of descriptors')
        finally:
            for sock in half_open:
                sock.close()
        # Once they are gone, the server accepts and answers again.
        response, body = _request(_connect(srv), 'GET', '/api/v1/health')
        assert response.status == 200 and json.loads(body)['status'] == 'ok'


def test_stock_chalice_local_still_serves_the_app(tmp_path):
    with LocalServer(env=_env(tmp_path / 'cars.db'), kind='chalice') as srv:
        response, body = _request(_connect(srv), 'GET', '/')
        assert (response.status, body) == (200, b'Hello, world')
