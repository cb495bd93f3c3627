"""`make run`'s server (python -m chalicelib.local_server) against a real socket."""
import http.client
import json
import selectors
import socket
import time

import pytest

from chalicelib.local_server import EventLoopServer
from servers import LocalServer

pytestmark = pytest.mark.http

CAR = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic', 'color': 'blue'}


def _env(tmp_path):
    # Its own sqlite file, open writes: nothing shared with other tests' servers.
    return {'CARS_STORE': 'sqlite', 'CARS_DB_PATH': str(tmp_path / 'cars.db'),
            'CARS_AUTH_TOKENS': ''}


@pytest.fixture
def server(tmp_path):
    with LocalServer(env=_env(tmp_path), kind='dev',
                     log_path=str(tmp_path / 'server.log')) as srv:
        yield srv


def _connect(server):
    return http.client.HTTPConnection('127.0.0.1', server.port, timeout=10)


def _request(conn, method, path, body=None):
    headers = {}
    if body is not None:
        body = json.dumps(body)
        headers['Content-Type'] = 'application/json'
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response, response.read()


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


def test_accepted_connections_have_tcp_nodelay():
    listener = socket.create_server(('127.0.0.1', 0))
    listener.setblocking(False)
    srv = EventLoopServer.__new__(EventLoopServer)
    srv.socket = listener
    srv._selector = selectors.DefaultSelector()
    client = socket.create_connection(listener.getsockname())
    try:
        srv._accept()
        (key,) = srv._selector.get_map().values()
        assert key.fileobj.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        key.fileobj.close()
    finally:
        srv._selector.close()
        for s in (client, listener):
            s.close()


def _raw(server):
    return socket.create_connection(('127.0.0.1', server.port), timeout=10)


def _read_response(sock, buf=b''):
    """(status, headers, body, rest) for one response read off a raw socket."""
    while b'\r\n\r\n' not in buf:
        chunk = sock.recv(65536)
        assert chunk, 'connection closed before a response head'
        buf += chunk
    head, _, buf = buf.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, _, v in (line.partition(': ') for line in lines[1:])}
    length = int(headers.get('content-length', 0))
    while len(buf) < length:
        chunk = sock.recv(65536)
        assert chunk, 'connection closed inside a body'
        buf += chunk
    return status, headers, buf[:length], buf[length:]


def _closed(sock):
    sock.settimeout(5)
    try:
        return sock.recv(1) == b''
    except ConnectionResetError:
        return True


@pytest.mark.parametrize('line', [b'GARBAGE', b'GET /', b'GET / HTTP/x.y',
                                  b'GET / FTP/1.1', b'GET / HTTP/1.1 extra'])
def test_a_malformed_request_line_is_a_400_problem_and_the_connection_closes(server, line):
    sock = _raw(server)
    sock.sendall(line + b'\r\nHost: x\r\n\r\n')
    status, headers, body, _ = _read_response(sock)
    assert status == 400
    assert headers['content-type'] == 'application/problem+json'
    assert json.loads(body)['status'] == 400
    assert _closed(sock)


def test_malformed_headers_and_content_length_are_400_problems(server):
    for head in (b'GET / HTTP/1.1\r\nno colon here\r\n\r\n',
                 b'POST /api/v1/cars HTTP/1.1\r\nContent-Length: ten\r\n\r\n',
                 b'POST /api/v1/cars HTTP/1.1\r\nContent-Length: -1\r\n\r\n'):
        sock = _raw(server)
        sock.sendall(head)
        status, headers, body, _ = _read_response(sock)
        assert status == 400, head
        assert json.loads(body)['status'] == 400
        assert _closed(sock)


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
    sock.sendall(b'POST /api/v1/cars HTTP/1.1\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n%s' % (len(body), body)
                 + b'GET / HTTP/1.1\r\n\r\n' + b'GET /nope HTTP/1.1\r\n\r\n'
                 + b'GET / HTTP/1.1\r\nConnection: close\r\n\r\n')
    rest = b''
    statuses = []
    for _ in range(4):
        status, headers, _, rest = _read_response(sock, rest)
        statuses.append(status)
    assert statuses == [201, 200, 404, 200]
    assert headers['connection'] == 'close'
    assert rest == b'' and _closed(sock)


def test_http_1_0_closes_unless_asked_to_keep_alive(server):
    sock = _raw(server)
    sock.sendall(b'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
    status, _, body, rest = _read_response(sock)
    assert (status, body) == (200, b'Hello, world')
    sock.sendall(b'GET / HTTP/1.0\r\n\r\n')
    status, _, body, rest = _read_response(sock, rest)
    assert (status, body) == (200, b'Hello, world')
    assert _closed(sock)


def test_head_sends_the_length_but_no_body(server):
    sock = _raw(server)
    sock.sendall(b'HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n')
    buf = b''
    while buf.count(b'\r\n\r\n') < 2 or not buf.endswith(b'Hello, world'):
        buf += sock.recv(65536)
    first, _, second = buf.partition(b'\r\n\r\n')
    assert first.startswith(b'HTTP/1.1 ')
    assert second.startswith(b'HTTP/1.1 200')


def test_an_unknown_method_is_the_apps_405_problem(server):
    conn = _connect(server)
    response, body = _request(conn, 'TRACE', '/api/v1/cars')
    assert response.status == 405
    assert response.getheader('Allow')
    assert json.loads(body)['status'] == 405


def test_a_body_split_across_many_packets_is_read_whole(server):
    body = json.dumps(CAR).encode()
    sock = _raw(server)
    data = (b'POST /api/v1/cars HTTP/1.1\r\nContent-Type: application/json\r\n'
            b'Content-Length: %d\r\n\r\n%s' % (len(body), body))
    for i in range(0, len(data), 7):
        sock.sendall(data[i:i + 7])
        time.sleep(0.001)
    status, _, created, _ = _read_response(sock)
    assert status == 201
    assert json.loads(created)['color'] == 'blue'


def test_stock_chalice_local_still_serves_the_app(tmp_path):
    with LocalServer(env=_env(tmp_path), kind='chalice') as srv:
        response, body = _request(_connect(srv), 'GET', '/')
        assert (response.status, body) == (200, b'Hello, world')
