"""The deployment package run as Lambda runs it, each function in a sandbox, and what it holds.

Each function's settings come from the dev stage's translated template. It is called
from the unpacked package by tests/lambda_sandbox_child.py, in a process that can import
only the package and the SDK the managed runtime ships, with events shaped as AWS
documents them, against DynamoDB Local and moto's server.
"""
import base64
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from urllib.parse import quote_plus

import pytest

from dynamodb_local import stream_records
from local_aws import LocalAws

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, 'tests')
RUNTIME_REQUIREMENTS = os.path.join(HERE, 'lambda-runtime-requirements.txt')
CHILD = os.path.join(HERE, 'lambda_sandbox_child.py')
REGION = 'us-east-1'
ACCOUNT = '123456789012'
TOKEN = 'sandbox-token-' + uuid.uuid4().hex
STAGE = 'dev'
API_STAGE = 'api'
COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}

# Paths that exist for development only and must never ship in the package.
DEV_ONLY = (
    re.compile(r'^(tests|bench|deploy|docs|node_modules|out|\.chalice|\.venv)/'),
    re.compile(r'(^|/)(conftest|devserver|local_server)\.py$'),
    re.compile(r'(^|/)(devserver|local_server)/'),
    re.compile(r'^(Makefile|requirements-dev\.txt|package(-lock)?\.json|pytest\.ini)$'),
    re.compile(r'\.db(-wal|-shm)?$'),
)
# The runtime provides the SDK; a copy in the package would shadow it.
SDK = ('boto3', 'botocore', 's3transfer')
ARCH_PLATFORM = {'arm64': 'aarch64', 'x86_64': 'x86_64'}


# --- building the package and the runtime ---------------------------------------------

@pytest.fixture(scope='module')
def package(packaged_stages):
    """(translated template, path of deployment.zip) for the dev stage."""
    packaged = packaged_stages[STAGE]
    return packaged.cfn, str(packaged.zip_path)


def functions(template):
    """{logical id: properties} of every AWS::Lambda::Function in the template."""
    return {name: r['Properties'] for name, r in template['Resources'].items()
            if r['Type'] == 'AWS::Lambda::Function'}


def the_runtime(template):
    """The one (Runtime, architecture) every function of the stage uses."""
    kinds = {(p['Runtime'], (p.get('Architectures') or ['x86_64'])[0])
             for p in functions(template).values()}
    assert len(kinds) == 1, 'functions with different runtimes: %s' % kinds
    return kinds.pop()


def function_named(template, handler):
    """The properties of the function whose Handler is `handler` (e.g. app.import_upload)."""
    [props] = [p for p in functions(template).values() if p['Handler'] == handler]
    return props


def base_interpreter(runtime):
    """A python of the runtime's version (python3.13 -> 3.13) to build the sandbox venv from."""
    wanted = runtime.replace('python', '')
    if '%d.%d' % sys.version_info[:2] == wanted:
        return getattr(sys, '_base_executable', None) or sys.executable
    found = shutil.which('python' + wanted)
    if not found:
        pytest.fail('no %s interpreter on this machine to run the %s package'
                    % ('python' + wanted, runtime))
    return found


