"""Change events: DynamoDB stream -> SNS deployed, the sqlite outbox locally, one shape."""
import json

import pytest
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib.automation import aws, publish
from chalicelib.domain import idempotency
from chalicelib.store import get_store
from dynamodb_local import stream_records

COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}
EVENT_KEYS = {'id', 'type', 'car_id', 'time', 'source', 'before', 'after'}
CAR_KEYS = {'id', 'make', 'model', 'year', 'trans', 'color', 'version', 'created_at',
            'updated_at'}


def make_changes(store):
    """One create, two updates and a delete, plus an item that is not a car."""
    car = store.create(dict(COROLLA))
    store.update(car['id'], {'color': 'red'})
    store.replace(car['id'], dict(COROLLA, model='Camry'))
    store.delete(car['id'])
    idempotency.run_once(store, 'k1', 'fp', lambda: {'id': 'x'}, namespace='test')
    return car['id']


@pytest.fixture
def topic(monkeypatch):
    """A moto SNS topic with an SQS queue subscribed (raw delivery), to read what was sent."""
    with mock_aws():
        import boto3
        sns = boto3.client('sns', region_name='us-east-1')
        sqs = boto3.client('sqs', region_name='us-east-1')
        arn = sns.create_topic(Name='cars-events')['TopicArn']
        queue = sqs.create_queue(QueueName='events-tap')['QueueUrl']
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=['QueueArn'])[
            'Attributes']['QueueArn']
        sns.subscribe(TopicArn=arn, Protocol='sqs', Endpoint=queue_arn,
                      Attributes={'RawMessageDelivery': 'true'})
        monkeypatch.setenv('CARS_EVENTS_TOPIC_ARN', arn)

        def received():
            got = []
            while True:
                msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get(
                    'Messages', [])
                if not msgs:
                    return got
                got.extend(json.loads(m['Body']) for m in msgs)
        yield sns, received


def test_stream_records_of_cars_are_published_and_others_ignored(
        dynamodb_table_with_stream, dynamodb_endpoint, monkeypatch, topic):
    dynamodb_table = dynamodb_table_with_stream
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    car_id = make_changes(get_store())
    records = stream_records(dynamodb_endpoint, dynamodb_table)
    assert any(not r['dynamodb']['Keys']['pk']['S'] == 'CAR' for r in records)
    _, received = topic

    with Client(app) as client:
        outcome = client.lambda_.invoke('publish_changes', {'Records': records}).payload

    assert outcome == {'batchItemFailures': []}
    got = received()
    assert [e['type'] for e in got] == ['car.created', 'car.updated', 'car.updated',
                                        'car.deleted']
    assert all(set(e) == EVENT_KEYS and e['car_id'] == car_id for e in got)
    created, recolored, replaced, deleted = got
    assert created['before'] is None and set(created['after']) == CAR_KEYS
    assert (recolored['before']['color'], recolored['after']['color']) == ('blue', 'red')
    assert (replaced['before']['model'], replaced['after']['model']) == ('Corolla', 'Camry')
    assert deleted['after'] is None and deleted['before']['model'] == 'Camry'
    assert [e['id'] for e in got] == [r['eventID'] for r in records
                                      if r['dynamodb']['Keys']['pk']['S'] == 'CAR']


