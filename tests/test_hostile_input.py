"""Input found by a hostile tester, through the Lambda entry point on both stores.

Each test is one defect the tester found: text limits checked before NFC
normalization, invisible and bidirectional-control characters, `$` matching
before a final newline, duplicate JSON keys, a cursor that carried over to
other filters, and If-Match lists the two stores treated differently.
"""
import json
import sys
import unicodedata
import urllib.parse

import pytest

from chalicelib.domain import cars

CARS = '/api/v1/cars'
JSON = {'Content-Type': 'application/json'}
FORM = {'Content-Type': 'application/x-www-form-urlencoded'}
CAR = {'make': 'Honda', 'model': 'Civic', 'year': 2004}
# U+FB2C is one character, and three in NFC (it is excluded from composition).
EXPANDS = '\ufb2c'
assert len(unicodedata.normalize('NFC', EXPANDS)) == 3


def body(response):
    return json.loads(response.body) if response.body else None


def post(api, data, headers=JSON):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return api.http.post(CARS, headers=headers, body=raw)


def assert_problem(response, status, field=None):
    assert response.status_code == status, response.body
    assert response.headers['Content-Type'].startswith('application/problem+json')
    problem = body(response)
    assert problem['status'] == status
    if field is not None:
        assert field in [e['field'] for e in problem.get('errors') or []], problem
    return problem


def all_cars(store):
    return store.list(cars.Filters(), None, 1000)[0]


# --- 4. lengths count the NFC form ------------------------------------------------

@pytest.mark.parametrize('field, limit', [('make', 64), ('model', 64), ('trans', 32),
                                          ('color', 32)])
def test_text_longer_than_its_limit_once_normalized_is_refused(api, store, field, limit):
    # `limit` characters as sent, three times as many as stored.
    r = post(api, dict(CAR, **{field: EXPANDS * limit}))
    assert_problem(r, 422, field)
    assert all_cars(store) == []


