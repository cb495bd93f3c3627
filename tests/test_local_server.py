"""`make run`'s server (python -m devserver: uvicorn + LocalGateway) against real sockets.

Raw-socket probes check what the HTTP layer answers to malformed, slow,
oversized and pipelined requests; the rest checks that the app is served as
`chalice local` serves it.
"""
import http.client
import json
import select
import socket
import threading
import time

import pytest

from chalicelib.domain import cars
from chalicelib.store.sqlite import SqliteStore
from servers import LocalServer

pytestmark = pytest.mark.http

CAR = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic', 'color': 'blue'}
BIG_PAGE = '/api/v1/cars?limit=1000'
# Short enough that the timeout tests finish soon; they assert what happens, not when.
SHORT_TIMEOUTS = ['--timeout-head', '1', '--timeout-body', '1', '--timeout-keep-alive', '1']


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


@pytest.fixture(scope='module')
def thousand_cars(tmp_path_factory):
    """A server whose store holds 1,000 cars: GET ?limit=1000 is a slow request."""
    tmp = tmp_path_factory.mktemp('thousand')
    path = tmp / 'cars.db'
    SqliteStore(str(path)).put_many([dict(CAR, id=i) for i in cars.all_assignable_ids()[:1000]])
    with LocalServer(env=_env(path), log_path=str(tmp / 'server.log')) as srv:
        srv.log_file = tmp / 'server.log'
        yield srv


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

BAD_REQUESTS = {
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
    'HTTP/1.1 without Host': b'GET / HTTP/1.1\r\n\r\n',
    'two Host lines': b'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
    'garbage request line': b'GARBAGE\r\nHost: x\r\n\r\n',
    'negative Content-Length': b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
}


@pytest.mark.parametrize('name', list(BAD_REQUESTS))
def test_a_malformed_request_is_a_400_problem_and_the_connection_closes(server, name):
    sock = _raw(server)
    sock.sendall(BAD_REQUESTS[name])
    status, headers, body, rest = _read_response(sock)
    assert status == 400 and _problem(headers, body, 400)
    # Nothing after it is answered (the smuggled GET included).
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

