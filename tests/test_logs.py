"""Logs and metrics as they leave a deployed function.

The root logger is set up by the Lambda runtime's own code (awslambdaric, what
the python3.13 managed runtime runs), with the JSON log format and level INFO
that deploy/monitoring.py gives every function; requests and events go
through the Lambda entry points (app.app and the event handlers). Each test
reads the JSON lines the runtime would send to CloudWatch Logs, and the EMF
lines the app prints on stdout.
"""
import json
import logging
import subprocess
import sys
import time
import uuid

import pytest
from moto import mock_aws

import app as app_module
from chalicelib import store as store_module

TOKEN = 'tok-3c1f9e-never-logged'
WRONG_TOKEN = 'tok-guess-never-logged'
SECRET_COLOUR = 'colour-7d41-not-logged'
COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}


class _Sink(object):
    """The runtime's log sink, keeping what it is given (one JSON document a record)."""

    def __init__(self):
        self.frames = []

    def log(self, msg, frame_type=None):
        self.frames.append(msg)

    def log_error(self, message_lines):
        self.frames.append('\n'.join(message_lines))


class LambdaLogs(object):
    def __init__(self, sink):
        self.sink = sink

    def lines(self):
        return [json.loads(frame) for frame in self.sink.frames]

    def text(self):
        return ''.join(self.sink.frames)

    def by(self, logger):
        return [line for line in self.lines() if line['logger'] == logger]


@pytest.fixture
def lambda_logs(monkeypatch):
    """The root logger as Lambda sets it up (JSON, INFO), restored afterwards."""
    yield from _lambda_logging(monkeypatch, 'INFO')


@pytest.fixture
def lambda_debug_logs(monkeypatch):
    """The same with the application log level DEBUG (LoggingConfig ApplicationLogLevel)."""
    yield from _lambda_logging(monkeypatch, 'DEBUG')


def _lambda_logging(monkeypatch, level):
    from awslambdaric import bootstrap
    from awslambdaric.lambda_runtime_log_utils import LogFormat
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.Formatter.converter
    sink = _Sink()
    bootstrap._setup_logging(LogFormat.JSON, level, sink)
    monkeypatch.setenv('CARS_METRICS', 'emf')
    monkeypatch.setenv('CARS_STAGE', 'test')
    try:
        yield LambdaLogs(sink)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.Formatter.converter = saved[2]
        bootstrap._GLOBAL_AWS_REQUEST_ID = None