@pytest.fixture(scope='module')
def runtime_python(package):
    """The python of a venv holding only the runtime's SDK, cached under out/."""
    runtime, _ = the_runtime(package[0])
    with open(RUNTIME_REQUIREMENTS, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    venv = os.path.join(ROOT, 'out', 'lambda-runtime', '%s-%s' % (runtime, digest))
    python = os.path.join(venv, 'bin', 'python')
    if not os.path.exists(os.path.join(venv, '.complete')):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([base_interpreter(runtime), '-m', 'venv', venv], check=True, timeout=300)
        subprocess.run([python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
                        '-r', RUNTIME_REQUIREMENTS], check=True, timeout=600)
        open(os.path.join(venv, '.complete'), 'w').close()
    return python


def wheel_tags(zip_path):
    """{dist-info directory: [Tag values]} of every distribution in the zip."""
    tags = {}
    with zipfile.ZipFile(zip_path) as z:
        for name in z.namelist():
            if re.match(r'^[^/]+\.dist-info/WHEEL$', name):
                text = z.read(name).decode('utf-8')
                tags[name.split('/')[0]] = re.findall(r'^Tag:\s*(\S+)\s*$', text, re.M)
    return tags


def compiled(tags):
    return {dist: ts for dist, ts in tags.items()
            if any(not t.endswith('-any') for t in ts)}


@pytest.fixture(scope='module')
def task_root(package, runtime_python, tmp_path_factory):
    """The package unpacked as Lambda unpacks it into /var/task."""
    template, zip_path = package
    task = str(tmp_path_factory.mktemp('var-task'))
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(task)
    _, arch = the_runtime(template)
    # This machine may not run the package's compiled extensions (an arm64
    # package on x86_64): they are checked by their wheel tags, and run as the
    # same version built for this machine.
    if ARCH_PLATFORM[arch] != platform.machine():
        for dist in compiled(wheel_tags(zip_path)):
            _swap_for_host_build(task, dist, runtime_python, tmp_path_factory)
    return task


def _swap_for_host_build(task, dist, python, tmp_path_factory):
    """Replace a compiled distribution by the same version built for this machine."""
    name, version = re.match(r'^(.+?)-([^-]+)\.dist-info$', dist).groups()
    with open(os.path.join(task, dist, 'RECORD')) as f:
        for line in f:
            path = line.rsplit(',', 2)[0]
            if path and os.path.exists(os.path.join(task, path)):
                os.remove(os.path.join(task, path))
    wheels = os.path.join(ROOT, 'out', 'lambda-runtime', 'host-wheels')
    subprocess.run([python, '-m', 'pip', 'download', '-q', '--disable-pip-version-check',
                    '--no-deps', '--only-binary=:all:', '-d', wheels,
                    '%s==%s' % (name, version)], check=True, timeout=300)
    [wheel] = [w for w in glob.glob(os.path.join(wheels, '%s-%s-*.whl'
                                                 % (name.replace('-', '_'), version)))
               if platform.machine() in w]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(task)


# --- the stores: DynamoDB Local and moto's server ------------------------------------------

@pytest.fixture(scope='module')
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    from dynamodb_local import free_port
    port = free_port()
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    try:
        yield 'http://127.0.0.1:%d' % port
    finally:
        server.stop()


def aws(service, endpoint):
    import boto3
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id='testing', aws_secret_access_key='testing')


@pytest.fixture
def with_stream():
    """Asked for by a test that reads the table's stream (see `resources`)."""


@pytest.fixture
def resources(request, dynamodb_endpoint, moto_endpoint):
    """Fresh stand-ins for the stage's resources: table, bucket, topic (with a queue
    subscribed to read what was published) and the token parameter. The table's stream
    is on only for tests that ask `with_stream`: DynamoDB Local keeps stream records of
    deleted tables too and slows down for the rest of the session (tests/stores.py)."""
    from stores import new_dynamodb_table
    ddb, table = new_dynamodb_table(dynamodb_endpoint,
                                    stream='with_stream' in request.fixturenames)
    suffix = uuid.uuid4().hex[:8]
    s3, sns, sqs, ssm = (aws(s, moto_endpoint) for s in ('s3', 'sns', 'sqs', 'ssm'))
    bucket = 'cars-sandbox-' + suffix
    s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name='cars-changes-' + suffix)['TopicArn']
    tap = sqs.create_queue(QueueName='tap-' + suffix)['QueueUrl']
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=['QueueArn'])[
        'Attributes']['QueueArn']
    sns.subscribe(TopicArn=topic, Protocol='sqs', Endpoint=tap_arn,
                  Attributes={'RawMessageDelivery': 'true'})

    def published():
        got = []
        while True:
            msgs = sqs.receive_message(QueueUrl=tap, MaxNumberOfMessages=10).get('Messages', [])
            if not msgs:
                return got
            got.extend(json.loads(m['Body']) for m in msgs)
            sqs.delete_message_batch(QueueUrl=tap, Entries=[
                {'Id': str(i), 'ReceiptHandle': m['ReceiptHandle']} for i, m in enumerate(msgs)])

    yield {'table': table, 'bucket': bucket, 'topic': topic, 's3': s3, 'ssm': ssm,
           'published': published, 'ddb': ddb, 'dynamodb_endpoint': dynamodb_endpoint,
           'moto_endpoint': moto_endpoint}
    ddb.delete_table(TableName=table)


