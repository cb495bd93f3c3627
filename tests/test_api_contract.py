"""The API contract (docs/api.md), through the Lambda entry point, on both stores."""
import json
import re
import urllib.parse

import pytest

from chalicelib.domain import cars

JSON = {'Content-Type': 'application/json'}
FORM = {'Content-Type': 'application/x-www-form-urlencoded'}
COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}


def body(response):
    return json.loads(response.body) if response.body else None


def header(response, name):
    for k, v in response.headers.items():
        if k.lower() == name.lower():
            return v
    return None


def assert_problem(response, status):
    assert response.status_code == status, response.body
    assert header(response, 'Content-Type').startswith('application/problem+json')
    problem = body(response)
    assert problem['status'] == status
    assert {'type', 'title', 'status', 'detail'} <= set(problem)
    assert 'Traceback' not in response.body.decode()
    return problem


def create(api, car=COROLLA, headers=JSON):
    r = api.http.post('/api/v1/cars', headers=headers, body=json.dumps(car))
    assert r.status_code == 201, r.body
    return body(r)


def list_all(api, query=''):
    r = api.http.get('/api/v1/cars' + query)
    assert r.status_code == 200, r.body
    return body(r)


# --- the seed's routes ---------------------------------------------------------

def test_root_says_hello_world_as_plain_text(api):
    r = api.http.get('/')
    assert r.status_code == 200
    assert r.body == b'Hello, world'
    assert header(r, 'Content-Type').startswith('text/plain')


@pytest.mark.parametrize('path', ['/api/v1/cars', '/api/v1/cars/', '/api/v1/health',
                                  '/api/v1/health/'])
def test_trailing_slash_makes_no_difference(api, path):
    assert api.http.get(path).status_code == 200


def test_trailing_slash_on_a_car_route(api):
    car = create(api)
    assert body(api.http.get('/api/v1/cars/%s/' % car['id'])) == car


@pytest.mark.parametrize('bad_id', ['71ag', '123', '12345', urllib.parse.quote('١٢٣٤'),
                                    '12a4', '%2012', '1234%0A'])
@pytest.mark.parametrize('method', ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'])
def test_an_id_that_is_not_four_ascii_digits_is_404_on_every_method(api, bad_id, method):
    r = api.http.request(method, '/api/v1/cars/' + bad_id, headers=JSON,
                         body=json.dumps(COROLLA))
    assert_problem(r, 404)
    assert list_all(api)['cars'] == []


def test_health_names_the_store(api, store_kind):
    r = api.http.get('/api/v1/health')
    assert body(r) == {'status': 'ok', 'store': store_kind}


# --- create -------------------------------------------------------------------

def test_create_assigns_an_id_of_digits_1_to_9_and_returns_location_and_etag(api):
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(COROLLA))
    assert r.status_code == 201
    car = body(r)
    assert re.fullmatch('[1-9]{4}', car['id'])
    assert car == dict(COROLLA, id=car['id'])
    assert header(r, 'Location') == '/api/v1/cars/%s' % car['id']
    assert header(r, 'ETag').startswith('"')
    assert body(api.http.get(header(r, 'Location'))) == car


def test_create_with_a_chosen_id_and_again_is_a_conflict(api):
    car = create(api, dict(COROLLA, id='8273'))
    assert car['id'] == '8273'
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(dict(COROLLA, id='8273',
                                                                        color='red')))
    assert_problem(r, 409)
    assert body(api.http.get('/api/v1/cars/8273'))['color'] == 'blue'


def test_optional_fields_absent_read_as_null(api):
    car = create(api, {'make': 'Ford', 'model': 'Focus', 'year': 2012})
    assert car['trans'] is None and car['color'] is None


def test_year_as_a_digit_string_is_accepted_and_returned_as_integer(api):
    assert create(api, dict(COROLLA, year='2015'))['year'] == 2015


def test_make_and_model_are_trimmed(api):
    car = create(api, dict(COROLLA, make='  Toyota ', model='\tCorolla\n'))
    assert (car['make'], car['model']) == ('Toyota', 'Corolla')


def test_form_encoded_create_works_as_in_the_seed_era(api):
    r = api.http.post('/api/v1/cars', headers=FORM, body='make=Ford&model=Focus&year=2012')
    assert r.status_code == 201
    assert body(r)['year'] == 2012


def test_json_sent_with_curls_default_form_content_type_is_read_as_json(api):
    r = api.http.post('/api/v1/cars', headers=FORM, body=json.dumps(COROLLA))
    assert r.status_code == 201


