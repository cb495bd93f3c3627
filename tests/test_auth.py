"""Write protection (CARS_AUTH_TOKENS, SSM) and CORS, through the app and over real HTTP."""
import importlib
import json
import logging

import pytest
import requests

from chalicelib.domain import cars
from chalicelib.http import auth
from gateway_events import invoke, rest_event
from servers import LocalServer
from stores import server_env

JSON = {'Content-Type': 'application/json'}
CAR = {'make': 'Saab', 'model': '900', 'year': 1990}
TOKENS = 'alpha-token,beta-token'


def send(api, method, path, token=None, authorization=None, body=None):
    headers = dict(JSON)
    if token is not None:
        headers['Authorization'] = 'Bearer ' + token
    if authorization is not None:
        headers['Authorization'] = authorization
    return api.http.request(method, path, headers=headers,
                            body=json.dumps(body) if body is not None else b'')


def problem(response, status):
    assert response.status_code == status, response.body
    assert response.headers['Content-Type'].startswith('application/problem+json')
    out = json.loads(response.body)
    assert out['status'] == status
    return out


@pytest.fixture(autouse=True)
def clean_auth_env(monkeypatch):
    for name in ('CARS_AUTH_TOKENS', 'CARS_AUTH_SSM_PARAMETER', 'CARS_AUTH_PROTECT_READS',
                 'CARS_AUTH_DISABLED', 'AWS_LAMBDA_FUNCTION_NAME', 'CARS_CORS_ORIGINS'):
        monkeypatch.delenv(name, raising=False)
    auth.clear_cache()
    yield
    auth.clear_cache()


@pytest.fixture
def car_id(api):
    r = send(api, 'POST', '/api/v1/cars', body=CAR)
    return json.loads(r.body)['id']


def test_writes_are_open_when_no_tokens_are_configured(api):
    assert send(api, 'POST', '/api/v1/cars', body=CAR).status_code == 201