def resolve(value, refs, parameters):
    if isinstance(value, dict) and set(value) == {'Ref'}:
        name = value['Ref']
        return refs[name] if name in refs else parameters[name].get('Default', '')
    assert isinstance(value, str), 'an environment value the sandbox cannot resolve: %r' % value
    return value


def lambda_env(template, props, res, task):
    """The environment Lambda gives the function, with the fakes in place of the resources."""
    refs = {'CarsTable': res['table'], 'CarsBucket': res['bucket'],
            'CarsChangesTopic': res['topic']}
    variables = {name: resolve(value, refs, template.get('Parameters', {}))
                 for name, value in props.get('Environment', {}).get('Variables', {}).items()}
    name = props.get('FunctionName') or 'cars-%s-%s' % (STAGE, props['Handler'].split('.')[-1])
    env = {
        'PATH': '/usr/local/bin:/usr/bin:/bin', 'LANG': 'en_US.UTF-8', 'TZ': ':UTC',
        'LAMBDA_TASK_ROOT': task, 'AWS_EXECUTION_ENV': 'AWS_Lambda_' + props['Runtime'],
        'AWS_LAMBDA_FUNCTION_NAME': name, 'AWS_LAMBDA_FUNCTION_VERSION': '$LATEST',
        'AWS_LAMBDA_FUNCTION_MEMORY_SIZE': str(props.get('MemorySize', 128)),
        'AWS_REGION': REGION, 'AWS_DEFAULT_REGION': REGION,
        'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
        'AWS_SESSION_TOKEN': 'testing',
        'AWS_ENDPOINT_URL_DYNAMODB': res['dynamodb_endpoint'],
        'AWS_ENDPOINT_URL_S3': res['moto_endpoint'],
        'AWS_ENDPOINT_URL_SNS': res['moto_endpoint'],
        'AWS_ENDPOINT_URL_SSM': res['moto_endpoint'],
    }
    env.update(variables)
    return env


