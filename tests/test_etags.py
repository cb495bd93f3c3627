"""ETag, If-Match and If-None-Match on both stores."""
import concurrent.futures
import json
import threading

import pytest

from chalicelib.domain import cars

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


# --- If-None-Match: * on writes that need a car ------------------------------------

@pytest.mark.parametrize('method, body', [('PATCH', {'color': 'red'}), ('POST', {'color': 'red'}),
                                          ('DELETE', None)])
def test_if_none_match_star_on_an_existing_car_is_412_and_changes_nothing(api, store, car,
                                                                         method, body):
    path, tag = car
    before = store.get(path[-4:])
    for headers in ({'If-None-Match': '*'}, {'If-None-Match': '*', 'If-Match': tag}):
        r = call(api, method, path, headers, body)
        assert r.status_code == 412, r.body
        assert r.headers['Content-Type'].startswith('application/problem+json')
        assert json.loads(r.body)['type'].endswith('#problem-version-mismatch')
    assert store.get(path[-4:]) == before


@pytest.mark.parametrize('method, body', [('PATCH', {'color': 'red'}), ('POST', {'color': 'red'}),
                                          ('DELETE', None)])
def test_if_none_match_star_on_a_missing_car_stays_404(api, store, method, body):
    r = call(api, method, '/api/v1/cars/5555', {'If-None-Match': '*'}, body)
    assert r.status_code == 404
    assert store.get('5555') is None


@pytest.mark.parametrize('method, body', [('PATCH', {'color': 'red'}), ('POST', {'color': 'red'}),
                                          ('DELETE', None)])
def test_if_none_match_with_tags_on_writes_is_400(api, store, car, method, body):
    path, tag = car
    before = store.get(path[-4:])
    r = call(api, method, path, {'If-None-Match': '"1-x"'}, body)
    assert r.status_code == 400
    assert json.loads(r.body)['type'].endswith('#problem-invalid-precondition')
    assert store.get(path[-4:]) == before


def other_writer_is_locked_out(path):
    """True if another connection to the sqlite file cannot start a write now:
    some transaction holds sqlite's write lock. It does not wait for the lock
    (timeout 0), so the answer is what holds at this moment."""
    import sqlite3
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute('BEGIN IMMEDIATE')
    except sqlite3.OperationalError as e:
        assert 'locked' in str(e) or 'busy' in str(e), e
        return True
    else:
        other.execute('ROLLBACK')
        return False
    finally:
        other.close()


@pytest.mark.parametrize('operation', ['update', 'delete'])
def test_the_stores_refuse_only_if_absent_writes_in_the_write_itself(store, store_kind,
                                                                     operation, monkeypatch):
    """DynamoDB: one conditional request, no read first. sqlite: the store reads
    the car inside the write's own BEGIN IMMEDIATE transaction, so while it decides,
    no other writer can create, change or delete the car."""
    record = store.get(store.create(dict(CAR, trans=None))['id'])
    seen = []
    if store_kind == 'dynamodb':
        def spy(params, model, **kwargs):
            seen.append((model.name, params.get('ConditionExpression')))
        store.client.meta.events.register('provide-client-params.dynamodb.*', spy)
    else:
        assert not other_writer_is_locked_out(store.path)
        real_get = store.get

        def get_under_watch(car_id, *args, **kwargs):
            # Every read the write makes: was another writer locked out right then?
            seen.append((car_id, other_writer_is_locked_out(store.path)))
            return real_get(car_id, *args, **kwargs)
        monkeypatch.setattr(store, 'get', get_under_watch)
    try:
        args = (record['id'], {'color': 'red'}) if operation == 'update' else (record['id'],)
        with pytest.raises(cars.VersionMismatch):
            getattr(store, operation)(*args, only_if_absent=True)
        missing = ('5555', {'color': 'red'}) if operation == 'update' else ('5555',)
        with pytest.raises(cars.CarNotFound):
            getattr(store, operation)(*missing, only_if_absent=True)
    finally:
        if store_kind == 'dynamodb':
            store.client.meta.events.unregister('provide-client-params.dynamodb.*', spy)
        else:
            monkeypatch.setattr(store, 'get', real_get)
    if store_kind == 'dynamodb':
        # One conditional write each, no read first: the condition decides.
        name = 'UpdateItem' if operation == 'update' else 'DeleteItem'
        assert [n for n, _ in seen] == [name, name]
        assert all('attribute_not_exists(pk)' in cond for _, cond in seen)
    else:
        # Each call read its car once, and only while holding the write lock.
        assert seen == [(record['id'], True), ('5555', True)]
        assert not other_writer_is_locked_out(store.path)
    assert store.get(record['id']) == record
    assert store.get('5555') is None


