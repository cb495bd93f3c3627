"""Bulk import: a file dropped under imports/ is imported and a report written beside it."""
import collections
import io
import json
import os

import pytest
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib.automation import bulk_import, export
from chalicelib.domain import cars

BUCKET = 'cars-test-bucket'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv('CARS_BUCKET', BUCKET)
    with mock_aws():
        import boto3
        client = boto3.client('s3', region_name='us-east-1')
        client.create_bucket(Bucket=BUCKET)
        yield client


def object_created(key, bucket=BUCKET):
    """The EventBridge event S3 sends for a new object (EventBridge notifications on)."""
    return {
        'version': '0', 'id': '17793124-05d4-b198-2fde-7ededc63b103',
        'detail-type': 'Object Created', 'source': 'aws.s3', 'account': '123456789012',
        'time': '2024-01-01T00:00:00Z', 'region': 'us-east-1',
        'resources': ['arn:aws:s3:::%s' % bucket],
        'detail': {'version': '0', 'bucket': {'name': bucket},
                   'object': {'key': key, 'size': 1, 'etag': 'x', 'sequencer': '1'},
                   'request-id': 'R', 'requester': '123456789012',
                   'source-ip-address': '127.0.0.1', 'reason': 'PutObject'},
    }


def invoke_import(event, timeout=300):
    """Call import_upload's Lambda entry point as Lambda does, with a context
    whose time limit is the deployed function's (chalice.test.Client's context
    always says 3 seconds, Lambda's default, and the import keeps to it)."""
    from chalice.local import LambdaContext
    with Client(app):
        return app.handler_map['import_upload'](
            event, LambdaContext('import_upload', 512, max_runtime_ms=timeout * 1000))


def drop(s3, key, body):
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode('utf-8') if isinstance(body, str)
                  else body)
    invoke_import(object_created(key))
    return json.loads(s3.get_object(Bucket=BUCKET, Key=bulk_import.report_key(key))
                      ['Body'].read())


def all_cars(store):
    return list(export.all_cars(store))


def csv_of(rows, header=('id', 'make', 'model', 'year', 'trans', 'color')):
    out = io.StringIO()
    out.write(','.join(header) + '\n')
    for r in rows:
        out.write(','.join('' if r.get(h) is None else str(r[h]) for h in header) + '\n')
    return out.getvalue()


def object_deleted(key, bucket=BUCKET):
    """The EventBridge event S3 sends for a deleted object."""
    event = object_created(key, bucket)
    event['detail-type'] = 'Object Deleted'
    event['detail'] = {'version': '0', 'bucket': {'name': bucket},
                       'object': {'key': key, 'sequencer': '2'},
                       'request-id': 'R', 'requester': '123456789012',
                       'source-ip-address': '127.0.0.1', 'reason': 'DeleteObject',
                       'deletion-type': 'Permanently Deleted'}
    return event


def deployed_import_pattern(bucket):
    """The import rule's pattern as the stack has it: the pattern app.py gives
    Chalice, merged with deploy/resources.py's override the way `chalice package
    --merge-template` merges, its bucket Ref resolved to the bucket's name."""
    import copy
    import sys

    from chalice.package import TemplateDeepMerger
    sys.path.insert(0, os.path.join(ROOT, 'deploy'))
    try:
        import ids
        import resources
    finally:
        sys.path.remove(os.path.join(ROOT, 'deploy'))
    override = resources.event_sources()[ids.IMPORT_UPLOAD]['Properties']['Events'][
        ids.IMPORT_EVENT]['Properties']['Pattern']
    merged = TemplateDeepMerger().merge(copy.deepcopy(override),
                                        copy.deepcopy(bulk_import.IMPORT_EVENT_PATTERN))
    text = json.dumps(merged)
    assert json.dumps(bulk_import.BUCKET_PLACEHOLDER) not in text
    return json.loads(text.replace(json.dumps({'Ref': ids.BUCKET}), json.dumps(bucket)))