@pytest.mark.parametrize('field, limit', [('make', 64), ('color', 32)])
def test_text_within_its_limit_once_normalized_is_stored_normalized(api, store, field, limit):
    text = EXPANDS * (limit // 3)
    r = post(api, dict(CAR, **{field: ' %s ' % text}))
    assert r.status_code == 201, r.body
    stored = body(r)[field]
    assert stored == unicodedata.normalize('NFC', text)
    assert len(stored) <= limit


def test_a_patch_is_held_to_the_normalized_limit_too(api, store):
    car = body(post(api, CAR))
    r = api.http.patch('%s/%s' % (CARS, car['id']), headers=JSON,
                       body=json.dumps({'model': EXPANDS * 30}))
    assert_problem(r, 422, 'model')
    assert body(api.http.get('%s/%s' % (CARS, car['id']))) == car


def test_a_filter_longer_than_64_characters_once_normalized_is_refused(api):
    r = api.http.get(CARS + '?make=' + urllib.parse.quote(EXPANDS * 64))
    assert_problem(r, 400, 'make')


# --- 9. invisible and bidirectional-control characters ----------------------------

FORMAT_CHARACTERS = {
    'zero width space': '\u200b',
    'byte order mark': '\ufeff',
    'right-to-left override': 'a\u202egnp.exe',
    'soft hyphen': 'Mu\u00adller',
    'word joiner at the end': 'Ford\u2060',
    'tag character': 'Ford\U000e0041',
    'bell': 'Fo\x07rd',
    'next line': 'Fo\x85rd',
}


@pytest.mark.parametrize('text', FORMAT_CHARACTERS.values(), ids=FORMAT_CHARACTERS.keys())
def test_format_and_control_characters_are_refused_in_car_fields(api, store, text):
    r = post(api, dict(CAR, make=text))
    assert_problem(r, 422, 'make')
    r = post(api, dict(CAR, trans=text, color=text))
    problem = assert_problem(r, 422)
    assert {'trans', 'color'} <= {e['field'] for e in problem['errors']}
    assert all_cars(store) == []


def test_format_characters_are_refused_in_form_posts_and_updates(api, store):
    r = post(api, b'make=%E2%80%8B&model=x&year=2000', headers=FORM)
    assert_problem(r, 422, 'make')
    car = body(post(api, CAR))
    r = api.http.patch('%s/%s' % (CARS, car['id']), headers=JSON,
                       body=json.dumps({'model': 'Civic\u200d'}))
    assert_problem(r, 422, 'model')
    assert all_cars(store)[0]['model'] == 'Civic'


def test_format_characters_are_refused_in_filters(api):
    r = api.http.get(CARS + '?model=' + urllib.parse.quote('\u200b'))
    assert_problem(r, 400, 'model')


def test_the_published_schemas_refuse_every_format_and_control_character(api):
    # The document says what the server accepts: a generated client or a
    # fuzzer reading it must not take these for valid text.
    from jsonschema import Draft202012Validator
    doc = body(api.http.get('/api/v1/openapi.json'))
    schemas = [doc['components']['schemas']['CarNew']['properties']['make']]
    schemas += [p['schema'] for p in doc['paths'][CARS]['get']['parameters']
                if p['name'] == 'make']
    refused = [chr(c) for c in range(sys.maxunicode + 1)
               if unicodedata.category(chr(c)) in ('Cc', 'Cf')]
    for schema in schemas:
        checker = Draft202012Validator(schema)
        assert checker.is_valid('Ford')
        assert [c for c in refused if checker.is_valid('Fo%srd' % c)] == [], schema


# --- 10. `$` before a final newline -----------------------------------------------

@pytest.mark.parametrize('field, value', [('year', '2015\n'), ('year', ' 2015'),
                                          ('id', '1234\n')])
def test_a_digit_string_with_anything_around_it_is_refused(api, store, field, value):
    r = post(api, dict(CAR, **{field: value}))
    assert_problem(r, 422, field)
    assert all_cars(store) == []


def test_a_form_year_with_a_final_newline_is_refused(api, store):
    r = post(api, b'make=A&model=B&year=2015%0A', headers=FORM)
    assert_problem(r, 422, 'year')
    assert all_cars(store) == []


def test_a_filter_with_a_final_newline_is_refused(api):
    r = api.http.get(CARS + '?make=honda%0A')
    assert_problem(r, 400, 'make')


# --- 6. duplicate JSON keys ------------------------------------------------------

def test_a_json_key_given_twice_is_refused_naming_it(api, store):
    r = post(api, b'{"make": "a", "model": "m", "year": 2000, "make": "b"}')
    problem = assert_problem(r, 400, 'make')
    assert problem['errors'] == [{'field': 'make', 'message': 'given more than once'}]
    assert problem['type'].endswith('malformed-body')
    assert all_cars(store) == []


def test_two_ids_in_one_body_create_nothing(api, store):
    r = post(api, b'{"id": "1111", "make": "a", "model": "m", "year": 2000, "id": "2222"}')
    assert_problem(r, 400, 'id')
    assert all_cars(store) == []


def test_duplicate_keys_are_refused_at_every_level(api, store):
    car = body(post(api, CAR))
    before = all_cars(store)
    for raw in (b'{"color": {"a": 1, "a": 2}}', b'{"color": [{"x": {"k": 1, "k": 1}}]}'):
        r = api.http.patch('%s/%s' % (CARS, car['id']), headers=JSON, body=raw)
        assert_problem(r, 400)
    r = api.http.put('%s/%s' % (CARS, car['id']), headers=JSON,
                     body=b'{"make": "a", "model": "m", "year": 2000, "year": 2001}')
    assert_problem(r, 400, 'year')
    assert all_cars(store) == before


# --- 7. a cursor belongs to its filters ----------------------------------------------

def test_a_cursor_is_refused_with_filters_that_print_like_its_own(api, store):
    for car_id in ('1111', '2222'):
        store.create(dict(CAR, make='x&model=y', trans=None, color=None), car_id)
    r = api.http.get(CARS + '?make=x%26model%3Dy&limit=1')
    assert r.status_code == 200, r.body
    page = body(r)
    assert [c['id'] for c in page['cars']] == ['1111'] and page['next']
    # Its own filters continue the walk ...
    r = api.http.get(CARS + '?make=x%26model%3Dy&limit=1&cursor=' + page['next'])
    assert [c['id'] for c in body(r)['cars']] == ['2222']
    # ... two filters that would print the same as that one make do not.
    r = api.http.get(CARS + '?make=x&model=y&limit=1&cursor=' + page['next'])
    assert_problem(r, 400, 'cursor')


# --- 11. If-Match lists are bounded ------------------------------------------------

def stale_tags(n):
    return ['"1-%016x"' % i for i in range(n)]


@pytest.mark.parametrize('method', ['PATCH', 'POST', 'PUT', 'DELETE'])
def test_more_than_50_tags_in_if_match_is_refused_before_any_write(api, store, method):
    car = body(post(api, CAR))
    path = '%s/%s' % (CARS, car['id'])
    current = api.http.get(path).headers['ETag']
    before = all_cars(store)
    # 60 tags, the current one last: once sqlite wrote and DynamoDB said 412.
    r = api.http.request(method, path, headers=dict(JSON, **{
        'If-Match': ', '.join(stale_tags(59) + [current])}), body=json.dumps(CAR))
    problem = assert_problem(r, 400, 'If-Match')
    assert '50' in problem['detail']
    assert all_cars(store) == before


def test_50_tags_in_if_match_are_compared_on_both_stores(api, store):
    car = body(post(api, CAR))
    path = '%s/%s' % (CARS, car['id'])
    current = api.http.get(path).headers['ETag']
    r = api.http.patch(path, headers=dict(JSON, **{
        'If-Match': ', '.join(stale_tags(49) + [current])}), body=json.dumps({'color': 'red'}))
    assert r.status_code == 200, r.body
    assert body(r)['color'] == 'red'


def test_more_than_50_tags_in_if_none_match_is_refused(api, store):
    car = body(post(api, CAR))
    path = '%s/%s' % (CARS, car['id'])
    current = api.http.get(path).headers['ETag']
    r = api.http.get(path, headers={'If-None-Match': ', '.join(stale_tags(50) + [current])})
    assert_problem(r, 400, 'If-None-Match')
    r = api.http.get(path, headers={'If-None-Match': ', '.join(stale_tags(49) + [current])})
    assert r.status_code == 304