@pytest.fixture
def sqlite_store(sqlite_path, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    store_module.reset()
    return store_module.get_store()


class Context(object):
    """A Lambda context; each invocation gets its own request id, as in Lambda."""

    def __init__(self):
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = 'cars-test-APIHandler'
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = 'arn:aws:lambda:us-east-1:123456789012:function:cars'

    def get_remaining_time_in_millis(self):
        return 29000


def invoke(handler, event):
    """Call a Lambda entry point as the runtime does, its request id set for the logs."""
    from awslambdaric import bootstrap
    context = Context()
    bootstrap._GLOBAL_AWS_REQUEST_ID = context.aws_request_id
    return handler(event, context), context.aws_request_id


def api_event(method, path, resource, params=None, body=None, headers=None):
    """An API Gateway REST proxy event with its own requestContext.requestId."""
    headers = dict({'host': 'api.example', 'accept': '*/*'}, **(headers or {}))
    if body is not None:
        headers['content-type'] = 'application/json'
        body = json.dumps(body)
    return {
        'resource': resource, 'path': path, 'httpMethod': method, 'headers': headers,
        'multiValueHeaders': {k: [v] for k, v in headers.items()},
        'queryStringParameters': None, 'multiValueQueryStringParameters': None,
        'pathParameters': params, 'stageVariables': None,
        'requestContext': {'resourcePath': resource, 'httpMethod': method,
                           'path': '/api' + path, 'stage': 'api',
                           'requestId': str(uuid.uuid4()), 'identity': {}},
        'body': body, 'isBase64Encoded': False,
    }


CARS = '/api/v1/cars'
CAR = '/api/v1/cars/{car_id}'


def call(method, path, resource, params=None, body=None, headers=None):
    event = api_event(method, path, resource, params, body, headers)
    response, lambda_id = invoke(app_module.app, event)
    return response, event['requestContext']['requestId'], lambda_id


def emf(out):
    """The EMF documents among stdout's lines."""
    docs = []
    for text in out.splitlines():
        if text.startswith('{'):
            doc = json.loads(text)
            if '_aws' in doc:
                docs.append(doc)
    return docs


def test_a_write_is_one_info_line_with_the_api_request_id_car_id_and_outcome(
        lambda_logs, sqlite_store, capsys):
    response, api_id, lambda_id = call('POST', CARS, CARS, body=COROLLA)
    assert response['statusCode'] == 201
    car_id = json.loads(response['body'])['id']

    (line,) = lambda_logs.by('cars.ops')
    assert line['level'] == 'INFO'
    assert line['apiRequestId'] == api_id
    assert line['requestId'] == lambda_id
    assert line['carId'] == car_id
    assert (line['write'], line['outcome'], line['status']) == ('create', 'created', 201)
    assert line['message'] == 'create car %s: created' % car_id
    assert line['timestamp'].endswith('Z')

    (doc,) = emf(capsys.readouterr().out)
    directive = doc['_aws']['CloudWatchMetrics'][0]
    assert directive['Namespace'] == 'CarsApi'
    assert directive['Dimensions'] == [['stage']]
    assert doc['stage'] == 'test'
    assert doc['CarsCreated'] == 1
    assert doc['apiRequestId'] == api_id


def test_updates_deletes_and_refusals_each_log_their_outcome(lambda_logs, sqlite_store, capsys):
    car = sqlite_store.create(dict(COROLLA))
    car_id = car['id']
    path = '%s/%s' % (CARS, car_id)
    params = {'car_id': car_id}
    response, _, _ = call('GET', path, CAR, params)
    etag = response['headers']['ETag']
    response, patch_id, _ = call('PATCH', path, CAR, params, {'color': 'red'},
                                 {'if-match': etag})
    assert response['statusCode'] == 200
    response, stale_id, _ = call('PATCH', path, CAR, params, {'color': 'green'},
                                 {'if-match': etag})
    assert response['statusCode'] == 412
    response, delete_id, _ = call('DELETE', path, CAR, params)
    assert response['statusCode'] == 204

    lines = lambda_logs.by('cars.ops')
    assert [(l['apiRequestId'], l['carId'], l['write'], l['outcome'], l['status'])
            for l in lines] == [(patch_id, car_id, 'update', 'updated', 200),
                                (stale_id, car_id, 'update', 'refused', 412),
                                (delete_id, car_id, 'delete', 'deleted', 204)]
    assert 'version-mismatch' in lines[1]['message']
    docs = emf(capsys.readouterr().out)
    assert [{k: v for k, v in d.items() if k.startswith('Cars')} for d in docs] == [
        {'CarsUpdated': 1}, {'CarsDeleted': 1}]


def test_a_replayed_create_is_logged_as_such_and_counted_once(lambda_logs, sqlite_store, capsys):
    key = {'idempotency-key': 'order-%s' % uuid.uuid4().hex}
    first, _, _ = call('POST', CARS, CARS, body=COROLLA, headers=key)
    again, _, _ = call('POST', CARS, CARS, body=COROLLA, headers=key)
    assert first['statusCode'] == again['statusCode'] == 201
    car_id = json.loads(first['body'])['id']
    assert [(l['carId'], l['outcome']) for l in lambda_logs.by('cars.ops')] == [
        (car_id, 'created'), (car_id, 'replayed')]
    assert [d.get('CarsCreated') for d in emf(capsys.readouterr().out)] == [1]


def test_reads_log_nothing_and_emit_no_metrics(lambda_logs, sqlite_store, capsys):
    car = sqlite_store.create(dict(COROLLA))
    call('GET', CARS, CARS)
    call('GET', '%s/%s' % (CARS, car['id']), CAR, {'car_id': car['id']})
    assert lambda_logs.lines() == []
    assert emf(capsys.readouterr().out) == []


def test_a_store_outage_is_a_warning_with_the_request_ids(lambda_logs, sqlite_path, monkeypatch,
                                                          tmp_path):
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    # A directory cannot be opened as a database: sqlite raises OperationalError.
    monkeypatch.setenv('CARS_DB_PATH', str(tmp_path))
    store_module.reset()
    response, api_id, lambda_id = call('GET', '%s/1234' % CARS, CAR, {'car_id': '1234'})
    assert response['statusCode'] == 503
    (line,) = lambda_logs.by('cars.http')
    assert line['level'] == 'WARNING'
    assert line['message'].startswith('store unavailable')
    assert (line['apiRequestId'], line['requestId'], line['carId']) == (api_id, lambda_id,
                                                                        '1234')


def test_tokens_authorization_headers_and_bodies_never_reach_the_logs(
        lambda_logs, sqlite_store, monkeypatch, capsys):
    monkeypatch.setenv('CARS_AUTH_TOKENS', TOKEN)
    body = dict(COROLLA, color=SECRET_COLOUR)
    created, _, _ = call('POST', CARS, CARS, body=body,
                         headers={'authorization': 'Bearer ' + TOKEN})
    assert created['statusCode'] == 201
    car_id = json.loads(created['body'])['id']
    refused, _, _ = call('PUT', '%s/%s' % (CARS, car_id), CAR, {'car_id': car_id}, body,
                         {'authorization': 'Bearer ' + WRONG_TOKEN})
    assert refused['statusCode'] == 403
    missing, _, _ = call('DELETE', '%s/%s' % (CARS, car_id), CAR, {'car_id': car_id})
    assert missing['statusCode'] == 401
    invalid, _, _ = call('POST', CARS, CARS, body=dict(body, year='not a year'),
                         headers={'authorization': 'Bearer ' + TOKEN})
    assert invalid['statusCode'] == 422

    outcomes = [(l['write'], l['status']) for l in lambda_logs.by('cars.ops')]
    assert outcomes == [('create', 201), ('replace', 403), ('delete', 401), ('create', 422)]
    everything = lambda_logs.text() + capsys.readouterr().out
    for secret in (TOKEN, WRONG_TOKEN, 'Bearer', SECRET_COLOUR, 'not a year'):
        assert secret not in everything


def sqs_record(body):
    return {'messageId': str(uuid.uuid4()), 'receiptHandle': 'h', 'body': json.dumps(body),
            'attributes': {'ApproximateReceiveCount': '1'}, 'messageAttributes': {},
            'md5OfBody': '0' * 32, 'eventSource': 'aws:sqs',
            'eventSourceARN': 'arn:aws:sqs:us-east-1:123456789012:cars-ingest',
            'awsRegion': 'us-east-1'}


def test_a_rejected_message_is_a_warning_with_its_message_id(lambda_logs, sqlite_store, capsys):
    good = sqs_record(COROLLA)
    bad = sqs_record({'make': '', 'model': 'X', 'year': 2000})
    result, lambda_id = invoke(app_module.ingest_queue, {'Records': [good, bad]})
    assert result == {'batchItemFailures': [{'itemIdentifier': bad['messageId']}]}

    (line,) = lambda_logs.by('cars.automation')
    assert line['level'] == 'WARNING'
    assert line['messageId'] == bad['messageId']
    assert line['requestId'] == lambda_id
    (doc,) = emf(capsys.readouterr().out)
    assert (doc['IngestMessagesAccepted'], doc['IngestMessagesRejected'],
            doc['IngestMessagesRetried']) == (1, 1, 0)
    assert 'messageId' not in doc  # the batch's line, not one message's


BUCKET = 'cars-logs-test'


def test_an_import_with_refused_rows_is_a_warning_with_bucket_and_key(
        lambda_logs, sqlite_store, monkeypatch, capsys):
    monkeypatch.setenv('CARS_BUCKET', BUCKET)
    key = 'imports/my batch.csv'  # S3 sends it encoded: imports/my+batch.csv
    with mock_aws():
        import boto3
        s3 = boto3.client('s3', region_name='us-east-1')
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=key, Body=b'make,model,year\nFord,Focus,2012\n'
                      b'Ford,Model T,1700\n')
        event = {'version': '0', 'id': str(uuid.uuid4()), 'detail-type': 'Object Created',
                 'source': 'aws.s3', 'account': '123456789012', 'time': '2024-01-01T00:00:00Z',
                 'region': 'us-east-1', 'resources': [],
                 'detail': {'bucket': {'name': BUCKET},
                            'object': {'key': 'imports/my+batch.csv', 'size': 1},
                            'reason': 'PutObject'}}
        invoke(app_module.import_upload, event)

    (line,) = lambda_logs.by('cars.automation')
    assert line['level'] == 'WARNING'
    assert (line['s3Bucket'], line['s3Key']) == (BUCKET, key)
    (doc,) = emf(capsys.readouterr().out)
    assert (doc['ImportRowsWritten'], doc['ImportRowsRefused']) == (1, 1)