def test_the_deployed_import_rule_delivers_only_object_created_under_imports_of_its_bucket():
    import boto3
    wanted = object_created('imports/2024/cars.csv')
    others = [
        object_created('reports/2024/cars.csv.json'),       # the import's own report
        object_created('exports/2024-01-01.jsonl'),         # the daily export
        object_created('archive/imports/cars.csv'),         # imports/ not at the start
        object_created('imports-old/cars.csv'),             # not the imports/ folder
        object_created('imports/cars.csv', bucket='someone-elses-bucket'),
        object_deleted('imports/2024/cars.csv'),
    ]
    with mock_aws():
        sqs = boto3.client('sqs', region_name='us-east-1')
        queue = sqs.create_queue(QueueName='import-rule-target')['QueueUrl']
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=queue, AttributeNames=['QueueArn'])['Attributes']['QueueArn']
        events = boto3.client('events', region_name='us-east-1')
        events.put_rule(Name='import-upload', State='ENABLED',
                        EventPattern=json.dumps(deployed_import_pattern(BUCKET)))
        events.put_targets(Rule='import-upload', Targets=[{'Id': 'queue', 'Arn': queue_arn}])
        for event in others + [wanted]:
            answer = events.put_events(Entries=[{
                'Source': event['source'], 'DetailType': event['detail-type'],
                'Resources': event['resources'], 'Detail': json.dumps(event['detail'])}])
            assert answer['FailedEntryCount'] == 0
        delivered = []
        while True:
            batch = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                        WaitTimeSeconds=0).get('Messages', [])
            if not batch:
                break
            delivered += [json.loads(m['Body']) for m in batch]
    assert [(e['detail-type'], e['detail']['bucket']['name'], e['detail']['object']['key'])
            for e in delivered] == [('Object Created', BUCKET, 'imports/2024/cars.csv')]


def test_a_csv_with_bad_rows_imports_the_good_ones_and_reports_the_rest(store, s3):
    body = ('make,model,year,trans,color,id\n'
            'Toyota,Corolla,2015,automatic,blue,1234\n'
            'Ford,Model T,1700,,,\n'                     # line 3: year out of range
            'Honda,Civic,2010,manual,,\n'                 # line 4: gets an id
            ',Golf,2011,,,5555\n'                         # line 5: make missing
            'Kia,Rio,2012,,,12\n'                         # line 6: bad id
            'Mazda,MX-5,1999,manual,red,2222,extra\n')    # line 7: one cell too many
    report = drop(s3, 'imports/batch.csv', body)

    assert report['file'] == 'imports/batch.csv'
    assert (report['rows'], report['valid'], report['invalid'], report['written']) == (6, 2, 4, 2)
    assert report['created'] == 1
    assert [(e['line'], e['field']) for e in report['errors']] == [
        (3, 'year'), (5, 'make'), (6, 'id'), (7, '')]
    # What was written: the two valid rows, as they were in the file. (Not
    # "nothing at 5555": the id-less Honda row draws a random id, 5555 included.)
    stored = {c['make']: cars.public(c) for c in all_cars(store)}
    assert set(stored) == {'Honda', 'Toyota'}
    assert stored['Toyota'] == dict(id='1234', make='Toyota', model='Corolla', year=2015,
                                    trans='automatic', color='blue')
    honda = dict(stored['Honda'])
    assert cars.is_assignable_id(honda.pop('id'))
    assert honda == dict(make='Honda', model='Civic', year=2010, trans='manual', color=None)


def test_json_lines_import_and_the_report_name(store, s3):
    lines = [json.dumps(dict(make='Tesla', model='Model 3', year=2020, id='7777')),
             '', 'not json', json.dumps([1])]
    report = drop(s3, 'imports/2024/new.jsonl', '\n'.join(lines) + '\n')
    assert s3.head_object(Bucket=BUCKET, Key='reports/2024/new.jsonl.json')
    assert report['written'] == 1
    assert [e['line'] for e in report['errors']] == [3, 4]
    assert store.get('7777')['model'] == 'Model 3'


def test_an_unsupported_file_is_rejected_in_the_report(store, s3):
    report = drop(s3, 'imports/cars.xlsx', b'PK\x03\x04')
    assert report['status'] == 'rejected'
    assert 'unsupported file type' in report['errors'][0]['message']
    assert all_cars(store) == []


