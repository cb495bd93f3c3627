"""HEAD wherever GET is (RFC 9110 9.3.2): GET's status and headers, no body.

Through the Lambda entry point on both stores, and over HTTP (`make run`'s
server and stock `chalice local`).
"""
import json

import pytest
import requests

from gateway_events import invoke, rest_event
from servers import LocalServer
from stores import server_env

COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}
JSON = {'Content-Type': 'application/json'}


def create(api, car=COROLLA):
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(car))
    assert r.status_code == 201, r.body
    return json.loads(r.body)['id']


def requests_of(car_id, tag):
    """(path, request headers) of every GET route, in success and in error."""
    return [
        ('/', {}),
        ('/api/v1/health', {}),
        ('/api/v1/cars', {}),
        ('/api/v1/cars?limit=1', {}),             # a next page: Link
        ('/api/v1/cars?make=toyota&year=2015', {}),
        ('/api/v1/cars?limit=0', {}),             # 400 problem
        ('/api/v1/cars?colour=red', {}),          # 400 problem
        ('/api/v1/cars/' + car_id, {}),
        ('/api/v1/cars/' + car_id + '/', {}),
        ('/api/v1/cars/' + car_id, {'If-None-Match': tag}),   # 304
        ('/api/v1/cars/' + car_id, {'If-None-Match': '"0-other"'}),
        ('/api/v1/cars/1111', {}),                # missing: 404 problem
        ('/api/v1/cars/12ab', {}),                # not an id: 404 problem
        ('/api/v1/openapi.json', {}),
        ('/api/v1/docs', {}),
    ]


def test_head_answers_every_get_route_with_its_status_and_headers_and_no_body(api):
    car_id = create(api)
    create(api, dict(COROLLA, model='Yaris'))
    tag = api.http.get('/api/v1/cars/' + car_id).headers['ETag']
    statuses = set()
    for path, headers in requests_of(car_id, tag):
        get = api.http.get(path, headers=headers)
        head = api.http.request('HEAD', path, headers=headers)
        assert head.status_code == get.status_code, path
        assert head.headers == get.headers, path
        assert head.body == b'', (path, head.body)
        assert get.body or get.status_code == 304, path
        statuses.add(get.status_code)
    assert statuses == {200, 304, 400, 404}
    head = api.http.request('HEAD', '/api/v1/cars/' + car_id)
    assert head.headers['ETag'] == tag
    assert 'Link' in api.http.request('HEAD', '/api/v1/cars?limit=1').headers


def test_head_through_the_raw_lambda_proxy_event_has_an_empty_body(api):
    car_id = create(api)
    path = '/api/v1/cars/{car_id}'
    get = invoke(rest_event('GET', path, car_id=car_id))
    head = invoke(rest_event('HEAD', path, car_id=car_id))
    assert get[0] == head[0] == 200
    assert head[1] == get[1] and head[1]['ETag']
    assert head[3] == '' and get[2]['id'] == car_id
    missing = invoke(rest_event('HEAD', path, car_id='1111'))
    assert missing[0] == 404 and missing[3] == ''
    assert missing[1]['Content-Type'].startswith('application/problem+json')


def test_head_changes_nothing(api):
    car_id = create(api)
    before = api.http.get('/api/v1/cars/' + car_id)
    for _ in range(3):
        assert api.http.request('HEAD', '/api/v1/cars/' + car_id).status_code == 200
    after = api.http.get('/api/v1/cars/' + car_id)
    assert after.headers['ETag'] == before.headers['ETag'] and after.body == before.body


