"""ETag, If-Match and If-None-Match on both stores."""
import concurrent.futures
import json
import threading

import pytest

from chalicelib import cars

JSON = {'Content-Type': 'application/json'}
CAR = {'make': 'Volvo', 'model': '240', 'year': 1988, 'color': 'green'}


def call(api, method, path, headers=None, body=None):
    h = dict(JSON, **(headers or {}))
    return api.http.request(method, path, headers=h,
                            body=json.dumps(body) if body is not None else b'')


@pytest.fixture
def car(api):
    r = call(api, 'POST', '/api/v1/cars', body=CAR)
    assert r.status_code == 201
    return '/api/v1/cars/' + json.loads(r.body)['id'], r.headers['ETag']


def test_every_write_answers_with_a_new_strong_etag(api, car):
    path, tag = car
    assert not tag.startswith('W/') and tag.startswith('"')
    assert call(api, 'GET', path).headers['ETag'] == tag
    patched = call(api, 'PATCH', path, {'If-Match': tag}, {'color': 'red'})
    assert patched.status_code == 200 and patched.headers['ETag'] != tag
    put = call(api, 'PUT', path, {'If-Match': patched.headers['ETag']}, CAR)
    assert put.status_code == 200 and put.headers['ETag'] not in (tag, patched.headers['ETag'])


@pytest.mark.parametrize('method, body', [('PATCH', {'color': 'red'}), ('POST', {'color': 'red'}),
                                          ('PUT', dict(CAR, color='red')), ('DELETE', None)])
def test_a_stale_if_match_is_412_and_changes_nothing(api, store, car, method, body):
    path, stale = car
    call(api, 'PATCH', path, {'If-Match': stale}, {'trans': 'manual'})
    before = store.get(path[-4:])
    r = call(api, method, path, {'If-Match': stale}, body)
    assert r.status_code == 412
    assert r.headers['Content-Type'].startswith('application/problem+json')
    assert store.get(path[-4:]) == before


@pytest.mark.parametrize('value', ['W/"{tag}"', '{bare}', '"1-nope"', 'garbage', '""', '"-"'])
def test_if_match_values_that_are_not_the_current_strong_tag_are_412(api, store, car, value):
    path, tag = car
    before = store.get(path[-4:])
    header = value.format(tag=tag.strip('"'), bare=tag.strip('"'))
    assert call(api, 'PATCH', path, {'If-Match': header}, {'color': 'red'}).status_code == 412
    assert store.get(path[-4:]) == before


def test_if_match_accepts_a_list_and_a_star(api, car):
    path, tag = car
    r = call(api, 'PATCH', path, {'If-Match': '"9-old", %s' % tag}, {'color': 'red'})
    assert r.status_code == 200
    assert call(api, 'PATCH', path, {'If-Match': '*'}, {'color': 'blue'}).status_code == 200


def test_if_match_on_a_missing_car_writes_nothing(api, store):
    assert call(api, 'PUT', '/api/v1/cars/5555', {'If-Match': '*'}, CAR).status_code == 412
    assert call(api, 'PATCH', '/api/v1/cars/5555', {'If-Match': '*'},
                {'color': 'red'}).status_code == 404
    assert store.get('5555') is None


def test_if_none_match_on_get_gives_304_without_a_body(api, car):
    path, tag = car
    r = call(api, 'GET', path, {'If-None-Match': tag})
    assert r.status_code == 304 and r.body in (b'', None)
    assert r.headers['ETag'] == tag
    assert call(api, 'GET', path, {'If-None-Match': 'W/' + tag}).status_code == 304
    assert call(api, 'GET', path, {'If-None-Match': '"0-x", ' + tag}).status_code == 304
    assert call(api, 'GET', path, {'If-None-Match': '"1-other"'}).status_code == 200
    call(api, 'PATCH', path, body={'color': 'red'})
    assert call(api, 'GET', path, {'If-None-Match': tag}).status_code == 200


def test_put_with_if_none_match_star_creates_only_if_absent(api, store):
    first = call(api, 'PUT', '/api/v1/cars/4444', {'If-None-Match': '*'}, CAR)
    assert first.status_code == 201
    before = store.get('4444')
    again = call(api, 'PUT', '/api/v1/cars/4444', {'If-None-Match': '*'}, dict(CAR, color='red'))
    assert again.status_code == 412
    assert store.get('4444') == before
    assert call(api, 'PUT', '/api/v1/cars/4444', {'If-None-Match': '"1-x"'},
                CAR).status_code == 400


def test_concurrent_writers_on_one_version_never_both_win(store):
    record = store.create(dict(CAR, trans=None))
    barrier = threading.Barrier(8)

    def write(i):
        barrier.wait()
        try:
            store.update(record['id'], {'color': 'c%d' % i}, (record['rev'],))
            return True
        except cars.VersionMismatch:
            return False
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(write, range(8)))
    assert wins.count(True) == 1
    assert store.get(record['id'])['version'] == 2


def test_dynamodb_checks_the_version_in_the_write_itself(store, store_kind):
    if store_kind != 'dynamodb':
        pytest.skip('DynamoDB request shape')
    record = store.create(dict(CAR, trans=None))
    seen = []

    def spy(params, model, **kwargs):
        seen.append((model.name, params))
    store.client.meta.events.register('provide-client-params.dynamodb.*', spy)
    try:
        with pytest.raises(cars.VersionMismatch):
            store.update(record['id'], {'color': 'red'}, ('stale',))
        store.update(record['id'], {'color': 'red'}, (record['rev'],))
    finally:
        store.client.meta.events.unregister('provide-client-params.dynamodb.*', spy)
    assert [name for name, _ in seen] == ['UpdateItem', 'UpdateItem']
    assert all('#rev IN' in params['ConditionExpression'] for _, params in seen)