def test_a_csv_with_an_unknown_column_is_rejected_whole(store, s3):
    report = drop(s3, 'imports/odd.csv', 'make,model,year,colour\nFord,Ka,2001,red\n')
    assert report['status'] == 'rejected'
    assert report['errors'][0]['line'] == 1 and 'colour' in report['errors'][0]['message']
    assert all_cars(store) == []


def test_objects_outside_imports_are_ignored(store, s3):
    assert bulk_import.import_object_created(
        object_created('reports/x.csv')['detail'], s3=s3, store=store) is None


@pytest.mark.slow
def test_a_file_of_6561_rows_with_ids_imports_completely(store, s3):
    ids = cars.all_assignable_ids()
    rows = [{'id': i, 'make': 'Make%d' % (n % 7), 'model': 'Model', 'year': 1990 + n % 30}
            for n, i in enumerate(ids)]
    report = drop(s3, 'imports/full.csv', csv_of(rows))
    assert (report['rows'], report['written'], report['errors']) == (6561, 6561, [])
    assert store.count() == 6561


@pytest.mark.slow
def test_a_file_of_6561_rows_without_ids_fills_the_id_space(sqlite_path, monkeypatch, s3):
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    from chalicelib.store import get_store
    store = get_store()
    rows = [{'make': 'Make', 'model': 'M%d' % n, 'year': 2000} for n in range(6561)]
    report = drop(s3, 'imports/noids.csv', csv_of(rows, ('make', 'model', 'year')))
    assert (report['created'], report['errors']) == (6561, [])
    assert sorted(c['id'] for c in all_cars(store)) == cars.all_assignable_ids()


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_an_import_interrupted_half_way_and_run_again_loses_and_doubles_nothing(
        store, s3, monkeypatch):
    with_ids = [{'id': i, 'make': 'Ford', 'model': 'Focus', 'year': 2010}
                for i in cars.all_assignable_ids()[:1200]]
    without = [{'make': 'Kia', 'model': 'Rio %d' % n, 'year': 2012} for n in range(60)]
    body = csv_of(with_ids + without)
    s3.put_object(Bucket=BUCKET, Key='imports/big.csv', Body=body.encode())
    event = object_created('imports/big.csv')['detail']

    kind = type(store)
    real_put_many, real_create = kind.put_many, kind.create
    calls = collections.Counter()

    def dying_put_many(self, items, deadline=None):
        calls['put_many'] += 1
        if calls['put_many'] == 2:   # after the first batch of 500
            raise Interrupted()
        return real_put_many(self, items, deadline)

    monkeypatch.setattr(kind, 'put_many', dying_put_many)
    with pytest.raises(Interrupted):
        bulk_import.import_object_created(event, s3=s3, store=store)
    assert 0 < store.count() < 1260

    # Let the id-less rows start, then die again half way through them.
    monkeypatch.setattr(kind, 'put_many', real_put_many)

    def dying_create(self, fields, car_id=None, key_outcome=None):
        calls['create'] += 1
        if calls['create'] == 31:
            raise Interrupted()
        return real_create(self, fields, car_id, key_outcome=key_outcome)

    monkeypatch.setattr(kind, 'create', dying_create)
    with pytest.raises(Interrupted):
        bulk_import.import_object_created(event, s3=s3, store=store)
    assert store.count() == 1200 + 30

    monkeypatch.setattr(kind, 'create', real_create)
    report = bulk_import.import_object_created(event, s3=s3, store=store)
    assert report['errors'] == []
    assert (report['created'], report['already_created']) == (30, 30)
    stored = all_cars(store)
    assert len(stored) == 1260
    assert sorted(c['model'] for c in stored if c['make'] == 'Kia') == sorted(
        r['model'] for r in without)


# --- keys as S3 sends them, and a store that keeps refusing ---------------------------------

def s3_encoded(key):
    """The key as S3 puts it in the event: URL-encoded like a query string value."""
    from urllib.parse import quote_plus
    return quote_plus(key, safe='/')


