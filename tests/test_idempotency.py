"""Idempotency-Key on POST /api/v1/cars, on both stores (sqlite and DynamoDB Local)."""
import concurrent.futures
import json
import random
import threading
import time

import pytest
import requests

from chalicelib.automation import ingest
from chalicelib.domain import cars, idempotency
from chalicelib.http.preconditions import etag
from chalicelib.store.base import KeyClaimLost, KeyOutcome
from servers import LocalServer
from stores import server_env

JSON = {'Content-Type': 'application/json'}
FORM = {'Content-Type': 'application/x-www-form-urlencoded'}
CAR = {'make': 'Ford', 'model': 'Focus', 'year': 2012, 'color': 'red'}
# The contract's figures, written as docs/api.md and docs/design.md state them
# (not read from chalicelib.domain.idempotency, so a changed constant fails here):
# a key lives 24 hours; an abandoned claim may be taken over after 60 seconds.
KEY_LIFETIME_SECONDS = 24 * 60 * 60  # 86400
STALE_CLAIM_SECONDS = 60


def post(api, car=CAR, key=None, headers=JSON, raw=None):
    h = dict(headers)
    if key is not None:
        h['Idempotency-Key'] = key
    return api.http.post('/api/v1/cars', headers=h, body=raw if raw is not None else json.dumps(car))


def count(store):
    records, _ = store.list(cars.Filters(), None, 1000)
    return len(records)


def test_same_key_and_body_replays_the_first_response_and_creates_nothing(api, store):
    first = post(api, key='order-1')
    second = post(api, key='order-1')
    assert first.status_code == second.status_code == 201
    assert second.body == first.body
    assert second.headers['Location'] == first.headers['Location']
    assert second.headers['ETag'] == first.headers['ETag']
    assert second.headers.get('Idempotent-Replayed') == 'true'
    assert 'Idempotent-Replayed' not in first.headers
    assert count(store) == 1


def test_form_and_json_of_the_same_car_count_as_the_same_body(api, store):
    first = post(api, key='k-form')
    second = post(api, key='k-form', headers=FORM,
                  raw='make=Ford&model=Focus&year=2012&color=red')
    assert second.status_code == 201
    assert json.loads(second.body)['id'] == json.loads(first.body)['id']
    assert count(store) == 1


def test_same_key_with_another_body_is_422_and_creates_nothing(api, store):
    post(api, key='k-422')
    other = post(api, car=dict(CAR, color='blue'), key='k-422')
    assert other.status_code == 422
    assert other.headers['Content-Type'].startswith('application/problem+json')
    assert json.loads(other.body)['type'].endswith('idempotency-key-reused')
    assert count(store) == 1


def test_retry_while_the_first_is_in_flight_is_409(api, store):
    fp = idempotency.fingerprint(cars.validate_new(dict(CAR)))
    token, _ = store.claim_key('http#busy', fp)
    assert token
    r = post(api, key='busy')
    assert r.status_code == 409
    assert json.loads(r.body)['type'].endswith('idempotency-key-in-flight')
    assert count(store) == 0


def test_a_claim_younger_than_60_seconds_still_blocks_a_retry_with_409(api, store, monkeypatch):
    fp = idempotency.fingerprint(cars.validate_new(dict(CAR)))
    start = time.time()
    monkeypatch.setattr(time, 'time', lambda: start)
    store.claim_key('http#slow', fp)
    monkeypatch.setattr(time, 'time', lambda: start + STALE_CLAIM_SECONDS - 5)
    r = post(api, key='slow')
    assert r.status_code == 409
    assert json.loads(r.body)['type'].endswith('idempotency-key-in-flight')
    assert count(store) == 0


def test_an_abandoned_claim_is_taken_over_after_60_seconds(api, store, monkeypatch):
    fp = idempotency.fingerprint(cars.validate_new(dict(CAR)))
    real = time.time
    monkeypatch.setattr(time, 'time', lambda: real() - (STALE_CLAIM_SECONDS + 5))
    store.claim_key('http#crashed', fp)
    monkeypatch.setattr(time, 'time', real)
    r = post(api, key='crashed')
    assert r.status_code == 201
    assert post(api, key='crashed').body == r.body
    assert count(store) == 1


def test_a_key_still_replays_a_minute_before_24_hours(api, store, monkeypatch):
    start = time.time()
    monkeypatch.setattr(time, 'time', lambda: start)
    first = post(api, key='young')
    monkeypatch.setattr(time, 'time', lambda: start + KEY_LIFETIME_SECONDS - 60)
    again = post(api, key='young')
    assert again.status_code == 201
    assert again.headers.get('Idempotent-Replayed') == 'true'
    assert again.body == first.body
    assert count(store) == 1