@pytest.mark.parametrize('car,fields', [
    ({'model': 'X', 'year': 2000}, {'make'}),
    ({'make': '', 'model': 'X', 'year': 2000}, {'make'}),
    ({'make': '   ', 'model': 'X', 'year': 2000}, {'make'}),
    ({'make': 'a' * 65, 'model': 'X', 'year': 2000}, {'make'}),
    ({'make': 'A', 'model': 'X', 'year': 1885}, {'year'}),
    ({'make': 'A', 'model': 'X', 'year': cars.year_max() + 1}, {'year'}),
    ({'make': 'A', 'model': 'X', 'year': '20x5'}, {'year'}),
    ({'make': 'A', 'model': 'X', 'year': 2000.5}, {'year'}),
    ({'make': 'A', 'model': 'X', 'year': True}, {'year'}),
    ({'make': 'A', 'model': 'X', 'year': 2000, 'color': 'c' * 33}, {'color'}),
    ({'make': 'A', 'model': 'X', 'year': 2000, 'trans': 7}, {'trans'}),
    ({'make': 'A', 'model': 'X', 'year': 2000, 'id': '0123'}, {'id'}),
    ({'make': 'A', 'model': 'X', 'year': 2000, 'id': 1234}, {'id'}),
    ({'make': 'A', 'model': 'X', 'year': 2000, 'price': 1}, {'price'}),
    ({'make': 1, 'model': None, 'year': None, 'colour': 'red'}, {'make', 'model', 'year',
                                                                  'colour'}),
])
def test_invalid_cars_list_every_bad_field_and_change_nothing(api, car, fields):
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(car))
    problem = assert_problem(r, 422)
    assert {e['field'] for e in problem['errors']} == fields
    assert all(e['message'] for e in problem['errors'])
    assert list_all(api)['cars'] == []


@pytest.mark.parametrize('raw', [b'{', b'[1, 2]', b'"car"', b'null', b'', b'\xff\xfe',
                                 b'{"make": NaN}', b'[' * 50000])
def test_malformed_bodies_are_problems_not_errors(api, raw):
    r = api.http.post('/api/v1/cars', headers=JSON, body=raw)
    assert r.status_code in (400, 422)
    assert_problem(r, r.status_code)
    assert list_all(api)['cars'] == []


def test_other_media_types_are_415(api):
    r = api.http.post('/api/v1/cars', headers={'Content-Type': 'text/csv'}, body='a,b')
    assert_problem(r, 415)


def test_bodies_over_64_kib_are_413(api):
    big = json.dumps(dict(COROLLA, color='x' * (65 * 1024)))
    assert_problem(api.http.post('/api/v1/cars', headers=JSON, body=big), 413)


def test_unsupported_method_is_405_problem_with_allow(api):
    r = api.http.request('DELETE', '/api/v1/cars')
    assert_problem(r, 405)
    assert 'GET' in header(r, 'Allow')


def test_missing_car_is_404_problem(api):
    assert_problem(api.http.get('/api/v1/cars/1111'), 404)


# --- read, update, replace, delete --------------------------------------------------

def test_get_returns_etag_and_304_on_matching_if_none_match(api):
    car = create(api)
    r = api.http.get('/api/v1/cars/' + car['id'])
    tag = header(r, 'ETag')
    assert body(r) == car
    r = api.http.get('/api/v1/cars/' + car['id'], headers={'If-None-Match': tag})
    assert r.status_code == 304
    assert header(r, 'ETag') == tag
    r = api.http.get('/api/v1/cars/' + car['id'], headers={'If-None-Match': '"other"'})
    assert r.status_code == 200


@pytest.mark.parametrize('method', ['POST', 'PATCH'])
def test_partial_update_changes_only_the_given_fields_and_the_etag(api, method):
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(COROLLA))
    car, tag = body(r), header(r, 'ETag')
    r = api.http.request(method, '/api/v1/cars/' + car['id'], headers=JSON,
                         body=json.dumps({'color': 'red'}))
    assert r.status_code == 200
    assert body(r) == dict(car, color='red')
    assert header(r, 'ETag') not in (None, tag)


def test_seed_update_with_form_body(api):
    car = create(api)
    r = api.http.post('/api/v1/cars/' + car['id'], headers=FORM, body='color=green&year=2016')
    assert body(r) == dict(car, color='green', year=2016)


def test_patch_null_clears_an_optional_field_but_not_a_required_one(api):
    car = create(api)
    r = api.http.patch('/api/v1/cars/' + car['id'], headers=JSON, body='{"trans": null}')
    assert body(r)['trans'] is None
    r = api.http.patch('/api/v1/cars/' + car['id'], headers=JSON, body='{"make": null}')
    assert_problem(r, 422)
    assert body(api.http.get('/api/v1/cars/' + car['id']))['make'] == 'Toyota'


def test_update_of_a_missing_car_is_404(api):
    r = api.http.patch('/api/v1/cars/1234', headers=JSON, body='{"color": "red"}')
    assert_problem(r, 404)
    assert list_all(api)['cars'] == []