def test_a_key_with_a_space_a_plus_and_an_accent_is_decoded_before_reading(store, s3):
    key = 'imports/my cars+é.csv'
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'id,make,model,year\n4321,Ford,Ka,2001\n')
    event = object_created(s3_encoded(key))
    assert event['detail']['object']['key'] == 'imports/my+cars%2B%C3%A9.csv'

    invoke_import(event)

    report = json.loads(s3.get_object(Bucket=BUCKET, Key='reports/my cars+é.csv.json')
                        ['Body'].read())
    assert (report['file'], report['status'], report['written']) == (key, 'imported', 1)
    assert store.get('4321')['make'] == 'Ford'


class UnprocessedForever(object):
    """A DynamoDB client whose BatchWriteItem succeeds but processes nothing
    (what a throttled table answers); every other call goes to the real one."""

    def __init__(self, real=None):
        self.real, self.batch_calls = real, 0

    def batch_write_item(self, RequestItems):
        self.batch_calls += 1
        return {'UnprocessedItems': RequestItems}

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_put_many_gives_up_after_its_attempts_and_names_the_cars_not_written(monkeypatch):
    from chalicelib.store.base import WriteIncomplete
    from chalicelib.store.dynamodb import DynamoDBStore
    store = DynamoDBStore('cars')
    store._client = stub = UnprocessedForever()
    monkeypatch.setattr(DynamoDBStore, 'PUT_MANY_BACKOFF', (0.001, 0.002))
    # Time enough that only the attempts, never the clock, can end the retries.
    monkeypatch.setattr(DynamoDBStore, 'PUT_MANY_SECONDS', 3600)
    ids = cars.all_assignable_ids()[:30]
    with pytest.raises(WriteIncomplete) as refused:
        store.put_many([{'id': i, 'make': 'Ford', 'model': 'Ka', 'year': 2001} for i in ids])
    # The first batch of 25 used up its attempts; the second was not tried.
    assert stub.batch_calls == DynamoDBStore.PUT_MANY_ATTEMPTS
    assert sorted(refused.value.unwritten) == ids and refused.value.written == 0


def test_put_many_sends_no_request_after_the_callers_deadline():
    import time
    from chalicelib.store.base import WriteIncomplete
    from chalicelib.store.dynamodb import DynamoDBStore
    store = DynamoDBStore('cars')
    store._client = stub = UnprocessedForever()
    with pytest.raises(WriteIncomplete, match='time for writing ran out') as refused:
        store.put_many([{'id': '1111', 'make': 'Ford', 'model': 'Ka', 'year': 2001}],
                       deadline=time.monotonic() - 1)
    assert stub.batch_calls == 0 and refused.value.unwritten == ['1111']


def test_put_many_sends_no_request_after_its_deadline(monkeypatch):
    from chalicelib.store.base import WriteIncomplete
    from chalicelib.store.dynamodb import DynamoDBStore
    store = DynamoDBStore('cars')
    store._client = stub = UnprocessedForever()
    # The first request goes out; the pause before a second would pass the deadline
    # (an hour away, so that no stall of this machine can pass it first).
    monkeypatch.setattr(DynamoDBStore, 'PUT_MANY_SECONDS', 3600)
    monkeypatch.setattr(DynamoDBStore, 'PUT_MANY_BACKOFF', (7200, 7200))
    with pytest.raises(WriteIncomplete, match='until the time ran out'):
        store.put_many([{'id': '1111', 'make': 'Ford', 'model': 'Ka', 'year': 2001}])
    assert stub.batch_calls == 1


class RefusesBatches(UnprocessedForever):
    """BatchWriteItem fails outright, as it does once botocore's own retries of a
    throttled or failing table are spent."""

    def batch_write_item(self, RequestItems):
        from botocore.exceptions import ClientError
        self.batch_calls += 1
        raise ClientError({'Error': {'Code': 'ProvisionedThroughputExceededException',
                                     'Message': 'throttled'}}, 'BatchWriteItem')