def test_keys_expire_after_24_hours(api, store, monkeypatch):
    first = post(api, key='old')
    real = time.time
    monkeypatch.setattr(time, 'time', lambda: real() + KEY_LIFETIME_SECONDS + 5)
    second = post(api, key='old')
    assert second.status_code == 201
    assert 'Idempotent-Replayed' not in second.headers
    assert json.loads(second.body)['id'] != json.loads(first.body)['id']
    assert count(store) == 2


def test_a_rule_breaking_body_claims_no_key(api, store):
    bad = post(api, car=dict(CAR, year='soon'), key='fix-me')
    assert bad.status_code == 422
    assert post(api, key='fix-me').status_code == 201


def test_a_client_error_is_replayed_too(api, store):
    post(api, car=dict(CAR, id='1234'))
    first = post(api, car=dict(CAR, id='1234'), key='dup')
    again = post(api, car=dict(CAR, id='1234'), key='dup')
    assert first.status_code == again.status_code == 409
    assert again.headers.get('Idempotent-Replayed') == 'true'


def test_a_failed_action_frees_the_key(store):
    fp = 'f' * 64

    def boom():
        raise RuntimeError('store went away')
    with pytest.raises(RuntimeError):
        idempotency.run_once(store, 'k', fp, boom)
    outcome, replayed = idempotency.run_once(store, 'k', fp, lambda: {'ok': 1})
    assert (outcome, replayed) == ({'ok': 1}, False)
    assert idempotency.run_once(store, 'k', fp, lambda: {'ok': 2}) == ({'ok': 1}, True)


def test_namespaces_keep_queue_keys_apart_from_http_keys(store):
    assert idempotency.run_once(store, 'm1', 'a', lambda: 1, namespace='sqs') == (1, False)
    assert idempotency.run_once(store, 'm1', 'b', lambda: 2, namespace='http') == (2, False)


@pytest.mark.parametrize('key', ['', 'x' * 256, 'caf\u00e9', 'tab\there', 'bell\x07'])
def test_bad_keys_are_400_and_create_nothing(api, store, key):
    r = post(api, key=key)
    assert r.status_code == 400
    assert json.loads(r.body)['type'].endswith('invalid-idempotency-key')
    assert count(store) == 0


def test_keys_up_to_255_printable_characters_are_accepted(api):
    assert post(api, key='~' + 'a' * 253 + ' ').status_code == 201


def test_dynamodb_keys_live_beside_the_cars_with_a_ttl(api, store, store_kind):
    if store_kind != 'dynamodb':
        pytest.skip('DynamoDB item layout')
    before = time.time()
    post(api, key='ttl-key')
    after = time.time()
    item = store.client.get_item(TableName=store.table,
                                 Key={'pk': {'S': 'IDEMPOTENCY#http#ttl-key'},
                                      'sk': {'S': 'KEY'}})['Item']
    expires = int(item['expires_at']['N'])
    # A whole number of seconds (DynamoDB's TTL), 24 hours after the request.
    assert int(before) + KEY_LIFETIME_SECONDS <= expires <= after + KEY_LIFETIME_SECONDS
    assert item['state']['S'] == 'done'


def test_sqlite_sweeps_expired_keys(store, store_kind, monkeypatch):
    if store_kind != 'sqlite':
        pytest.skip('sqlite sweep')
    idempotency.run_once(store, 'gone', 'a', lambda: 1)
    real = time.time
    monkeypatch.setattr(time, 'time', lambda: real() + KEY_LIFETIME_SECONDS + 5)
    idempotency.run_once(store, 'new', 'b', lambda: 2)
    left = store.connect().execute('SELECT key FROM idempotency_keys').fetchall()
    assert left == [('http#new',)]


@pytest.mark.http
@pytest.mark.slow
def test_16_concurrent_posts_with_one_key_create_exactly_one_car(store_kind, store, tmp_path):
    log = tmp_path / 'server.log'
    with LocalServer(env=server_env(), kind='dev', log_path=str(log)) as server:
        barrier = threading.Barrier(16)

        def send(_):
            with requests.Session() as s:
                barrier.wait()
                return s.post(server.url + '/api/v1/cars', json=CAR,
                              headers={'Idempotency-Key': 'stampede'}, timeout=60)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, range(16)))
    unexpected = [(r.status_code, r.text) for r in responses if r.status_code not in (201, 409)]
    assert not unexpected, (unexpected, log.read_text()[-4000:])
    created = {r.json()['id'] for r in responses if r.status_code == 201}
    assert len(created) == 1
    assert count(store) == 1


class Killed(BaseException):
    """The process dying right after a write (not an Exception: no handler stops it)."""


def _die_after_create(store, monkeypatch, cleanup):
    """Make the next store.create commit, then kill the process; return the written records."""
    written = []
    real_create = store.create

    def create_then_die(*args, **kwargs):
        written.append(real_create(*args, **kwargs))
        monkeypatch.setattr(store, 'create', real_create)
        raise Killed()
    monkeypatch.setattr(store, 'create', create_then_die)
    if cleanup == 'skipped':  # kill -9: no except or finally block runs
        monkeypatch.setattr(store, 'release_key', lambda *args: None)
    return written