def stream_record(event_id, new_image):
    return {'eventID': event_id, 'eventName': 'INSERT', 'eventVersion': '1.1',
            'eventSource': 'aws:dynamodb', 'awsRegion': 'us-east-1',
            'dynamodb': {'Keys': {'pk': {'S': 'CAR'}, 'sk': {'S': '1234'}},
                         'NewImage': new_image, 'ApproximateCreationDateTime': time.time(),
                         'SequenceNumber': '1', 'SizeBytes': 1,
                         'StreamViewType': 'NEW_AND_OLD_IMAGES'},
            'eventSourceARN': 'arn:aws:dynamodb:us-east-1:123456789012:table/cars/stream/x'}


def test_a_failing_stream_record_is_logged_with_its_event_id_and_stack(lambda_logs, monkeypatch):
    from chalicelib.store.dynamodb import to_item
    good = to_item(dict(COROLLA, id='1234', version=1, rev='r', created_at='t',
                        updated_at='t'))
    broken = {'pk': {'S': 'CAR'}, 'sk': {'S': '1234'}}  # a car item without its fields
    with mock_aws():
        import boto3
        arn = boto3.client('sns', region_name='us-east-1').create_topic(Name='t')['TopicArn']
        monkeypatch.setenv('CARS_EVENTS_TOPIC_ARN', arn)
        with pytest.raises(Exception):
            invoke(app_module.publish_changes, {'Records': [
                stream_record('event-good', good), stream_record('event-broken', broken)]})

    (line,) = lambda_logs.by('cars.ops')
    assert line['level'] == 'ERROR'
    assert line['eventId'] == 'event-broken'
    assert line['stackTrace'] and line['errorType']