def test_sqlite_decides_put_if_none_match_star_under_the_write_lock(store, store_kind,
                                                                   monkeypatch):
    """The write that the absence check lets through (a create by PUT with
    `If-None-Match: *`): between its read and its write no other writer can
    create the car, so an existing car can never be overwritten."""
    if store_kind != 'sqlite':
        pytest.skip('sqlite transactions (DynamoDB: one conditional UpdateItem)')
    real_get = store.get
    seen = []

    def get_then_another_writer_tries(car_id, *args, **kwargs):
        found = real_get(car_id, *args, **kwargs)
        # Between the read and the write: another writer tries to get in.
        seen.append((car_id, found, other_writer_is_locked_out(store.path)))
        return found
    monkeypatch.setattr(store, 'get', get_then_another_writer_tries)
    record, created = store.replace('5555', dict(CAR), only_if_absent=True)
    monkeypatch.setattr(store, 'get', real_get)
    assert created and record['version'] == 1
    assert seen == [('5555', None, True)]
    with pytest.raises(cars.VersionMismatch):
        store.replace('5555', dict(CAR, color='red'), only_if_absent=True)
    assert store.get('5555')['color'] == CAR['color']


# --- a conditional header sent on several lines is one list ---------------------------

def test_star_beside_tags_is_a_400_and_changes_nothing(api, store, car):
    # `If-Match: *` on one line and a stale tag on another: which the client
    # meant is a guess, so neither wins (first-wins would let the write through).
    path, tag = car
    before = store.get(path[-4:])
    for method, headers in (('PATCH', {'If-Match': '*, "1-stale"'}),
                            ('POST', {'If-Match': '"1-stale", *'}),
                            ('PUT', {'If-Match': '*, ' + tag}),
                            ('DELETE', {'If-None-Match': '"1-x", *'}),
                            ('PATCH', {'If-None-Match': '*, "1-x"'})):
        body = CAR if method == 'PUT' else ({'color': 'red'} if method != 'DELETE' else None)
        r = call(api, method, path, headers, body)
        assert r.status_code == 400, (method, headers, r.status_code)
        assert json.loads(r.body)['type'].endswith('#problem-invalid-precondition')
    assert store.get(path[-4:]) == before
    assert call(api, 'GET', path, {'If-None-Match': '"1-x", *'}).status_code == 400
    # `*` twice is still `*`.
    assert call(api, 'PATCH', path, {'If-Match': '*, *'}, {'color': 'red'}).status_code == 200


def lines(**named):
    """(name, value) header lines from keyword lists, e.g. If_Match=['*', '"1-x"']."""
    out = [('Content-Type', 'application/json')]
    for name, values in named.items():
        out.extend((name.replace('_', '-'), value) for value in values)
    return out