def test_put_creates_then_replaces(api):
    r = api.http.put('/api/v1/cars/4321', headers=JSON, body=json.dumps(COROLLA))
    assert r.status_code == 201
    assert header(r, 'Location') == '/api/v1/cars/4321'
    r = api.http.put('/api/v1/cars/4321', headers=JSON,
                     body=json.dumps({'make': 'Honda', 'model': 'Civic', 'year': 2019}))
    assert r.status_code == 200
    assert body(r) == {'id': '4321', 'make': 'Honda', 'model': 'Civic', 'year': 2019,
                       'trans': None, 'color': None}


def test_put_with_an_id_in_the_body_that_differs_from_the_path_is_rejected(api):
    r = api.http.put('/api/v1/cars/4321', headers=JSON, body=json.dumps(dict(COROLLA, id='1111')))
    assert_problem(r, 422)
    assert list_all(api)['cars'] == []


def test_put_cannot_create_an_id_with_a_zero(api):
    r = api.http.put('/api/v1/cars/1230', headers=JSON, body=json.dumps(COROLLA))
    assert_problem(r, 422)


def test_delete_then_get_is_404(api):
    car = create(api)
    assert api.http.delete('/api/v1/cars/' + car['id']).status_code == 204
    assert_problem(api.http.get('/api/v1/cars/' + car['id']), 404)
    assert_problem(api.http.delete('/api/v1/cars/' + car['id']), 404)


def test_stale_if_match_is_412_and_changes_nothing(api):
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(COROLLA))
    car, old = body(r), header(r, 'ETag')
    api.http.patch('/api/v1/cars/' + car['id'], headers=JSON, body='{"color": "red"}')
    for method, payload in [('PATCH', {'color': 'green'}), ('POST', {'color': 'green'}),
                            ('PUT', COROLLA), ('DELETE', None)]:
        r = api.http.request(method, '/api/v1/cars/' + car['id'],
                             headers=dict(JSON, **{'If-Match': old}),
                             body=json.dumps(payload) if payload else b'')
        assert_problem(r, 412)
    assert body(api.http.get('/api/v1/cars/' + car['id']))['color'] == 'red'


# --- listing ---------------------------------------------------------------------

def seed(store, n, **fields):
    ids = cars.all_assignable_ids()[:n]
    store.put_many([dict(COROLLA, id=i, **fields) for i in ids])
    return ids


def walk(api, query, limit):
    seen, pages = [], 0
    url = '/api/v1/cars?limit=%d%s' % (limit, query)
    while True:
        r = api.http.get(url)
        assert r.status_code == 200, r.body
        page = body(r)
        assert len(page['cars']) <= limit
        seen.extend(c['id'] for c in page['cars'])
        pages += 1
        if page['next'] is None:
            assert header(r, 'Link') is None
            return seen, pages
        link = header(r, 'Link')
        assert link.endswith('rel="next"')
        url = link[1:link.index('>')]


def test_listing_walk_yields_every_car_once_in_id_order(api, store):
    ids = seed(store, 25)
    seen, pages = walk(api, '', 7)
    assert seen == sorted(ids)
    assert pages == 4


def test_listing_default_page_is_100(api, store):
    seed(store, 120)
    page = list_all(api)
    assert len(page['cars']) == 100 and page['next']


def test_listing_filters_combine_and_are_case_insensitive(api, store):
    store.put_many([
        dict(id='1111', make='Toyota', model='Corolla', year=2015, trans='manual', color='Blue'),
        dict(id='1112', make='toyota', model='Yaris', year=2010, trans=None, color='red'),
        dict(id='1113', make='Ford', model='Focus', year=2015, trans='manual', color='blue'),
        dict(id='1114', make='TOYOTA', model='Corolla', year=2020, trans='auto', color='BLUE'),
    ])

    def ids(query):
        return [c['id'] for c in list_all(api, '?' + query)['cars']]
    assert ids('make=TOYOTA') == ['1111', '1112', '1114']
    assert ids('make=toyota&color=blue') == ['1111', '1114']
    assert ids('model=corolla&year=2015') == ['1111']
    assert ids('year_min=2011&year_max=2016') == ['1111', '1113']
    assert ids('make=toyota&year_min=2012') == ['1111', '1114']
    assert ids('trans=MANUAL&color=Blue') == ['1111', '1113']
    assert ids('make=Nissan') == []


def test_filtered_walk_is_complete(api, store):
    store.put_many([dict(COROLLA, id=i, color='red' if n % 3 == 0 else 'blue')
                    for n, i in enumerate(cars.all_assignable_ids()[:60])])
    seen, _ = walk(api, '&color=RED', 4)
    assert len(seen) == 20 and seen == sorted(seen)


@pytest.mark.parametrize('query', ['limit=0', 'limit=1001', 'limit=x', 'year=abc',
                                   'year_min=1800', 'cursor=', 'cursor=abc',
                                   'colour=red', 'limit=1&limit=2'])
