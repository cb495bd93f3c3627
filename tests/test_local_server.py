"""`make run`'s server (python -m chalicelib.local_server) against a real socket."""
import http.client
import json
import socket

import pytest

from chalicelib.local_server import FastRequestHandler
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


def test_handler_sets_tcp_nodelay_on_its_connection():
    listener = socket.create_server(('127.0.0.1', 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        handler = FastRequestHandler.__new__(FastRequestHandler)
        handler.request = accepted
        handler.setup()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # A buffered socket file: headers and body leave in one write.
        assert FastRequestHandler.wbufsize != 0
        handler.finish()
    finally:
        for s in (client, accepted, listener):
            s.close()


def test_stock_chalice_local_still_serves_the_app(tmp_path):
    with LocalServer(env=_env(tmp_path), kind='chalice') as srv:
        response, body = _request(_connect(srv), 'GET', '/')
        assert (response.status, body) == (200, b'Hello, world')
