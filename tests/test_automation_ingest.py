"""SQS ingest: one car per message, bad ones reported, redeliveries written once."""
import json
import uuid

import pytest

from chalice.test import Client

from app import app
from chalicelib.domain import cars


def sqs_record(body, message_id=None):
    """An SQS record as Lambda delivers it (distinct messageIds, unlike Chalice's generator)."""
    return {
        'messageId': message_id or str(uuid.uuid4()),
        'receiptHandle': 'handle-' + uuid.uuid4().hex,
        'body': body if isinstance(body, str) else json.dumps(body),
        'attributes': {'ApproximateReceiveCount': '1', 'SentTimestamp': '1700000000000',
                       'SenderId': 'AIDEXAMPLE', 'ApproximateFirstReceiveTimestamp':
                       '1700000000001'},
        'messageAttributes': {}, 'md5OfBody': '0' * 32, 'eventSource': 'aws:sqs',
        'eventSourceARN': 'arn:aws:sqs:us-east-1:123456789012:cars-ingest',
        'awsRegion': 'us-east-1',
    }


def deliver(*records):
    with Client(app) as client:
        return client.lambda_.invoke('ingest_queue', {'Records': list(records)}).payload


def all_cars(store):
    records, _ = store.list(cars.Filters(), None, 1000)
    return records


COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}


def test_poison_messages_are_reported_and_the_rest_of_the_batch_is_kept(store):
    good_new = sqs_record(COROLLA)
    good_put = sqs_record(dict(COROLLA, id='4321', color='red'))
    not_json = sqs_record('{"make": "Ford",')
    bad_car = sqs_record({'make': 'Ford', 'model': 'Model T', 'year': 1700})
    unknown = sqs_record(dict(COROLLA, colour='green'))
    not_object = sqs_record('[1, 2]')

    result = deliver(good_new, not_json, good_put, bad_car, unknown, not_object)

    assert result == {'batchItemFailures': [{'itemIdentifier': r['messageId']}
                                            for r in (not_json, bad_car, unknown, not_object)]}
    stored = all_cars(store)
    assert len(stored) == 2
    assert store.get('4321')['color'] == 'red'


def test_a_message_with_an_id_creates_then_replaces(store):
    deliver(sqs_record(dict(COROLLA, id='1234')))
    deliver(sqs_record(dict(COROLLA, id='1234', model='Camry')))
    car = store.get('1234')
    assert car['model'] == 'Camry'
    assert car['version'] == 2


def test_a_message_delivered_twice_creates_one_car(store):
    message = sqs_record(COROLLA)
    first = deliver(message)
    # SQS redelivers the same messageId (visibility timeout, lost delete).
    second = deliver(dict(message, receiptHandle='another-handle'))
    assert first == second == {'batchItemFailures': []}
    assert len(all_cars(store)) == 1


def test_a_message_with_an_id_delivered_twice_writes_once(store):
    message = sqs_record(dict(COROLLA, id='2222'))
    deliver(message)
    deliver(message)
    assert store.get('2222')['version'] == 1


def test_the_same_message_twice_in_one_batch_writes_once(store):
    message = sqs_record(COROLLA)
    assert deliver(message, message) == {'batchItemFailures': []}
    assert len(all_cars(store)) == 1


def test_a_transient_store_failure_is_reported_and_the_retry_writes_once(store, monkeypatch):
    import sqlite3
    real_create = type(store).create
    calls = {'n': 0}

    def flaky_create(self, fields, car_id=None, key_outcome=None):
        calls['n'] += 1
        if calls['n'] == 1:
            raise sqlite3.OperationalError('database is locked')
        return real_create(self, fields, car_id, key_outcome=key_outcome)

    monkeypatch.setattr(type(store), 'create', flaky_create)
    message = sqs_record(COROLLA)
    assert deliver(message) == {'batchItemFailures': [{'itemIdentifier': message['messageId']}]}
    assert all_cars(store) == []
    assert deliver(message) == {'batchItemFailures': []}
    assert len(all_cars(store)) == 1


def test_invalid_messages_are_logged_with_their_message_id_and_fields(store, caplog):
    bad = sqs_record({'make': '', 'model': 'X', 'year': 2000})
    with caplog.at_level('WARNING', logger='cars.automation'):
        deliver(bad)
    assert bad['messageId'] in caplog.text
    assert 'make' in caplog.text


def test_a_full_id_space_is_reported_not_raised(sqlite_path, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    from chalicelib.store import get_store
    store = get_store()
    store.put_many([dict(COROLLA, id=i) for i in cars.all_assignable_ids()])
    message = sqs_record(COROLLA)
    assert deliver(message) == {'batchItemFailures': [{'itemIdentifier': message['messageId']}]}


@pytest.mark.parametrize('car', [COROLLA, dict(COROLLA, id='4321')],
                         ids=['create', 'create-or-replace'])
def test_a_redelivery_while_the_first_delivery_is_still_writing_is_reported_for_retry(
        store, monkeypatch, car):
    # SQS may hand the same message to a second invocation while the first is
    # still inside its write. The second must not write, and must not let the
    # message be deleted either: it reports it, so SQS retries it later.
    record = sqs_record(car)
    write = 'create' if 'id' not in car else 'replace'
    real, redelivered = getattr(store, write), []

    def write_during_redelivery(*args, **kwargs):
        if not redelivered:
            redelivered.append(deliver(record))
        return real(*args, **kwargs)
    monkeypatch.setattr(store, write, write_during_redelivery)
    first = deliver(record)
    assert redelivered == [{'batchItemFailures': [{'itemIdentifier': record['messageId']}]}]
    assert first == {'batchItemFailures': []}
    assert len(all_cars(store)) == 1
    # The retry, once the first delivery is done, is a replay: still one car.
    assert deliver(record) == {'batchItemFailures': []}
    assert len(all_cars(store)) == 1