def test_bad_listing_parameters_are_400(api, query):
    assert_problem(api.http.get('/api/v1/cars?' + query), 400)


def test_altered_cursor_or_other_filters_is_400(api, store):
    seed(store, 5)
    page = list_all(api, '?limit=2')
    cursor = page['next']
    assert list_all(api, '?limit=2&cursor=' + cursor)['cars']
    tampered = cursor[:-2] + ('A' if cursor[-2] != 'A' else 'B') + cursor[-1]
    assert_problem(api.http.get('/api/v1/cars?limit=2&cursor=' + tampered), 400)
    assert_problem(api.http.get('/api/v1/cars?limit=2&make=Toyota&cursor=' + cursor), 400)


def test_walk_while_others_write_never_skips_or_repeats_a_steady_car(api, store):
    ids = seed(store, 40)
    steady = set(ids[::2])
    churn = ids[1::2]
    url = '/api/v1/cars?limit=5'
    seen = []
    step = 0
    while url:
        page = body(api.http.get(url))
        seen.extend(c['id'] for c in page['cars'])
        # Between pages: delete a churning car, add new ones before and after the cursor.
        if step < len(churn):
            api.http.delete('/api/v1/cars/' + churn[step])
        api.http.put('/api/v1/cars/%s' % cars.all_assignable_ids()[100 + step], headers=JSON,
                     body=json.dumps(COROLLA))
        step += 1
        url = '/api/v1/cars?limit=5&cursor=' + page['next'] if page['next'] else None
    assert len(seen) == len(set(seen))
    assert steady <= set(seen)
    assert seen == sorted(seen)


# --- the id space ---------------------------------------------------------------------

def test_when_every_id_is_taken_create_without_id_is_409_and_nothing_changes(api, store):
    store.put_many([dict(COROLLA, id=i) for i in cars.all_assignable_ids()])
    before = store.count()
    assert before == cars.ID_SPACE
    r = api.http.post('/api/v1/cars', headers=JSON, body=json.dumps(COROLLA))
    problem = assert_problem(r, 409)
    assert 'taken' in problem['detail']
    assert store.count() == before
    # Freeing one id makes it the one assigned.
    api.http.delete('/api/v1/cars/5555')
    assert create(api)['id'] == '5555'


# --- deployed behind API Gateway's own domain ----------------------------------------

def gateway_event(method, path, body=None, query=None):
    """A REST API proxy event as API Gateway sends it on its execute-api domain (stage `api`)."""
    return {'resource': path, 'path': path, 'httpMethod': method,
            'headers': {'content-type': 'application/json'}, 'multiValueHeaders': {},
            'queryStringParameters': query,
            'multiValueQueryStringParameters': {k: [v] for k, v in (query or {}).items()} or None,
            'pathParameters': None, 'stageVariables': None,
            'requestContext': {'resourcePath': path, 'httpMethod': method,
                               'path': '/api' + path, 'stage': 'api'},
            'body': json.dumps(body) if body is not None else None, 'isBase64Encoded': False}


def test_location_and_link_keep_the_stage_prefix_of_the_gateway_domain(api, store):
    from app import app
    r = app(gateway_event('POST', '/api/v1/cars', COROLLA), None)
    assert r['statusCode'] == 201
    assert r['headers']['Location'] == '/api/api/v1/cars/' + json.loads(r['body'])['id']
    seed(store, 3)
    r = app(gateway_event('GET', '/api/v1/cars', query={'limit': '1'}), None)
    assert r['headers']['Link'].startswith('</api/api/v1/cars?limit=1&cursor=')


@pytest.mark.parametrize('path', ['/', '/api/v1/health', '/api/v1/cars', '/api/v1/openapi.json',
                                  '/api/v1/docs'])
def test_a_get_carrying_a_content_type_header_is_still_answered(api, path):
    assert api.http.get(path, headers={'Content-Type': 'text/plain'}).status_code == 200


# --- text is stored in one Unicode form ----------------------------------------------

def test_text_is_stored_composed_so_either_spelling_finds_the_car(api):
    # "Citroe\u0308n" (e + combining diaeresis) and "Citro\u00ebn" are the same
    # name typed two ways; NFC makes them one stored value and one filter.
    car = create(api, dict(COROLLA, make='Citroe\u0308n', model='Dyane 6'))
    assert car['make'] == 'Citro\u00ebn'
    assert body(api.http.get('/api/v1/cars/' + car['id']))['make'] == 'Citro\u00ebn'
    for spelling in ('Citro\u00ebn', 'Citroe\u0308n', 'CITRO\u00cbN'):
        found = list_all(api, '?make=' + urllib.parse.quote(spelling))['cars']
        assert [c['id'] for c in found] == [car['id']], spelling