def test_put_many_reports_a_refused_batch_as_unwritten_without_raising_it():
    from chalicelib.store.base import WriteIncomplete
    from chalicelib.store.dynamodb import DynamoDBStore
    store = DynamoDBStore('cars')
    store._client = stub = RefusesBatches()
    with pytest.raises(WriteIncomplete, match='refused the batch') as refused:
        store.put_many([{'id': '1111', 'make': 'Ford', 'model': 'Ka', 'year': 2001}])
    assert stub.batch_calls == 1 and refused.value.unwritten == ['1111']


def test_a_throttled_import_reports_the_rows_not_written(dynamodb_table, monkeypatch, s3):
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    from chalicelib.store import get_store
    from chalicelib.store.dynamodb import DynamoDBStore
    store = get_store()
    monkeypatch.setattr(DynamoDBStore, 'PUT_MANY_BACKOFF', (0.001, 0.002))
    monkeypatch.setattr(store, '_client', UnprocessedForever(store.client))
    rows = [{'id': i, 'make': 'Ford', 'model': 'Ka', 'year': 2001}
            for i in cars.all_assignable_ids()[:3]] + [{'make': 'Kia', 'model': 'Rio',
                                                        'year': 2012}]
    s3.put_object(Bucket=BUCKET, Key='imports/throttled.csv', Body=csv_of(rows).encode())

    outcome = invoke_import(object_created('imports/throttled.csv'))

    report = json.loads(s3.get_object(Bucket=BUCKET, Key='reports/throttled.csv.json')
                        ['Body'].read())
    assert outcome['status'] == report['status'] == 'incomplete'
    assert (report['written'], report['not_written'], report['invalid']) == (0, 4, 0)
    assert [e['line'] for e in report['errors']] == [2, 3, 4, 5]
    assert all(e['message'].startswith('not written:') for e in report['errors'])


def test_an_import_that_runs_out_of_lambda_time_writes_its_report(store, s3):
    s3.put_object(Bucket=BUCKET, Key='imports/late.csv',
                  Body=b'id,make,model,year\n4321,Ford,Ka,2001\n')
    report = bulk_import.import_object_created(
        object_created('imports/late.csv')['detail'], s3=s3, store=store, remaining_ms=0)
    assert (report['status'], report['written'], report['not_written']) == ('incomplete', 0, 1)
    assert 'ran out of time' in report['errors'][0]['message']
    assert store.get('4321') is None
    assert s3.head_object(Bucket=BUCKET, Key='reports/late.csv.json')


def test_a_csv_import_strips_exactly_the_quote_that_neutralises_a_formula(store, s3):
    """The export prefixes ' to a cell starting with = + - @ (or with quotes then one
    of those); the import takes exactly one such quote off, and no other."""
    rows = [('1111', "'=1+1"), ('1112', "''+SUM(1)"), ('1113', "'-2+3"), ('1114', "'@x"),
            ('1115', "'plain"), ('1116', "'"), ('1117', "=raw"), ('1118', "'''-x")]
    body = 'id,make,model,year\n' + ''.join('%s,%s,Model,2001\n' % r for r in rows)
    report = drop(s3, 'imports/quoted.csv', body)
    assert report['written'] == len(rows), report
    assert {c['id']: c['make'] for c in all_cars(store)} == {
        '1111': '=1+1', '1112': "'+SUM(1)", '1113': '-2+3', '1114': '@x',
        '1115': "'plain", '1116': "'", '1117': '=raw', '1118': "''-x"}


def test_a_jsonl_upload_with_unicode_line_separators_in_a_field_imports(store, s3):
    lines = [json.dumps(dict(id='2222', make='Line\u2028Sep', model='Para\u2029Sep',
                             year=2001), ensure_ascii=False),
             json.dumps(dict(id='3333', make='Ford', model='Ka', year=2002))]
    report = drop(s3, 'imports/separators.jsonl', '\r\n'.join(lines) + '\r\n')
    assert (report['written'], report['errors']) == (2, [])
    assert store.get('2222')['make'] == 'Line\u2028Sep'
    assert store.get('2222')['model'] == 'Para\u2029Sep'