def test_allow_lists_head_in_405s_and_preflights(api, monkeypatch):
    car_id = create(api)
    r = api.http.request('DELETE', '/api/v1/cars')
    assert r.status_code == 405
    assert [m.strip() for m in r.headers['Allow'].split(',')] == ['GET', 'HEAD', 'POST',
                                                                  'OPTIONS']
    monkeypatch.setenv('CARS_CORS_ORIGINS', 'https://shop.example')
    expected = {'/api/v1/cars': ['GET', 'HEAD', 'POST', 'OPTIONS'],
                '/api/v1/cars/' + car_id: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE',
                                           'OPTIONS']}
    for path, methods in expected.items():
        r = api.http.request('OPTIONS', path, headers={
            'Origin': 'https://shop.example', 'Access-Control-Request-Method': 'HEAD'})
        assert r.status_code == 204
        assert [m.strip() for m in r.headers['Allow'].split(',')] == methods, path
        assert r.headers['Access-Control-Allow-Methods'] == r.headers['Allow'], path
    # A route's Allow names exactly the methods the app routes there.
    from app import app
    for path, methods in expected.items():
        route = '/api/v1/cars/{car_id}' if path != '/api/v1/cars' else path
        assert set(app.routes[route]) == set(methods), path
    for route, entries in app.routes.items():
        assert ('GET' in entries) == ('HEAD' in entries), route


def test_head_under_write_protection_stays_open_like_get(api, monkeypatch):
    car_id = create(api)
    monkeypatch.setenv('CARS_AUTH_TOKENS', 'head-token')
    for path in ('/api/v1/cars', '/api/v1/cars/' + car_id, '/api/v1/health'):
        head = api.http.request('HEAD', path)
        assert head.status_code == 200 and head.body == b'', path
        assert head.headers == api.http.get(path).headers, path
    assert api.http.post('/api/v1/cars', headers=JSON,
                         body=json.dumps(COROLLA)).status_code == 401
    # Where reads are protected too, HEAD is refused as GET is: same 401, no body.
    monkeypatch.setenv('CARS_AUTH_PROTECT_READS', 'true')
    path = '/api/v1/cars/' + car_id
    get, head = api.http.get(path), api.http.request('HEAD', path)
    assert get.status_code == head.status_code == 401
    assert head.headers == get.headers and 'WWW-Authenticate' in head.headers
    assert head.body == b''
    ok = api.http.request('HEAD', path, headers={'Authorization': 'Bearer head-token'})
    assert ok.status_code == 200 and ok.body == b'' and ok.headers['ETag']


# --- over HTTP -------------------------------------------------------------------------

# Set per message by the server, not by the app.
PER_MESSAGE = {'date', 'content-length', 'server'}


@pytest.fixture(params=['dev', 'chalice'])
def server(request, store_kind, tmp_path):
    with LocalServer(env=server_env(), kind=request.param,
                     log_path=str(tmp_path / 'server.log')) as s:
        yield s


def comparable(headers):
    return {k.lower(): v for k, v in headers.items() if k.lower() not in PER_MESSAGE}


@pytest.mark.http
def test_head_over_http_answers_as_get_without_a_body(server):
    session = requests.Session()
    r = session.post(server.url + '/api/v1/cars', json=COROLLA)
    assert r.status_code == 201
    car_id = r.json()['id']
    session.post(server.url + '/api/v1/cars', json=dict(COROLLA, model='Yaris'))
    tag = r.headers['ETag']
    for path, headers in requests_of(car_id, tag):
        if path == '/api/v1/cars/12ab' and server.kind == 'chalice':
            continue  # stock `chalice local` answers an unknown path its own way
        get = session.get(server.url + path, headers=headers)
        head = session.head(server.url + path, headers=headers)
        assert head.status_code == get.status_code, path
        assert comparable(head.headers) == comparable(get.headers), path
        assert head.content == b'', path
    # The connection stays usable after each HEAD (no body was expected or sent).
    assert session.get(server.url + '/api/v1/cars/' + car_id).json()['id'] == car_id
    head = session.head(server.url + '/api/v1/cars/' + car_id)
    assert head.headers['ETag'] == tag


@pytest.mark.http
def test_make_run_sends_no_content_length_of_zero_on_head(store_kind, tmp_path):
    # RFC 9110 8.6: a HEAD's Content-Length, if any, must be GET's length.
    with LocalServer(env=server_env(), kind='dev', log_path=str(tmp_path / 'server.log')) as s:
        for path in ('/', '/api/v1/health', '/api/v1/cars'):
            head = requests.head(s.url + path)
            assert head.status_code == 200 and head.content == b''
            assert 'Content-Length' not in head.headers, path