def test_metrics_stay_off_outside_lambda_unless_asked(lambda_logs, sqlite_store, monkeypatch,
                                                      capsys):
    monkeypatch.delenv('CARS_METRICS')
    call('POST', CARS, CARS, body=COROLLA)
    assert emf(capsys.readouterr().out) == []


def test_local_runs_log_readable_text_with_the_ids():
    script = (
        'import logging\n'
        'from chalicelib import observability\n'
        'observability.configure_local_logging()\n'
        'observability.bind(carId="1234")\n'
        'logging.getLogger("cars.http").warning("store unavailable: locked")\n'
        'logging.getLogger("cars.http").info("shown too")\n')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         check=True, cwd=app_module.__file__.rsplit('/', 1)[0])
    lines = out.stderr.splitlines()
    assert lines[0].endswith('WARNING cars.http: store unavailable: locked [carId=1234]')
    assert lines[1].endswith('INFO cars.http: shown too [carId=1234]')
    assert not lines[0].startswith('{')


SSM_TOKENS = ('token-a-5e0c-never-logged', 'token-b-91d7-never-logged')


def test_at_debug_the_sdk_never_logs_the_decrypted_tokens(lambda_debug_logs, monkeypatch,
                                                          capsys):
    """ApplicationLogLevel=DEBUG sets the root logger to DEBUG; botocore's response
    logging would then write the SSM parameter's decrypted value into the authorizer's
    log. The SDK's loggers stay at WARNING (chalicelib/observability.py); the app's
    DEBUG lines still appear."""
    from chalicelib.http import auth
    lambda_logs = lambda_debug_logs
    assert logging.getLogger().level == logging.DEBUG
    monkeypatch.delenv('CARS_AUTH_TOKENS', raising=False)
    monkeypatch.setenv('CARS_AUTH_SSM_PARAMETER', '/cars/test/write-tokens')
    auth.clear_cache()
    try:
        with mock_aws():
            import boto3
            boto3.client('ssm', region_name='us-east-1').put_parameter(
                Name='/cars/test/write-tokens', Type='SecureString',
                Value=','.join(SSM_TOKENS))
            logging.getLogger('cars.auth').debug('app debug line before the fetch')
            assert auth.tokens() == list(SSM_TOKENS)
    finally:
        auth.clear_cache()

    lines = lambda_logs.lines()
    assert [l['message'] for l in lines if l['logger'] == 'cars.auth'] == [
        'app debug line before the fetch']
    assert all(l['level'] == 'WARNING' or not l['logger'].startswith(
        ('botocore', 'boto3', 'urllib3', 's3transfer')) for l in lines)
    everything = lambda_logs.text() + ''.join(capsys.readouterr())
    for secret in SSM_TOKENS:
        assert secret not in everything
    for name in ('botocore', 'boto3', 'urllib3', 's3transfer'):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