def _later(monkeypatch):
    real = time.time
    monkeypatch.setattr(time, 'time', lambda: real() + STALE_CLAIM_SECONDS + 5)


@pytest.mark.parametrize('cleanup', ['skipped', 'runs'])
def test_a_crash_right_after_the_car_is_written_still_replays_after_the_stale_limit(
        api, store, monkeypatch, cleanup):
    written = _die_after_create(store, monkeypatch, cleanup)
    with pytest.raises(Killed):
        post(api, key='crash')
    assert count(store) == 1
    _later(monkeypatch)
    retry = post(api, key='crash')
    assert retry.status_code == 201
    assert retry.headers.get('Idempotent-Replayed') == 'true'
    assert json.loads(retry.body) == cars.public(written[0])
    assert retry.headers['ETag'] == etag(written[0])
    assert retry.headers['Location'].endswith('/api/v1/cars/%s' % written[0]['id'])
    assert count(store) == 1


@pytest.mark.parametrize('cleanup', ['skipped', 'runs'])
def test_a_queue_message_whose_consumer_died_after_the_write_creates_one_car(
        store, monkeypatch, cleanup):
    written = _die_after_create(store, monkeypatch, cleanup)
    with pytest.raises(Killed):
        ingest.ingest_one(store, 'msg-crash', json.dumps(CAR))
    _later(monkeypatch)
    assert ingest.ingest_one(store, 'msg-crash', json.dumps(CAR)) == written[0]['id']
    assert count(store) == 1


@pytest.mark.parametrize('taker', ['in flight', 'done'])
def test_a_holder_whose_claim_was_taken_over_writes_no_car(store, monkeypatch, taker):
    fp = 'f' * 64
    real = time.time
    offset = [-STALE_CLAIM_SECONDS - 5]  # our claim is made long ago
    monkeypatch.setattr(time, 'time', lambda: real() + offset[0])
    real_create = store.create

    def taken_over_then_create(*args, **kwargs):
        # Our request stalled past the stale limit and another one took the key.
        offset[0] = 0
        token, _ = store.claim_key('http#race', fp)
        assert token
        if taker == 'done':
            store.record_key_outcome('http#race', token, {'id': 'theirs'})
        return real_create(*args, **kwargs)
    monkeypatch.setattr(store, 'create', taken_over_then_create)
    fields = {k: cars.validate_new(dict(CAR)).get(k) for k in cars.FIELDS}

    def attempt():
        return idempotency.create_once(store, 'race', fp, fields, lambda r: {'id': r['id']})
    if taker == 'done':
        assert attempt() == ({'id': 'theirs'}, True)
    else:
        with pytest.raises(idempotency.KeyInFlight):
            attempt()
    assert count(store) == 0


def test_a_stale_claim_cannot_record_over_the_claim_that_replaced_it(store, monkeypatch):
    fp = 'f' * 64
    real = time.time
    monkeypatch.setattr(time, 'time', lambda: real() - STALE_CLAIM_SECONDS - 5)
    old, _ = store.claim_key('http#late', fp)
    monkeypatch.setattr(time, 'time', real)
    new, _ = store.claim_key('http#late', fp)
    fields = {k: cars.validate_new(dict(CAR)).get(k) for k in cars.FIELDS}
    with pytest.raises(KeyClaimLost):
        store.create(fields, key_outcome=KeyOutcome('http#late', old, lambda r: {'id': r['id']}))
    assert count(store) == 0
    record = store.create(fields,
                          key_outcome=KeyOutcome('http#late', new, lambda r: {'id': r['id']}))
    assert store.current_key_outcome('http#late', fp) == {'id': record['id']}
    assert count(store) == 1


def test_a_keyed_create_on_dynamodb_is_a_claim_and_one_transaction(api, store, store_kind):
    if store_kind != 'dynamodb':
        pytest.skip('DynamoDB requests')
    sent = []
    store.client.meta.events.register('before-call.dynamodb.*',
                                      lambda model, **kwargs: sent.append(model.name))
    assert post(api, key='one-write').status_code == 201
    assert sent == ['PutItem', 'TransactWriteItems']


def test_a_keyed_create_whose_random_ids_are_taken_still_writes_one_car_and_its_key(
        api, store, monkeypatch):
    assert post(api, car=dict(CAR, id='1111')).status_code == 201
    # Every random probe draws 1111, so the create falls back to the free ids.
    monkeypatch.setattr(random, 'choice', lambda seq: seq[0])
    first = post(api, key='collide')
    assert first.status_code == 201
    assert json.loads(first.body)['id'] != '1111'
    again = post(api, key='collide')
    assert again.headers.get('Idempotent-Replayed') == 'true'
    assert again.body == first.body
    assert count(store) == 2