def test_if_match_on_two_lines_in_a_lambda_event_is_one_list(store, car):
    from gateway_events import invoke, rest_event
    path, tag = car
    car_id = path[-4:]
    # The current tag is on the first line; `headers` holds only the stale last one.
    status, headers, out, _ = invoke(rest_event(
        'PATCH', '/api/v1/cars/{car_id}', car_id=car_id, body={'color': 'red'},
        headers=lines(If_Match=[tag, '"1-stale"'])))
    assert status == 200 and out['color'] == 'red'
    new_tag = headers['ETag']
    # Neither line is current: 412, nothing written.
    before = store.get(car_id)
    status, _, _, _ = invoke(rest_event(
        'DELETE', '/api/v1/cars/{car_id}', car_id=car_id,
        headers=lines(If_Match=['"1-stale"', tag])))
    assert status == 412 and store.get(car_id) == before
    # Names keep the client's spelling; lines of one name in any case are one list.
    status, _, _, _ = invoke(rest_event(
        'DELETE', '/api/v1/cars/{car_id}', car_id=car_id,
        headers=[('IF-MATCH', new_tag), ('if-match', '"1-stale"')]))
    assert status == 204 and store.get(car_id) is None


def test_if_none_match_on_two_lines_in_a_lambda_event_is_one_list(store, car):
    from gateway_events import invoke, rest_event
    path, tag = car
    car_id = path[-4:]
    status, headers, _, _ = invoke(rest_event(
        'GET', '/api/v1/cars/{car_id}', car_id=car_id,
        headers=lines(If_None_Match=[tag, '"0-other"'])))
    assert status == 304 and headers['ETag'] == tag
    # `*` on the first line, a tag on the last (all `headers` shows): the whole
    # list is read, and `*` beside a tag is refused, never half-applied.
    before = store.get(car_id)
    status, _, out, _ = invoke(rest_event(
        'PATCH', '/api/v1/cars/{car_id}', car_id=car_id, body={'color': 'red'},
        headers=lines(If_None_Match=['*', '"1-x"'])))
    assert status == 400 and out['type'].endswith('#problem-invalid-precondition')
    status, _, _, _ = invoke(rest_event(
        'PUT', '/api/v1/cars/{car_id}', car_id=car_id, body=CAR,
        headers=lines(If_None_Match=['*', '"1-x"'])))
    assert status == 400 and store.get(car_id) == before
    assert store.get(car_id) == before


# --- conditional headers on a create ---------------------------------------------------

def test_create_with_if_none_match_star_is_412_for_an_id_that_exists(api, store, car):
    path, _ = car
    existing = path[-4:]
    before = store.get(existing)
    r = call(api, 'POST', '/api/v1/cars', {'If-None-Match': '*'}, dict(CAR, id=existing))
    assert r.status_code == 412 and store.get(existing) == before
    r = call(api, 'POST', '/api/v1/cars', {'If-None-Match': '*'}, dict(CAR, id='2468'))
    assert r.status_code == 201 and store.get('2468') is not None
    # Without the header, the same clash is the contract's 409.
    assert call(api, 'POST', '/api/v1/cars', None, dict(CAR, id=existing)).status_code == 409


def test_create_refuses_if_match_and_malformed_preconditions_and_writes_nothing(api, store):
    for headers, status in (({'If-Match': '*'}, 412), ({'If-Match': '"1-x"'}, 412),
                            ({'If-None-Match': '"1-x"'}, 400),
                            ({'If-None-Match': '*, "1-x"'}, 400)):
        r = call(api, 'POST', '/api/v1/cars', headers, dict(CAR, id='1357'))
        assert r.status_code == status, (headers, r.status_code)
        assert json.loads(r.body)['status'] == status
    assert store.get('1357') is None


def test_a_replayed_create_under_if_none_match_keeps_its_412(api, store, car):
    path, _ = car
    headers = {'If-None-Match': '*', 'Idempotency-Key': 'inm-replay-1'}
    body = dict(CAR, id=path[-4:])
    first = call(api, 'POST', '/api/v1/cars', headers, body)
    again = call(api, 'POST', '/api/v1/cars', headers, body)
    assert first.status_code == again.status_code == 412