def _send_until_answered(sock, chunks):
    """Send chunks until the server answers (or stops reading); the bytes sent."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def test_a_declared_1_mib_body_is_refused_with_413_before_any_of_it_is_read(server):
    sock = _raw(server)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n' % (1024 * 1024))
    # Answered from the head alone: not one byte of the body was sent.
    status, headers, body, rest = _read_response(sock)
    assert status == 413 and _problem(headers, body, 413)
    assert json.loads(body)['type'].endswith('#problem-body-too-large')
    _send_until_answered(sock, (b'x' * 16384 for _ in range(64)))
    assert _closed(sock, rest)


def test_1_mib_bodies_sent_whole_get_413_on_every_connection(server):
    for _ in range(3):
        sock = _raw(server)
        sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json'
                     b'\r\nContent-Length: %d\r\n\r\n' % (1024 * 1024))
        _send_until_answered(sock, (b'x' * 16384 for _ in range(64)))
        status, headers, body, rest = _read_response(sock)
        assert status == 413 and _problem(headers, body, 413)
        assert _closed(sock, rest)


def test_a_chunked_body_trickled_a_byte_at_a_time_is_refused_once_past_64_kib(server):
    sock = _raw(server)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                 b'Transfer-Encoding: chunked\r\n\r\n%x\r\n' % (1024 * 1024))

    def one_byte_at_a_time():
        for i in range(1024 * 1024):
            yield b'x'

    sent = _send_until_answered(sock, one_byte_at_a_time())
    status, headers, body, rest = _read_response(sock)
    assert status == 413 and _problem(headers, body, 413)
    assert 64 * 1024 < sent < 1024 * 1024
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

def test_a_connection_that_never_sends_a_request_is_closed(short_timeouts):
    assert _closed(_raw(short_timeouts))


def test_a_request_head_that_stops_arriving_is_closed(short_timeouts):
    sock = _raw(short_timeouts)
    sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nX-Partial: ')
    assert _closed(sock)


def test_a_head_that_stops_arriving_on_a_kept_alive_connection_is_closed(short_timeouts):
    sock = _raw(short_timeouts)
    sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo')
    status, _, body, rest = _read_response(sock)
    assert (status, body) == (200, b'Hello, world')
    assert _closed(sock, rest)


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


# --- load: file descriptors, slow requests, pipelines ------------------------------

def test_1100_half_open_requests_under_ulimit_1024_do_not_stop_the_server(tmp_path):
    """The server runs out of descriptors: it must neither spin nor stop answering."""
    with LocalServer(env=_env(tmp_path / 'cars.db'), args=SHORT_TIMEOUTS, nofile=1024,
                     log_path=str(tmp_path / 'server.log')) as srv:
        cpu_before, wall_before = srv.cpu_seconds(), time.monotonic()
        half_open = []
        try:
            for _ in range(1100):
                sock = socket.socket()
                sock.settimeout(30)
                sock.connect(('127.0.0.1', srv.port))  # the kernel's backlog queues the rest
                sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n')  # never finished
                half_open.append(sock)
            # While the descriptors are spent, a new request may get uvicorn's 503
            # (past --limit-concurrency) or the app's (no descriptor left for the
            # sqlite file): an answer either way, never a hang. Once the head
            # timeout has closed the half-open ones, it is served in full.
            statuses = []
            for _ in range(40):
                response, body = _request(_connect(srv), 'GET', '/api/v1/health')
                statuses.append(response.status)
                if response.status != 503:
                    break
                time.sleep(0.25)
            assert statuses[-1] == 200 and json.loads(body)['status'] == 'ok', statuses
            # Every half-open request is given up on (a head timeout), none answered.
            assert all(_closed(sock) for sock in half_open)
            response, body = _request(_connect(srv), 'GET', '/')
            assert (response.status, body) == (200, b'Hello, world')
        finally:
            for sock in half_open:
                sock.close()
        cpu = srv.cpu_seconds() - cpu_before
        wall = time.monotonic() - wall_before
    # It did run out (asyncio says so when accept() fails for want of descriptors).
    assert 'socket.accept() out of system resource' in (tmp_path / 'server.log').read_text()
    # Out of descriptors, asyncio stops accepting for a second at a time rather
    # than retrying at once: a busy loop would use a whole core all along.
    assert cpu < wall / 2, (cpu, wall)


def test_quick_requests_do_not_queue_behind_a_slow_one(thousand_cars):
    """Small GETs sent after a 1,000-car page are answered before it.

    The page keeps a worker thread several times as long as a one-car page.
    Served one at a time, GETs sent after the page would wait for it; the
    access log, written as each answer is sent, shows the server's order. A
    trial can miss when the page happens to be quick, so there are up to 20.
    """
    log = thousand_cars.log_file

    def trial():
        quick, slow = _connect(thousand_cars), _connect(thousand_cars)
        for conn in (quick, slow):
            _request(conn, 'GET', '/')  # both accepted before the page is asked
        seen = len(log.read_text().splitlines())
        slow.request('GET', BIG_PAGE)
        for _ in range(5):
            response, body = _request(quick, 'GET', '/api/v1/cars?limit=1')
            assert response.status == 200 and len(json.loads(body)['cars']) == 1
        response = slow.getresponse()
        assert response.status == 200 and len(json.loads(response.read())['cars']) == 1000
        _request(slow, 'GET', '/')  # answered after the page's log line was written
        order = [line for line in log.read_text().splitlines()[seen:]
                 if '?limit=1 ' in line or '?limit=1000 ' in line]
        assert len(order) == 6
        return '?limit=1 ' in order[0]

    assert any(trial() for _ in range(20)), 'no small GET was answered before the big page'


def test_a_get_is_answered_while_50_pipelined_big_pages_are_outstanding(thousand_cars):
    pipeline = _raw(thousand_cars)
    # 50 pages, then a marker request: its answer means the 50th page's log
    # line is written (the access log is written as each answer is sent).
    pipeline.sendall(b'GET %s HTTP/1.1\r\nHost: x\r\n\r\n' % BIG_PAGE.encode() * 50
                     + b'GET /?marker HTTP/1.1\r\nHost: x\r\n\r\n')
    # The first answer shows the pipeline is being worked through.
    status, _, body, rest = _read_response(pipeline)
    assert status == 200 and len(json.loads(body)['cars']) == 1000
    response, body = _request(_connect(thousand_cars), 'GET', '/api/v1/cars?limit=2')
    assert response.status == 200 and len(json.loads(body)['cars']) == 2
    # Only now read the other 49: answered in full, in order.
    for _ in range(49):
        status, _, body, rest = _read_response(pipeline, rest)
        assert status == 200 and len(json.loads(body)['cars']) == 1000
    status, _, body, _ = _read_response(pipeline, rest)
    assert (status, body) == (200, b'Hello, world')
    lines = thousand_cars.log_file.read_text().splitlines()
    small = [i for i, line in enumerate(lines) if '?limit=2 ' in line]
    marker = [i for i, line in enumerate(lines) if '/?marker ' in line]
    pages = [i for i, line in enumerate(lines) if '?limit=1000 ' in line and i < marker[-1]]
    # The small GET was answered before the last pipelined page, not after all of them.
    assert small[-1] < pages[-1]


def test_stock_chalice_local_still_serves_the_app(tmp_path):
    with LocalServer(env=_env(tmp_path / 'cars.db'), kind='chalice') as srv:
        response, body = _request(_connect(srv), 'GET', '/')
        assert (response.status, body) == (200, b'Hello, world')