def test_a_write_without_a_token_is_401_with_a_problem_body(api, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    r = send(api, 'POST', '/api/v1/cars', body=CAR)
    problem(r, 401)
    assert r.headers['WWW-Authenticate'].startswith('Bearer')


@pytest.mark.parametrize('authorization', ['Basic YWxwaGE6dG9rZW4=', 'Bearer', 'Bearer   ',
                                           'alpha-token'])
def test_an_authorization_header_without_bearer_credentials_is_401(api, monkeypatch,
                                                                   authorization):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    problem(send(api, 'POST', '/api/v1/cars', authorization=authorization, body=CAR), 401)


@pytest.mark.parametrize('token', ['wrong', 'alpha-toke', 'ALPHA-TOKEN', '\u00e9',
                                   'alpha-token beta-token'])
def test_a_wrong_token_is_403_and_changes_nothing(api, store, monkeypatch, token):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    problem(send(api, 'POST', '/api/v1/cars', token=token, body=CAR), 403)
    assert store.count() == 0


# Two credentials: the header sent twice (as the dev server and chalice local
# join repeated lines), or two tokens in one line. A bearer token has no commas.
@pytest.mark.parametrize('authorization', ['Bearer alpha-token, Bearer beta-token',
                                           'Bearer alpha-token,beta-token',
                                           'Bearer wrong, Bearer alpha-token',
                                           'Bearer alpha-token,'])
@pytest.mark.parametrize('method, path', [('POST', '/api/v1/cars'),
                                          ('DELETE', '/api/v1/cars/{id}')])
def test_more_than_one_credential_is_400_changes_nothing_and_echoes_no_token(
        api, store, car_id, monkeypatch, authorization, method, path):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    before = store.list(cars.Filters(), None, 100)
    r = send(api, method, path.format(id=car_id), authorization=authorization, body=CAR)
    out = problem(r, 400)
    assert out['type'].endswith('#problem-invalid-authorization')
    assert 'WWW-Authenticate' not in r.headers
    assert b'alpha' not in r.body and b'beta' not in r.body and b'wrong' not in r.body
    assert store.list(cars.Filters(), None, 100) == before


@pytest.mark.parametrize('lines', [['Bearer alpha-token', 'Bearer beta-token'],
                                   ['Bearer wrong', 'Bearer alpha-token'],
                                   ['Bearer alpha-token', 'Bearer alpha-token']])
def test_authorization_sent_on_two_lines_in_a_lambda_event_is_400(store, car_id, monkeypatch,
                                                                  lines):
    # API Gateway keeps only the last line in `headers`: a valid token there
    # must not hide the other line, which only `multiValueHeaders` shows.
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    before = store.get(car_id)
    status, headers, out, text = invoke(rest_event(
        'PATCH', '/api/v1/cars/{car_id}', car_id=car_id, body={'color': 'red'},
        headers=[('Content-Type', 'application/json')]
        + [('Authorization', line) for line in lines]))
    assert status == 400 and out['type'].endswith('#problem-invalid-authorization')
    assert headers['Content-Type'].startswith('application/problem+json')
    assert not any(secret in text for secret in ('alpha', 'beta', 'wrong'))
    assert store.get(car_id) == before


def test_one_authorization_line_in_a_lambda_event_is_checked_as_before(store, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    base = [('Content-Type', 'application/json')]
    status, _, _, _ = invoke(rest_event('POST', '/api/v1/cars', body=CAR, headers=base + [
        ('Authorization', 'Bearer beta-token')]))
    assert status == 201
    status, _, _, _ = invoke(rest_event('POST', '/api/v1/cars', body=CAR, headers=base + [
        ('authorization', 'Bearer nope')]))
    assert status == 403
    assert store.count() == 1


def test_behind_the_authorizer_a_repeated_authorization_header_is_still_400(store, car_id,
                                                                            monkeypatch):
    # The gateway ran the authorizer on one string of its choosing and said
    # yes; the function still sees every line and refuses the request.
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    before = store.get(car_id)
    status, _, out, _ = invoke(rest_event(
        'DELETE', '/api/v1/cars/{car_id}', car_id=car_id,
        authorizer={'principalId': auth.PRINCIPAL},
        headers=[('Authorization', 'Bearer wrong'), ('Authorization', 'Bearer alpha-token')]))
    assert status == 400 and out['type'].endswith('#problem-invalid-authorization')
    assert store.get(car_id) == before
    status, _, _, _ = invoke(rest_event(
        'DELETE', '/api/v1/cars/{car_id}', car_id=car_id,
        authorizer={'principalId': auth.PRINCIPAL},
        headers=[('Authorization', 'Bearer alpha-token')]))
    assert status == 204


def test_with_open_writes_the_authorization_header_is_not_read(api, monkeypatch):
    r = send(api, 'POST', '/api/v1/cars', authorization='Bearer a, Bearer b', body=CAR)
    assert r.status_code == 201


def test_every_configured_token_is_accepted(api, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', ' alpha-token , beta-token ')
    assert send(api, 'POST', '/api/v1/cars', token='alpha-token', body=CAR).status_code == 201
    assert send(api, 'POST', '/api/v1/cars', token='beta-token', body=CAR).status_code == 201
    assert send(api, 'POST', '/api/v1/cars', authorization='bearer alpha-token',
                body=CAR).status_code == 201


def test_every_write_route_is_protected_and_reads_stay_open(api, car_id, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    path = '/api/v1/cars/' + car_id
    for method in ('POST', 'PATCH', 'PUT', 'DELETE'):
        problem(send(api, method, path, body=CAR), 401)
        problem(send(api, method, path, token='nope', body=CAR), 403)
    assert send(api, 'GET', path).status_code == 200
    assert send(api, 'GET', '/api/v1/cars').status_code == 200
    assert send(api, 'PATCH', path, token='beta-token', body={'color': 'red'}).status_code == 200
    assert send(api, 'DELETE', path, token='beta-token').status_code == 204


def test_a_stage_may_protect_reads_too(api, car_id, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    monkeypatch.setenv('CARS_AUTH_PROTECT_READS', 'true')
    problem(send(api, 'GET', '/api/v1/cars/' + car_id), 401)
    problem(send(api, 'GET', '/api/v1/cars'), 401)
    assert send(api, 'GET', '/api/v1/cars', token='alpha-token').status_code == 200
    assert send(api, 'GET', '/api/v1/health').status_code == 200


def test_tokens_come_from_ssm_once_per_cache_period(api, monkeypatch):
    fetched = []

    def fetch(name):
        fetched.append(name)
        return ['from-ssm']
    monkeypatch.setattr(auth, '_fetch_ssm', fetch)
    monkeypatch.setenv('CARS_AUTH_SSM_PARAMETER', '/cars/prod/auth-tokens')
    problem(send(api, 'POST', '/api/v1/cars', token='alpha-token', body=CAR), 403)
    for _ in range(3):
        assert send(api, 'POST', '/api/v1/cars', token='from-ssm', body=CAR).status_code == 201
    assert fetched == ['/cars/prod/auth-tokens']
    monkeypatch.setattr(auth, 'SSM_CACHE_SECONDS', 0)
    send(api, 'POST', '/api/v1/cars', token='from-ssm', body=CAR)
    assert len(fetched) == 2


def test_an_unreadable_ssm_parameter_fails_closed_with_503(api, store, monkeypatch, caplog):
    def fetch(name):
        raise RuntimeError('AccessDeniedException with secret-ish detail')
    monkeypatch.setattr(auth, '_fetch_ssm', fetch)
    monkeypatch.setenv('CARS_AUTH_SSM_PARAMETER', '/cars/prod/auth-tokens')
    with caplog.at_level(logging.DEBUG):
        problem(send(api, 'POST', '/api/v1/cars', token='from-ssm', body=CAR), 503)
    assert store.count() == 0
    assert 'from-ssm' not in caplog.text


def test_tokens_never_reach_the_logs(api, monkeypatch, caplog):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    with caplog.at_level(logging.DEBUG):
        send(api, 'POST', '/api/v1/cars', token='guess-token', body=CAR)
        send(api, 'POST', '/api/v1/cars', token='alpha-token', body=CAR)
    assert 'alpha-token' not in caplog.text and 'guess-token' not in caplog.text


def test_an_unconfigured_lambda_refuses_writes_unless_opened_on_purpose(api, monkeypatch):
    monkeypatch.setenv('AWS_LAMBDA_FUNCTION_NAME', 'cars-dev')
    problem(send(api, 'POST', '/api/v1/cars', body=CAR), 503)
    assert send(api, 'GET', '/api/v1/cars').status_code == 200
    monkeypatch.setenv('CARS_AUTH_DISABLED', 'true')
    assert send(api, 'POST', '/api/v1/cars', body=CAR).status_code == 201


def test_the_authorizer_allows_good_tokens_and_denies_the_rest(monkeypatch):
    from chalice.app import AuthRequest
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    arn = 'arn:aws:execute-api:us-east-1:123456789012:abc/api/POST/api/v1/cars'

    def policy(token):
        result = auth.authorize(AuthRequest('TOKEN', token, arn)).to_dict(
            AuthRequest('TOKEN', token, arn))
        return result['principalId'], result['policyDocument']['Statement']
    principal, statements = policy('Bearer alpha-token')
    assert principal == auth.PRINCIPAL and statements[0]['Effect'] == 'Allow'
    assert policy('Bearer wrong')[1][0]['Resource'] == []
    # Deployed, a missing token must be the "Unauthorized" error API Gateway maps to 401.
    monkeypatch.setenv('AWS_LAMBDA_FUNCTION_NAME', 'cars-dev-token_authorizer')
    with pytest.raises(Exception, match='^Unauthorized$'):
        auth.authorize(AuthRequest('TOKEN', 'Basic x', arn))


def test_the_authorizer_turns_away_a_token_string_with_two_credentials(monkeypatch):
    # A TOKEN authorizer cannot answer 400: it allows, denies (403) or raises
    # "Unauthorized" (401). Two credentials in its one string are never allowed.
    from chalice.app import AuthRequest
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    arn = 'arn:aws:execute-api:us-east-1:123456789012:abc/api/POST/api/v1/cars'
    for token in ('Bearer alpha-token, Bearer beta-token', 'Bearer alpha-token,alpha-token'):
        request = AuthRequest('TOKEN', token, arn)
        result = auth.authorize(request).to_dict(request)
        assert result['principalId'] != auth.PRINCIPAL
        assert result['policyDocument']['Statement'][0]['Resource'] == []
    monkeypatch.setenv('AWS_LAMBDA_FUNCTION_NAME', 'cars-dev-token_authorizer')
    with pytest.raises(Exception, match='^Unauthorized$'):
        auth.authorize(AuthRequest('TOKEN', 'Bearer alpha-token, Bearer beta-token', arn))


@pytest.fixture
def ssm_app(monkeypatch):
    """The app as a stage that keeps its tokens in SSM imports it."""
    import app as app_module
    monkeypatch.setenv('CARS_AUTH_SSM_PARAMETER', '/cars/test/auth-tokens')
    fetched = []

    def fetch(name):
        fetched.append(name)
        return ['from-ssm']
    monkeypatch.setattr(auth, '_fetch_ssm', fetch)
    try:
        yield importlib.reload(app_module), fetched
    finally:
        monkeypatch.delenv('CARS_AUTH_SSM_PARAMETER')
        importlib.reload(app_module)


def test_ssm_stages_attach_the_authorizer_to_write_routes_only(ssm_app):
    module, _ = ssm_app
    routes = module.app.routes
    for path, method in (('/api/v1/cars', 'POST'), ('/api/v1/cars/{car_id}', 'PUT'),
                         ('/api/v1/cars/{car_id}', 'PATCH'), ('/api/v1/cars/{car_id}', 'DELETE')):
        assert routes[path][method].authorizer is module.token_authorizer
    assert routes['/api/v1/cars']['GET'].authorizer is None
    assert routes['/api/v1/health']['GET'].authorizer is None


def test_under_chalice_local_the_authorizer_admits_a_good_token_and_refuses_a_bad_one(
        ssm_app, store_kind):
    from chalice.test import Client
    module, fetched = ssm_app
    with Client(module.app) as client:
        r = send(client, 'POST', '/api/v1/cars', token='from-ssm', body=CAR)
        assert r.status_code == 201
        assert send(client, 'POST', '/api/v1/cars', token='bad', body=CAR).status_code == 403
    assert len(fetched) == 1


def test_with_protection_off_the_middleware_never_looks_for_tokens(monkeypatch):
    import types
    calls = []
    monkeypatch.setattr(auth, 'tokens', lambda: calls.append(1))
    assert not auth.enabled()
    for method in ('GET', 'POST', 'DELETE'):
        event = types.SimpleNamespace(method=method, path='/api/v1/cars/1234', context={
            'resourcePath': '/api/v1/cars/{car_id}'}, headers={})
        assert auth.middleware(event, lambda event: 'response') == 'response'
    assert calls == []


# --- CORS -------------------------------------------------------------------------


def test_no_origin_is_allowed_by_default(api):
    r = api.http.request('OPTIONS', '/api/v1/cars', headers={
        'Origin': 'https://shop.example', 'Access-Control-Request-Method': 'POST'})
    assert r.status_code == 204
    assert 'Access-Control-Allow-Origin' not in r.headers
    r = api.http.get('/api/v1/cars', headers={'Origin': 'https://shop.example'})
    assert 'Access-Control-Allow-Origin' not in r.headers


def test_configured_origins_get_preflight_and_response_headers(api, car_id, monkeypatch):
    monkeypatch.setenv('CARS_CORS_ORIGINS', 'https://shop.example, https://admin.example')
    r = api.http.request('OPTIONS', '/api/v1/cars/' + car_id, headers={
        'Origin': 'https://admin.example', 'Access-Control-Request-Method': 'PATCH'})
    assert r.status_code == 204
    assert r.headers['Access-Control-Allow-Origin'] == 'https://admin.example'
    assert 'PATCH' in r.headers['Access-Control-Allow-Methods']
    assert 'If-Match' in r.headers['Access-Control-Allow-Headers']
    got = api.http.get('/api/v1/cars/' + car_id, headers={'Origin': 'https://shop.example'})
    assert got.headers['Access-Control-Allow-Origin'] == 'https://shop.example'
    assert 'ETag' in got.headers['Access-Control-Expose-Headers']
    missing = api.http.get('/api/v1/cars/9999', headers={'Origin': 'https://shop.example'})
    assert missing.headers['Access-Control-Allow-Origin'] == 'https://shop.example'
    other = api.http.get('/api/v1/cars', headers={'Origin': 'https://evil.example'})
    assert 'Access-Control-Allow-Origin' not in other.headers


# --- over real HTTP -------------------------------------------------------------------


@pytest.mark.http
def test_chalice_local_answers_401_and_403_with_problem_bodies(store_kind, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    monkeypatch.setenv('CARS_CORS_ORIGINS', 'https://shop.example')
    env = dict(server_env(), CARS_AUTH_TOKENS=TOKENS, CARS_CORS_ORIGINS='https://shop.example')
    with LocalServer(env=env) as server:
        url = server.url + '/api/v1/cars'
        none = requests.post(url, json=CAR, timeout=30)
        wrong = requests.post(url, json=CAR, headers={'Authorization': 'Bearer x'}, timeout=30)
        right = requests.post(url, json=CAR, headers={'Authorization': 'Bearer beta-token'},
                              timeout=30)
        two = requests.post(url, json=CAR, timeout=30,
                            headers={'Authorization': 'Bearer beta-token, Bearer x'})
        read = requests.get(url, timeout=30)
        pre = requests.options(url, headers={'Origin': 'https://shop.example',
                                             'Access-Control-Request-Method': 'POST'},
                               timeout=30)
    for r, status in ((none, 401), (wrong, 403), (two, 400)):
        assert r.status_code == status
        assert r.headers['Content-Type'].startswith('application/problem+json')
        assert r.json()['status'] == status
    assert right.status_code == 201
    assert read.status_code == 200
    assert pre.status_code == 204
    assert pre.headers['Access-Control-Allow-Origin'] == 'https://shop.example'


@pytest.mark.http
def test_over_http_authorization_on_two_lines_is_400_and_changes_nothing(store_kind, store):
    import http.client
    env = dict(server_env(), CARS_AUTH_TOKENS=TOKENS)
    with LocalServer(env=env) as server:
        conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=30)
        try:
            # A valid token first: a server that kept one line would let this in.
            conn.putrequest('POST', '/api/v1/cars')
            conn.putheader('Content-Type', 'application/json')
            conn.putheader('Authorization', 'Bearer beta-token')
            conn.putheader('Authorization', 'Bearer x')
            body = json.dumps(CAR).encode()
            conn.putheader('Content-Length', str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            status, text = response.status, response.read()
        finally:
            conn.close()
    assert store.count() == 0
    assert status == 400 and b'beta-token' not in text


# --- what a hostile caller tries -------------------------------------------------------


def test_tokens_are_compared_in_constant_time_with_every_accepted_token(monkeypatch):
    # Every accepted token goes through hmac.compare_digest, and the loop does
    # not stop at a match: neither the answer's time nor an early exit tells
    # a caller how close a guess came, or which token it matched.
    import hmac
    real, compared = hmac.compare_digest, []

    def recording(a, b):
        compared.append(b)
        return real(a, b)
    monkeypatch.setattr(hmac, 'compare_digest', recording)
    accepted = ['alpha-token', 'beta-token', 'gamma-token']
    assert auth.is_valid('alpha-token', accepted)
    assert compared == [t.encode() for t in accepted]
    compared.clear()
    assert not auth.is_valid('alpha-toke', accepted)
    assert compared == [t.encode() for t in accepted]


@pytest.mark.parametrize('origin', ['https://evil.example', 'https://shop.example.evil.example',
                                    'https://shop.exampl', 'http://shop.example', 'null'])
def test_a_preflight_from_an_origin_not_configured_is_granted_nothing(api, car_id, monkeypatch,
                                                                     origin):
    monkeypatch.setenv('CARS_CORS_ORIGINS', 'https://shop.example')
    for path in ('/api/v1/cars', '/api/v1/cars/' + car_id):
        r = api.http.request('OPTIONS', path, headers={
            'Origin': origin, 'Access-Control-Request-Method': 'DELETE',
            'Access-Control-Request-Headers': 'Authorization'})
        assert r.status_code == 204
        granted = [name for name in r.headers if name.lower().startswith('access-control-allow')]
        assert granted == [], (path, origin, r.headers)
        assert r.headers['Vary'] == 'Origin'


def test_behind_the_authorizer_the_api_function_never_reads_the_tokens(ssm_app, store,
                                                                         monkeypatch):
    # Only the authorizer's role may read the SSM parameter. A write the
    # gateway has allowed must not be checked again by the API function: with
    # the parameter out of its reach, a second check would fail (503) or, with
    # the token rotated since the verdict, refuse a request the gateway let in.
    _, fetched = ssm_app

    def out_of_reach(name):
        fetched.append(name)
        raise RuntimeError('AccessDenied: the API function has no ssm:GetParameter')
    monkeypatch.setattr(auth, '_fetch_ssm', out_of_reach)
    auth.clear_cache()
    status, _, out, _ = invoke(rest_event(
        'POST', '/api/v1/cars', body=CAR, authorizer={'principalId': auth.PRINCIPAL},
        headers=[('Content-Type', 'application/json'), ('Authorization', 'Bearer rotated')]))
    assert status == 201, out
    assert fetched == []
    assert store.count() == 1
