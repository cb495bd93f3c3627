"""A corpus of bad input: every item gets a 4xx problem body and the store is unchanged.

Run through the Chalice test client on both stores, and a subset over real
HTTP (chalice local). The store is compared whole, versions and revisions
included, so even a write that "changed nothing visible" is caught.
"""
import base64
import hashlib
import hmac
import json

import pytest
import requests

from chalicelib.domain import cars
from chalicelib.http import cursors
from servers import LocalServer
from stores import server_env

EXISTING = '2345'
CAR = {'make': 'Honda', 'model': 'Civic', 'year': 2004}
JSON = 'application/json'
FORM = 'application/x-www-form-urlencoded'
CARS = '/api/v1/cars'
ONE = '/api/v1/cars/' + EXISTING
TOKENS = 'corpus-token'


def j(value):
    return json.dumps(value).encode()


def nested(depth):
    return ('{"make":' * depth + '1' + '}' * depth).encode()


def checked_cursor(payload):
    """A cursor around any payload, with the check value the API computes.

    The key is public, so anyone can make one: the API must still answer
    with a 400 for any payload that is not one it would issue.
    """
    check = hmac.new(cursors._CURSOR_KEY, payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(payload + check).decode().rstrip('=')


# (name, method, path, headers, body)
CORPUS = [
    # malformed JSON
    ('truncated json', 'POST', CARS, {}, b'{"make": "Ford"'),
    ('trailing comma', 'POST', CARS, {}, b'{"make": "Ford", "model": "T", "year": 1920,}'),
    ('single quotes', 'POST', CARS, {}, b"{'make': 'Ford'}"),
    ('NaN', 'POST', CARS, {}, b'{"make": "Ford", "model": "T", "year": NaN}'),
    ('empty body', 'POST', CARS, {}, b''),
    ('whitespace body', 'POST', CARS, {}, b'   \n'),
    ('bare null', 'POST', CARS, {}, b'null'),
    ('json array', 'POST', CARS, {}, j([CAR])),
    ('json string', 'POST', CARS, {}, j('make=Ford')),
    ('patch with array', 'PATCH', ONE, {}, j([])),
    # wrong types and rule breaks
    ('make number', 'POST', CARS, {}, j(dict(CAR, make=5))),
    ('make null', 'POST', CARS, {}, j(dict(CAR, make=None))),
    ('year float', 'POST', CARS, {}, j(dict(CAR, year=2004.5))),
    ('year bool', 'POST', CARS, {}, j(dict(CAR, year=True))),
    ('year words', 'POST', CARS, {}, j(dict(CAR, year='two thousand'))),
    ('year huge', 'POST', CARS, {}, j(dict(CAR, year=10 ** 30))),
    ('year ancient', 'POST', CARS, {}, j(dict(CAR, year=1066))),
    ('color list', 'POST', CARS, {}, j(dict(CAR, color=['red']))),
    ('trans object', 'POST', CARS, {}, j(dict(CAR, trans={'a': 1}))),
    ('missing fields', 'POST', CARS, {}, j({'make': 'Ford'})),
    ('unknown field', 'POST', CARS, {}, j(dict(CAR, price=1))),
    ('blank make', 'POST', CARS, {}, j(dict(CAR, make='   '))),
    ('id with zero', 'POST', CARS, {}, j(dict(CAR, id='1203'))),
    ('id number', 'POST', CARS, {}, j(dict(CAR, id=1234))),
    ('existing id', 'POST', CARS, {}, j(dict(CAR, id=EXISTING))),
    ('patch clears make', 'PATCH', ONE, {}, j({'make': None})),
    ('put id mismatch', 'PUT', ONE, {}, j(dict(CAR, id='1111'))),
    # NUL and control characters
    ('nul in make', 'POST', CARS, {}, j(dict(CAR, make='Fo\x00rd'))),
    ('raw nul bytes', 'POST', CARS, {}, b'\x00\x00\x00\x00'),
    ('escape in color', 'PATCH', ONE, {}, j({'color': 'red\x1b[31m'})),
    ('lone surrogate', 'POST', CARS, {}, b'{"make": "\\ud800", "model": "x", "year": 2000}'),
    # invisible and bidirectional-control characters, text too long once in NFC
    ('zero width make', 'POST', CARS, {}, j(dict(CAR, make='\u200b'))),
    ('bom make', 'POST', CARS, {}, j(dict(CAR, make='\ufeff'))),
    ('rtl override model', 'PATCH', ONE, {}, j({'model': 'a\u202egnp.exe'})),
    ('make long in nfc', 'POST', CARS, {}, j(dict(CAR, make='\ufb2c' * 64))),
    ('year with newline', 'POST', CARS, {}, j(dict(CAR, year='2015\n'))),
    # duplicate JSON keys
    ('duplicate make', 'POST', CARS, {}, b'{"make": "a", "model": "m", "year": 2000, "make": "b"}'),
    ('duplicate id', 'POST', CARS, {}, b'{"id": "1111", "make": "a", "model": "m", "year": 2000, '
     b'"id": "2222"}'),
    # long strings and deep nesting
    ('10k make', 'POST', CARS, {}, j(dict(CAR, make='x' * 10000))),
    ('10k color', 'PATCH', ONE, {}, j({'color': 'y' * 10000})),
    ('10k field name', 'POST', CARS, {}, j(dict(CAR, **{'k' * 10000: 1}))),
    ('deep objects', 'POST', CARS, {}, nested(5000)),
    ('deep arrays', 'POST', CARS, {}, b'[' * 20000 + b']' * 20000),
    ('deep value', 'PATCH', ONE, {}, b'{"color":' + b'[' * 3000 + b']' * 3000 + b'}'),
    # SQL text where it cannot be valid
    ('sql in year', 'POST', CARS, {}, j(dict(CAR, year="2004; DROP TABLE cars; --"))),
    ('sql as field name', 'POST', CARS, {}, j(dict(CAR, **{'make) VALUES (1); --': 'x'}))),
    ('sql in id', 'GET', "/api/v1/cars/1'%20OR%20'1'='1", {}, None),
    ('sql in limit', 'GET', CARS + '?limit=1%20OR%201=1', {}, None),
    ('sql in cursor', 'GET', CARS + "?cursor='%20OR%201=1--", {}, None),
    # invalid UTF-8 and charsets
    ('invalid utf-8', 'POST', CARS, {}, b'{"make": "\xff\xfe", "model": "x", "year": 2000}'),
    ('invalid utf-8 form', 'POST', CARS, {'Content-Type': FORM}, b'make=\xff&model=x&year=2000'),
    ('latin-1 charset', 'POST', CARS, {'Content-Type': JSON + '; charset=latin-1'}, j(CAR)),
    # huge bodies
    ('65 KiB body', 'POST', CARS, {}, j(dict(CAR, color='z' * 66000))),
    ('1 MiB body', 'PATCH', ONE, {}, b'{"color": "' + b'a' * (1 << 20) + b'"}'),
    # wrong content types
    ('text/plain', 'POST', CARS, {'Content-Type': 'text/plain'}, j(CAR)),
    ('xml', 'POST', CARS, {'Content-Type': 'application/xml'}, b'<car make="Ford"/>'),
    ('multipart', 'PUT', ONE, {'Content-Type': 'multipart/form-data; boundary=x'},
     b'--x\r\nContent-Disposition: form-data; name="make"\r\n\r\nFord\r\n--x--'),
    ('octet-stream', 'PATCH', ONE, {'Content-Type': 'application/octet-stream'}, b'\x89PNG'),
    # bad forms
    ('form repeated field', 'POST', CARS, {'Content-Type': FORM}, b'make=A&make=B&model=x&year=2000'),
    ('form garbage', 'POST', CARS, {'Content-Type': FORM}, b'&&&=&'),
    ('form year words', 'POST', CARS, {'Content-Type': FORM}, b'make=A&model=B&year=soon'),
    # bad query parameters and cursors
    ('cursor garbage', 'GET', CARS + '?cursor=not-a-cursor', {}, None),
    ('cursor empty', 'GET', CARS + '?cursor=', {}, None),
    ('cursor base64 junk', 'GET', CARS + '?cursor=' + base64.urlsafe_b64encode(
        b'["9999","0000000000000000"]' + b'x' * 12).decode().rstrip('='), {}, None),
    ('limit zero', 'GET', CARS + '?limit=0', {}, None),
    ('limit too big', 'GET', CARS + '?limit=1001', {}, None),
    ('limit negative', 'GET', CARS + '?limit=-1', {}, None),
    ('year filter words', 'GET', CARS + '?year=abc', {}, None),
    ('unknown filter', 'GET', CARS + '?price=3', {}, None),
    ('repeated filter', 'GET', CARS + '?make=a&make=b', {}, None),
    ('cursor nested deeply', 'GET', CARS + '?cursor=' + checked_cursor(
        b'[' * 20000 + b']' * 20000), {}, None),
    ('cursor checked object', 'GET', CARS + '?cursor=' + checked_cursor(b'{"a":1,"b":2}'), {},
     None),
    ('cursor checked null', 'GET', CARS + '?cursor=' + checked_cursor(b'null'), {}, None),
    ('cursor checked bad id', 'GET', CARS + '?cursor=' + checked_cursor(
        b'[["2345"],"' + b'0' * 16 + b'"]'), {}, None),
    # bad ids, every method
    ('letters id get', 'GET', '/api/v1/cars/71ag', {}, None),
    ('five digit id patch', 'PATCH', '/api/v1/cars/12345', {}, j({'color': 'red'})),
    ('three digit id put', 'PUT', '/api/v1/cars/123', {}, j(CAR)),
    ('arabic digits delete', 'DELETE', '/api/v1/cars/%D9%A1%D9%A2%D9%A3%D9%A4', {}, None),
    ('fullwidth digits post', 'POST', '/api/v1/cars/%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94', {},
     j({'color': 'red'})),
    ('nul id', 'GET', '/api/v1/cars/%00%00%00%00', {}, None),
    ('missing car delete', 'DELETE', '/api/v1/cars/9876', {}, None),
    ('missing car patch', 'PATCH', '/api/v1/cars/9876', {}, j({'color': 'red'})),
    # bad preconditions
    ('if-match garbage', 'PATCH', ONE, {'If-Match': 'garbage'}, j({'color': 'red'})),
    ('if-match weak', 'DELETE', ONE, {'If-Match': 'W/"1-abc"'}, None),
    ('if-match empty tag', 'PUT', ONE, {'If-Match': '""'}, j(CAR)),
    ('if-match unicode', 'PATCH', ONE, {'If-Match': '"1-\u00e9\u00e9"'}, j({'color': 'red'})),
    ('if-none-match tag on put', 'PUT', ONE, {'If-None-Match': '"1-abc"'}, j(CAR)),
    ('if-none-match star on existing', 'PUT', ONE, {'If-None-Match': '*'}, j(CAR)),
    ('if-none-match star patch', 'PATCH', ONE, {'If-None-Match': '*'}, j({'color': 'red'})),
    ('if-none-match star post', 'POST', ONE, {'If-None-Match': '*'}, j({'color': 'red'})),
    ('if-none-match star delete', 'DELETE', ONE, {'If-None-Match': '*'}, None),
    ('if-none-match star in a list', 'PATCH', ONE, {'If-None-Match': '"1-x", *'},
     j({'color': 'red'})),
    ('if-none-match tag on delete', 'DELETE', ONE, {'If-None-Match': '"1-abc"'}, None),
    ('if-match 60 tags', 'PATCH', ONE, {'If-Match': ', '.join('"1-%x"' % i for i in range(60))},
     j({'color': 'red'})),
    ('if-none-match star on missing', 'DELETE', '/api/v1/cars/9876', {'If-None-Match': '*'},
     None),
    # bad idempotency keys
    ('empty idempotency key', 'POST', CARS, {'Idempotency-Key': ''}, j(CAR)),
    ('long idempotency key', 'POST', CARS, {'Idempotency-Key': 'k' * 256}, j(CAR)),
    ('unicode idempotency key', 'POST', CARS, {'Idempotency-Key': 'cl\u00e9'}, j(CAR)),
    ('control idempotency key', 'POST', CARS, {'Idempotency-Key': 'a\x01b'}, j(CAR)),
]

# With CARS_AUTH_TOKENS set.
AUTH_CORPUS = [
    ('no token', 'POST', CARS, {}, j(CAR)),
    ('wrong token', 'POST', CARS, {'Authorization': 'Bearer guess'}, j(CAR)),
    ('basic auth', 'PATCH', ONE, {'Authorization': 'Basic Y29ycHVzOnRva2Vu'}, j({'color': 'x'})),
    ('empty bearer', 'DELETE', ONE, {'Authorization': 'Bearer '}, None),
    ('token prefix', 'PUT', ONE, {'Authorization': 'Bearer corpus'}, j(CAR)),
    ('token with nul', 'POST', CARS, {'Authorization': 'Bearer corpus-token\x00'}, j(CAR)),
    # more than one credential: 400, even when one of them is valid
    ('two bearer tokens', 'POST', CARS, {'Authorization': 'Bearer corpus-token, Bearer guess'},
     j(CAR)),
    ('comma in token', 'PATCH', ONE, {'Authorization': 'Bearer corpus-token,corpus-token'},
     j({'color': 'x'})),
    ('two lines joined', 'DELETE', ONE, {'Authorization': 'Bearer guess, Bearer corpus-token'},
     None),
]

HTTP_SUBSET = ('truncated json', 'invalid utf-8', 'raw nul bytes', '1 MiB body', 'text/plain',
               'deep arrays', 'letters id get', 'nul id', 'cursor garbage', 'if-match garbage',
               'long idempotency key', 'form garbage', '10k make', 'sql in id',
               'if-none-match star delete', 'cursor checked null')


def snapshot(store):
    records, _ = store.list(cars.Filters(), None, 1000)
    return records


@pytest.fixture
def seeded(store):
    store.create(dict(CAR, trans=None, color='silver'), EXISTING)
    return store


def assert_problem(status, content_type, raw, name):
    assert 400 <= status < 500, '%s: %s %r' % (name, status, raw[:200])
    assert content_type.startswith('application/problem+json'), name
    problem = json.loads(raw)
    assert problem['status'] == status
    assert {'type', 'title', 'status', 'detail'} <= set(problem), name
    assert b'Traceback' not in raw


def through_client(api, method, path, headers, body):
    h = {'Content-Type': JSON}
    h.update(headers)
    return api.http.request(method, path, headers=h, body=body or b'')


@pytest.mark.parametrize('name, method, path, headers, body', CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_is_a_4xx_problem_and_changes_nothing(api, seeded, name, method, path,
                                                        headers, body):
    before = snapshot(seeded)
    r = through_client(api, method, path, headers, body)
    assert_problem(r.status_code, r.headers.get('Content-Type', ''), r.body, name)
    assert snapshot(seeded) == before


@pytest.mark.parametrize('name, method, path, headers, body', AUTH_CORPUS,
                         ids=[c[0] for c in AUTH_CORPUS])
def test_bad_tokens_are_a_4xx_problem_and_change_nothing(api, seeded, monkeypatch, name, method,
                                                         path, headers, body):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKENS)
    before = snapshot(seeded)
    r = through_client(api, method, path, headers, body)
    assert r.status_code in (400, 401, 403)
    assert b'corpus-token' not in r.body
    assert_problem(r.status_code, r.headers.get('Content-Type', ''), r.body, name)
    assert snapshot(seeded) == before


def test_sql_text_in_a_valid_field_is_stored_verbatim(api, store):
    text = "'); DROP TABLE cars; --"
    r = through_client(api, 'POST', CARS, {}, j(dict(CAR, make=text)))
    assert r.status_code == 201
    assert json.loads(api.http.get(r.headers['Location']).body)['make'] == text
    listed = api.http.get(CARS + '?make=' + requests.utils.quote(text))
    assert len(json.loads(listed.body)['cars']) == 1


@pytest.mark.http
@pytest.mark.slow
def test_bad_input_over_real_http(store_kind, seeded):
    subset = [c for c in CORPUS if c[0] in HTTP_SUBSET] + AUTH_CORPUS[:2]
    assert len(subset) == len(HTTP_SUBSET) + 2
    before = snapshot(seeded)
    env = dict(server_env(), CARS_AUTH_TOKENS=TOKENS)
    with LocalServer(env=env) as server, requests.Session() as s:
        for name, method, path, headers, body in subset:
            h = {'Content-Type': JSON, 'Authorization': 'Bearer ' + TOKENS}
            h.update(headers)
            if name in ('no token',):
                del h['Authorization']
            r = s.request(method, server.url + path, headers=h, data=body, timeout=30)
            assert_problem(r.status_code, r.headers.get('Content-Type', ''), r.content, name)
    assert snapshot(seeded) == before


def test_a_hand_made_cursor_only_chooses_where_the_listing_starts(api, seeded):
    # What the public key allows: a cursor made by hand for the same filters
    # lists from where it says, as the `next` of a real page would.
    for car_id in ('1111', '3456', '5678'):
        seeded.create(dict(CAR, trans=None, color=None), car_id)
    digest = cursors._filters_digest(cars.Filters())
    cursor = checked_cursor(json.dumps(['2345', digest], separators=(',', ':')).encode())
    r = api.http.get(CARS + '?cursor=' + cursor)
    assert r.status_code == 200
    assert [c['id'] for c in json.loads(r.body)['cars']] == ['3456', '5678']
    # With other filters it is refused like any other mismatched cursor.
    assert api.http.get(CARS + '?make=honda&cursor=' + cursor).status_code == 400