def test_sqlite_writes_the_same_events_to_its_outbox(sqlite_path, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    store = get_store()
    car_id = make_changes(store)
    got = [e for _, e in store.changes_after(0)]
    assert [e['type'] for e in got] == ['car.created', 'car.updated', 'car.updated',
                                        'car.deleted']
    assert all(set(e) == EVENT_KEYS and e['car_id'] == car_id and e['source'] == 'sqlite'
               for e in got)
    assert set(got[0]['after']) == CAR_KEYS
    assert (got[1]['before']['version'], got[1]['after']['version']) == (1, 2)
    assert got[3]['before']['model'] == 'Camry' and got[3]['after'] is None


def test_a_failed_write_leaves_no_event(sqlite_path, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    store = get_store()
    car = store.create(dict(COROLLA))
    from chalicelib.domain import cars
    with pytest.raises(cars.VersionMismatch):
        store.update(car['id'], {'color': 'red'}, expect=('stale',))
    assert [e['type'] for _, e in store.changes_after(0)] == ['car.created']


class CountingSNS(object):
    def __init__(self, client, fail=False):
        self.client, self.calls, self.fail = client, [], fail

    def publish_batch(self, **kwargs):
        self.calls.append(len(kwargs['PublishBatchRequestEntries']))
        if self.fail:
            return {'Successful': [], 'Failed': [{'Id': '0', 'Code': 'InternalError',
                                                  'SenderFault': False}]}
        return self.client.publish_batch(**kwargs)


def fake_record(n):
    """A stream INSERT record of one car, as Lambda delivers it."""
    from chalicelib.store.dynamodb_items import to_item
    car = dict(COROLLA, id='%04d' % (1111 + n), version=1, rev='r', created_at='t',
               updated_at='t')
    item = to_item(car)
    return {'eventID': 'e%d' % n, 'eventName': 'INSERT', 'eventSource': 'aws:dynamodb',
            'dynamodb': {'Keys': {'pk': item['pk'], 'sk': item['sk']}, 'NewImage': item,
                         'SequenceNumber': '%021d' % (100 + n)}}


def test_events_are_published_ten_a_request(topic):
    sns, received = topic
    counting = CountingSNS(sns)
    assert publish.publish_stream_records([fake_record(n) for n in range(23)],
                                          sns=counting) == {'batchItemFailures': []}
    assert counting.calls == [10, 10, 3]
    assert len(received()) == 23


def test_a_refused_request_stops_publishing_and_reports_its_first_record(topic):
    sns, _ = topic
    counting = CountingSNS(sns, fail=True)
    records = [fake_record(n) for n in range(23)]
    assert publish.publish_stream_records(records, sns=counting) == {
        'batchItemFailures': [{'itemIdentifier': records[0]['dynamodb']['SequenceNumber']}]}
    assert counting.calls == [10]


def test_a_stream_batch_without_cars_publishes_nothing():
    record = {'eventID': '1', 'eventName': 'INSERT', 'dynamodb': {
        'Keys': {'pk': {'S': 'IDEMPOTENCY#x'}, 'sk': {'S': 'KEY'}},
        'NewImage': {'pk': {'S': 'IDEMPOTENCY#x'}, 'sk': {'S': 'KEY'}}}}
    assert publish.publish_stream_records([record], sns=object(), topic='arn') == {
        'batchItemFailures': []}


class RefusingSNS(object):
    """moto's SNS, except that PublishBatch refuses the entries whose car_id is in
    `refuse` (SNS answers such a request with those entries under Failed)."""

    def __init__(self, client, refuse):
        self.client, self.refuse = client, set(refuse)

    def publish_batch(self, TopicArn, PublishBatchRequestEntries):
        def refused(entry):
            return entry['MessageAttributes']['car_id']['StringValue'] in self.refuse
        sent = [e for e in PublishBatchRequestEntries if not refused(e)]
        result = self.client.publish_batch(TopicArn=TopicArn, PublishBatchRequestEntries=sent) \
            if sent else {'Successful': []}
        result['Failed'] = [{'Id': e['Id'], 'Code': 'InternalError', 'SenderFault': False}
                            for e in PublishBatchRequestEntries if refused(e)]
        return result


def three_cars_changed(store):
    ids = [store.create(dict(COROLLA, model=m))['id'] for m in ('A', 'B', 'C')]
    store.update(ids[0], {'color': 'red'})
    return ids


def test_a_refused_event_reports_its_record_and_the_records_before_it_are_kept(
        dynamodb_table_with_stream, dynamodb_endpoint, monkeypatch, topic):
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    first, second, third = three_cars_changed(get_store())
    records = [r for r in stream_records(dynamodb_endpoint, dynamodb_table_with_stream)
               if r['dynamodb']['Keys']['pk']['S'] == 'CAR']
    assert [r['eventName'] for r in records] == ['INSERT', 'INSERT', 'INSERT', 'MODIFY']
    sns, received = topic
    monkeypatch.setattr(aws, 'client', lambda service: RefusingSNS(sns, [second]))

    with Client(app) as client:
        outcome = client.lambda_.invoke('publish_changes', {'Records': records}).payload

    # Lambda checkpoints before the first refused record and retries from it.
    assert outcome == {'batchItemFailures': [
        {'itemIdentifier': records[1]['dynamodb']['SequenceNumber']}]}
    assert [(e['type'], e['car_id']) for e in received()] == [
        ('car.created', first), ('car.created', third), ('car.updated', first)]

    # The retry (from the reported record on) publishes the rest.
    monkeypatch.setattr(aws, 'client', lambda service: sns)
    with Client(app) as client:
        assert client.lambda_.invoke('publish_changes', {'Records': records[1:]}).payload == {
            'batchItemFailures': []}
    assert [e['car_id'] for e in received()][:1] == [second]


def test_a_topic_that_is_gone_reports_the_first_car_record(
        dynamodb_table_with_stream, dynamodb_endpoint, monkeypatch, topic):
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    three_cars_changed(get_store())
    records = stream_records(dynamodb_endpoint, dynamodb_table_with_stream)
    sns, received = topic
    sns.delete_topic(TopicArn=aws.topic_arn())

    with Client(app) as client:
        outcome = client.lambda_.invoke('publish_changes', {'Records': records}).payload

    first_car = next(r for r in records if r['dynamodb']['Keys']['pk']['S'] == 'CAR')
    assert outcome == {'batchItemFailures': [
        {'itemIdentifier': first_car['dynamodb']['SequenceNumber']}]}
    assert received() == []