@pytest.fixture
def invoke(package, task_root, runtime_python, resources, tmp_path):
    """invoke(handler, *events) -> (results, child report), each call in a new process."""
    template, _ = package
    resources['ssm'].put_parameter(
        Name=function_named(template, 'app.app')['Environment']['Variables'][
            'CARS_AUTH_SSM_PARAMETER'], Value=TOKEN, Type='SecureString', Overwrite=True)

    def call(handler, *events):
        props = function_named(template, handler)
        request, result = tmp_path / 'request.json', tmp_path / 'result.json'
        request.write_text(json.dumps({'handler': handler, 'events': list(events),
                                       'memory': props.get('MemorySize', 128),
                                       'timeout': props.get('Timeout', 3)}))
        # Copied out of the repository, so not even the script's own directory is the repo's.
        child = shutil.copy(CHILD, tmp_path / 'bootstrap.py')
        done = subprocess.run([runtime_python, '-I', str(child), str(request), str(result)],
                              cwd=task_root, env=lambda_env(template, props, resources, task_root),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, 'the sandbox failed:\n%s\n%s' % (done.stdout, done.stderr)
        report = json.loads(result.read_text())
        for outcome in report['results']:
            assert 'errorType' not in outcome, outcome.get('stackTrace')
        return [o['returned'] for o in report['results']], report
    return call


# --- events, shaped as AWS documents them ------------------------------------------------------

def rest_event(method, path, resource, path_parameters=None, body=None, headers=None,
               query=None, authorized=False):
    """An API Gateway REST API (payload 1.0) proxy event, on the API's own domain: the
    client's path carries the stage (requestContext.path), the routed `path` does not."""
    headers = dict({'Host': 'abcdef1234.execute-api.us-east-1.amazonaws.com',
                    'Accept': 'application/json', 'User-Agent': 'curl/8.5.0',
                    'X-Forwarded-For': '203.0.113.7', 'X-Forwarded-Port': '443',
                    'X-Forwarded-Proto': 'https',
                    'X-Amzn-Trace-Id': 'Root=1-67891233-abcdef012345678912345678'},
                   **(headers or {}))
    context = {
        'resourceId': 'a1b2c3', 'resourcePath': resource, 'httpMethod': method,
        'extendedRequestId': 'Xyz1AbCdIAMEcQ=', 'requestTime': '01/Dec/2026:07:00:00 +0000',
        'path': '/%s%s' % (API_STAGE, path), 'accountId': ACCOUNT, 'protocol': 'HTTP/1.1',
        'stage': API_STAGE, 'domainPrefix': 'abcdef1234', 'requestTimeEpoch': 1796108400000,
        'requestId': str(uuid.uuid4()), 'apiId': 'abcdef1234',
        'domainName': 'abcdef1234.execute-api.us-east-1.amazonaws.com',
        'identity': {'cognitoIdentityPoolId': None, 'accountId': None, 'cognitoIdentityId': None,
                     'caller': None, 'sourceIp': '203.0.113.7', 'principalOrgId': None,
                     'accessKey': None, 'cognitoAuthenticationType': None,
                     'cognitoAuthenticationProvider': None, 'userArn': None,
                     'userAgent': 'curl/8.5.0', 'user': None},
    }
    if authorized:
        # What API Gateway adds after the token authorizer allowed the request.
        context['authorizer'] = {'principalId': 'cars-writer', 'integrationLatency': 3}
    return {
        'resource': resource, 'path': path, 'httpMethod': method, 'headers': headers,
        'multiValueHeaders': {k: [v] for k, v in headers.items()},
        'queryStringParameters': query or None,
        'multiValueQueryStringParameters': {k: [v] for k, v in query.items()} if query else None,
        'pathParameters': path_parameters, 'stageVariables': None, 'requestContext': context,
        'body': body, 'isBase64Encoded': False,
    }


def token_event(token, method='POST', path='api/v1/cars'):
    return {'type': 'TOKEN', 'authorizationToken': token,
            'methodArn': 'arn:aws:execute-api:%s:%s:abcdef1234/%s/%s/%s'
                         % (REGION, ACCOUNT, API_STAGE, method, path)}


def sqs_event(*bodies):
    return {'Records': [{
        'messageId': str(uuid.uuid4()), 'receiptHandle': 'AQEB' + uuid.uuid4().hex,
        'body': body, 'md5OfBody': hashlib.md5(body.encode()).hexdigest(),
        'attributes': {'ApproximateReceiveCount': '1', 'SentTimestamp': '1796108400000',
                       'SenderId': 'AIDAIENQZJOLO23YVJ4VO',
                       'ApproximateFirstReceiveTimestamp': '1796108400001'},
        'messageAttributes': {}, 'eventSource': 'aws:sqs',
        'eventSourceARN': 'arn:aws:sqs:%s:%s:cars-ingest' % (REGION, ACCOUNT),
        'awsRegion': REGION} for body in bodies]}


def object_created(bucket, key, size):
    """S3's EventBridge "Object Created" event; the key URL-encoded as S3 sends it."""
    return {
        'version': '0', 'id': str(uuid.uuid4()), 'detail-type': 'Object Created',
        'source': 'aws.s3', 'account': ACCOUNT, 'time': '2026-12-01T07:00:00Z',
        'region': REGION, 'resources': ['arn:aws:s3:::%s' % bucket],
        'detail': {'version': '0', 'bucket': {'name': bucket},
                   'object': {'key': quote_plus(key, safe='/'), 'size': size,
                              'etag': 'b1946ac92492d2347c6235b4d2611184',
                              'sequencer': '00617F08299329D189'},
                   'request-id': 'N4N7GDK58NMKJ12R', 'requester': ACCOUNT,
                   'source-ip-address': '203.0.113.7', 'reason': 'PutObject'},
    }


def scheduled_event():
    return {'version': '0', 'id': str(uuid.uuid4()), 'detail-type': 'Scheduled Event',
            'source': 'aws.events', 'account': ACCOUNT, 'time': '2026-12-01T07:00:00Z',
            'region': REGION,
            'resources': ['arn:aws:events:%s:%s:rule/cars-dev-scheduled_export'
                          % (REGION, ACCOUNT)], 'detail': {}}


def stream_event(res):
    """The table's stream records as Lambda delivers them to the function."""
    return {'Records': stream_records(res['dynamodb_endpoint'], res['table'], REGION)}


def body_of(response):
    body = response['body']
    if response.get('isBase64Encoded'):
        body = base64.b64decode(body).decode('utf-8')
    return json.loads(body) if body else None


# --- the package ------------------------------------------------------------------------------

def test_compiled_wheels_in_the_package_match_the_runtime_and_architecture(package):
    template, zip_path = package
    runtime, arch = the_runtime(template)
    python_tag = 'cp' + runtime.replace('python', '').replace('.', '')
    tags = compiled(wheel_tags(zip_path))
    assert tags, 'expected at least one compiled dependency (msgspec) in the package'
    for dist, ts in tags.items():
        for tag in ts:
            interpreter, _, plat = tag.split('-')
            assert interpreter == python_tag, '%s is built for %s, not %s' % (dist, tag, runtime)
            assert re.match(r'^manylinux[0-9_]*_%s$' % ARCH_PLATFORM[arch], plat), \
                '%s is built for %s, not %s Linux' % (dist, tag, arch)
    with zipfile.ZipFile(zip_path) as z:
        extensions = [n for n in z.namelist() if n.endswith('.so')]
    assert extensions and all('-%s-linux-gnu' % ARCH_PLATFORM[arch] in n or '.abi3.' in n
                              for n in extensions), extensions


def test_the_package_carries_no_sdk_and_no_development_code(package):
    _, zip_path = package
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    tops = {n.split('/')[0] for n in names}
    assert not [t for t in tops if t.split('-')[0] in SDK or t in SDK]
    dev_only = [n for n in names if any(p.search(n) for p in DEV_ONLY)]
    assert dev_only == []
    assert {'app.py', 'chalicelib/__init__.py', 'chalice/app.py'} <= set(names)


def test_the_package_carries_no_local_server(package):
    _, zip_path = package
    with zipfile.ZipFile(zip_path) as z:
        assert [n for n in z.namelist() if re.search(r'(local_server|devserver)', n)] == []


# --- each function, called as Lambda calls it -------------------------------------------------

def test_the_sandbox_sees_only_the_package_and_the_runtime_sdk(invoke, task_root,
                                                              runtime_python):
    [health], report = invoke('app.app', rest_event('GET', '/api/v1/health', '/api/v1/health'))
    assert health['statusCode'] == 200
    runtime_venv = os.path.dirname(os.path.dirname(runtime_python))
    # Only the runtime venv (cached under out/) may lie inside the repository.
    assert not [p for p in report['sys_path']
                if p.startswith(ROOT) and not p.startswith(runtime_venv)]
    assert report['sys_path'][0] == task_root
    for name in ('app', 'chalicelib', 'chalice'):
        assert report['modules'][name].startswith(task_root), report['modules']
    with open(RUNTIME_REQUIREMENTS) as f:
        pinned = re.search(r'^boto3==(\S+)', f.read(), re.M).group(1)
    assert report['boto3_version'] == pinned
    assert not report['modules']['boto3'].startswith(task_root)


def test_the_api_function_answers_rest_api_events(invoke):
    create = rest_event('POST', '/api/v1/cars', '/api/v1/cars', body=json.dumps(COROLLA),
                        headers={'Content-Type': 'application/json',
                                 'Authorization': 'Bearer ' + TOKEN}, authorized=True)
    health, created = invoke(
        'app.app', rest_event('GET', '/api/v1/health', '/api/v1/health'), create)[0]
    assert (health['statusCode'], body_of(health)) == (200, {'status': 'ok',
                                                             'store': 'dynamodb'})
    assert created['statusCode'] == 201, created
    car = body_of(created)
    assert {k: car[k] for k in COROLLA} == COROLLA
    headers = created.get('multiValueHeaders') or {}
    location = (created.get('headers') or {}).get('Location') or headers.get('Location', [''])[0]
    # The client's URL carries the stage on API Gateway's own domain.
    assert location == '/%s/api/v1/cars/%s' % (API_STAGE, car['id'])

    read, listed, missing = invoke(
        'app.app',
        rest_event('GET', '/api/v1/cars/%s' % car['id'], '/api/v1/cars/{car_id}',
                   path_parameters={'car_id': car['id']}),
        rest_event('GET', '/api/v1/cars', '/api/v1/cars', query={'make': 'toyota'}),
        rest_event('GET', '/api/v1/cars/9999', '/api/v1/cars/{car_id}',
                   path_parameters={'car_id': '9999'}))[0]
    assert read['statusCode'] == 200 and body_of(read)['id'] == car['id']
    assert listed['statusCode'] == 200
    assert [c['id'] for c in body_of(listed)['cars']] == [car['id']]
    assert missing['statusCode'] == 404
    assert body_of(missing)['status'] == 404


def test_the_api_function_refuses_a_write_without_a_token(invoke):
    [refused], _ = invoke('app.app', rest_event(
        'POST', '/api/v1/cars', '/api/v1/cars', body=json.dumps(COROLLA),
        headers={'Content-Type': 'application/json'}))
    assert refused['statusCode'] == 401
    assert body_of(refused)['status'] == 401


def test_the_authorizer_allows_the_token_from_ssm_and_denies_another(invoke):
    allowed, denied = invoke('app.token_authorizer', token_event('Bearer ' + TOKEN),
                             token_event('Bearer not-the-token'))[0]
    assert allowed['principalId'] == 'cars-writer'
    [allow] = allowed['policyDocument']['Statement']
    assert allow['Effect'] == 'Allow' and allow['Action'] == 'execute-api:Invoke'
    assert denied['principalId'] != 'cars-writer'
    assert all(s['Effect'] != 'Allow' or not s.get('Resource')
               for s in denied['policyDocument']['Statement'])


def test_the_ingest_function_reports_only_the_bad_message(invoke):
    event = sqs_event(json.dumps(dict(COROLLA, id='4321')), '{"make": "Ford",')
    [outcome], _ = invoke('app.ingest_queue', event)
    assert outcome == {'batchItemFailures': [
        {'itemIdentifier': event['Records'][1]['messageId']}]}
    [read], _ = invoke('app.app', rest_event('GET', '/api/v1/cars/4321', '/api/v1/cars/{car_id}',
                                             path_parameters={'car_id': '4321'}))
    assert read['statusCode'] == 200


def test_the_import_function_decodes_the_key_and_writes_rows_and_report(invoke, resources):
    key = 'imports/my cars é.csv'
    body = 'id,make,model,year\n5678,Škoda,Octavia,2019\n,Kia,Rio,2012\n,Ford,,1700\n'
    data = body.encode('utf-8')
    resources['s3'].put_object(Bucket=resources['bucket'], Key=key, Body=data)
    [report], _ = invoke('app.import_upload', object_created(resources['bucket'], key, len(data)))
    assert (report['file'], report['status']) == (key, 'imported with errors')
    assert (report['rows'], report['written'], report['invalid']) == (3, 2, 1)
    stored = json.loads(resources['s3'].get_object(
        Bucket=resources['bucket'], Key='reports/my cars é.csv.json')['Body'].read())
    assert stored['written'] == 2
    assert [(e['line'], e['field']) for e in stored['errors']] == [(4, 'model'), (4, 'year')]
    [read], _ = invoke('app.app', rest_event('GET', '/api/v1/cars/5678', '/api/v1/cars/{car_id}',
                                             path_parameters={'car_id': '5678'}))
    assert body_of(read)['make'] == 'Škoda'


def test_the_stream_function_publishes_inserts_updates_and_removes(with_stream, invoke,
                                                                    resources):
    auth = {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + TOKEN}
    created, = invoke('app.app', rest_event('POST', '/api/v1/cars', '/api/v1/cars',
                                            body=json.dumps(COROLLA), headers=auth,
                                            authorized=True))[0]
    car_id = body_of(created)['id']
    one = {'car_id': car_id}
    invoke('app.app',
           rest_event('PATCH', '/api/v1/cars/' + car_id, '/api/v1/cars/{car_id}', one,
                      body=json.dumps({'color': 'red'}), headers=auth, authorized=True),
           rest_event('DELETE', '/api/v1/cars/' + car_id, '/api/v1/cars/{car_id}', one,
                      headers=auth, authorized=True))
    event = stream_event(resources)
    cars_only = [r for r in event['Records'] if r['dynamodb']['Keys']['pk']['S'] == 'CAR']
    assert [r['eventName'] for r in cars_only] == ['INSERT', 'MODIFY', 'REMOVE']

    [outcome], _ = invoke('app.publish_changes', event)

    assert outcome == {'batchItemFailures': []}
    published = resources['published']()
    assert [(e['type'], e['car_id']) for e in published] == [
        ('car.created', car_id), ('car.updated', car_id), ('car.deleted', car_id)]
    assert [e['id'] for e in published] == [r['eventID'] for r in cars_only]


def test_the_scheduled_export_writes_the_inventory(invoke, resources):
    invoke('app.ingest_queue', sqs_event(json.dumps(dict(COROLLA, id='2468'))))
    [outcome], _ = invoke('app.scheduled_export', scheduled_event())
    assert outcome['cars'] == 1
    exported = resources['s3'].get_object(Bucket=resources['bucket'],
                                          Key=outcome['keys']['jsonl'])['Body'].read()
    assert [json.loads(line)['id'] for line in exported.decode().splitlines()] == ['2468']
    assert resources['s3'].head_object(Bucket=resources['bucket'], Key=outcome['keys']['csv'])


# --- the pre-traffic hook, against a local Lambda and CodeDeploy ---------------------------

API_VERSION = 'arn:aws:lambda:%s:%s:function:cars-%s-APIHandler:2' % (REGION, ACCOUNT, STAGE)
AUTHORIZER_VERSION = 'arn:aws:lambda:%s:%s:function:cars-%s-TokenAuthorizer:2' % (
    REGION, ACCOUNT, STAGE)


@pytest.fixture
def sandbox(package, task_root, runtime_python, resources, tmp_path):
    """sandbox(handler, events, **env) -> the child's report; each call in a new process,
    with files of its own, so that calls may nest (the hook's invokes run while it waits).
    The CARS_HOOK_* settings the template gives are left out: they name versions the
    stack publishes (the test passes its own)."""
    template, _ = package
    resources['ssm'].put_parameter(
        Name=function_named(template, 'app.app')['Environment']['Variables'][
            'CARS_AUTH_SSM_PARAMETER'], Value=TOKEN, Type='SecureString', Overwrite=True)

    def call(handler, events, **extra):
        props = function_named(template, handler)
        variables = {k: v for k, v in props.get('Environment', {}).get('Variables', {}).items()
                     if not k.startswith('CARS_HOOK_')}
        env = lambda_env(template, dict(props, Environment={'Variables': variables}),
                         resources, task_root)
        env.update(extra)
        name = uuid.uuid4().hex
        request, result = tmp_path / ('%s-request.json' % name), tmp_path / ('%s.json' % name)
        request.write_text(json.dumps({'handler': handler, 'events': list(events),
                                       'memory': props.get('MemorySize', 128),
                                       'timeout': props.get('Timeout', 3)}))
        child = tmp_path / 'bootstrap.py'
        if not child.exists():
            shutil.copy(CHILD, child)
        done = subprocess.run([runtime_python, '-I', str(child), str(request), str(result)],
                              cwd=task_root, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, 'the sandbox failed:\n%s\n%s' % (done.stdout, done.stderr)
        return json.loads(result.read_text())
    return call


def sandbox_functions(sandbox, functions):
    """LocalAws's `invoke`: run the version's handler from the package, in the sandbox."""
    def invoke(arn, event):
        if arn not in functions:
            return None
        [outcome] = sandbox(functions[arn], [event])['results']
        if 'errorType' in outcome:
            return {k: outcome[k] for k in ('errorType', 'errorMessage')}, 'Unhandled'
        return outcome['returned'], None
    return invoke


def test_the_pre_traffic_hook_checks_the_new_version_and_reports_succeeded(sandbox, resources):
    functions = {API_VERSION: 'app.app', AUTHORIZER_VERSION: 'app.token_authorizer'}
    with LocalAws(sandbox_functions(sandbox, functions)) as local:
        report = sandbox('app.pre_traffic_check', [
            {'DeploymentId': 'd-SANDBOX01', 'LifecycleEventHookExecutionId': 'hook-1'}],
            CARS_HOOK_TARGET_API=API_VERSION, CARS_HOOK_TARGET_AUTHORIZER=AUTHORIZER_VERSION,
            CARS_HOOK_TOKENS_ON='true',
            AWS_ENDPOINT_URL_LAMBDA=local.endpoint, AWS_ENDPOINT_URL_CODEDEPLOY=local.endpoint)
    [outcome] = report['results']
    assert 'errorType' not in outcome, outcome.get('stackTrace')
    assert outcome['returned'] == {'status': 'Succeeded', 'failures': []}
    assert local.statuses == [{'deploymentId': 'd-SANDBOX01',
                               'lifecycleEventHookExecutionId': 'hook-1',
                               'status': 'Succeeded'}]
    assert [(arn, e.get('httpMethod') or e.get('type')) for arn, e in local.invoked] == [
        (API_VERSION, 'GET'), (API_VERSION, 'GET'), (API_VERSION, 'GET'),
        (API_VERSION, 'POST'), (AUTHORIZER_VERSION, 'TOKEN')]
    # Nothing was written: the table holds no car.
    items = resources['ddb'].scan(TableName=resources['table'])['Items']
    assert [i for i in items if i['pk']['S'] == 'CAR'] == []


def test_the_pre_traffic_hook_reports_failed_when_the_new_version_is_broken(sandbox):
    # The "new version" here is the authorizer's function answering API events: no
    # proxy responses, so every API check fails, and the hook says Failed.
    functions = {API_VERSION: 'app.token_authorizer'}
    with LocalAws(sandbox_functions(sandbox, functions)) as local:
        report = sandbox('app.pre_traffic_check', [
            {'DeploymentId': 'd-SANDBOX02', 'LifecycleEventHookExecutionId': 'hook-2'}],
            CARS_HOOK_TARGET_API=API_VERSION, CARS_HOOK_TOKENS_ON='true',
            AWS_ENDPOINT_URL_LAMBDA=local.endpoint, AWS_ENDPOINT_URL_CODEDEPLOY=local.endpoint)
    [outcome] = report['results']
    assert outcome['returned']['status'] == 'Failed'
    assert len(outcome['returned']['failures']) == 4
    assert [s['status'] for s in local.statuses] == ['Failed']
