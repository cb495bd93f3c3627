"""The deployment template: what `make package` writes for each stage.

The contract tests are re-run here against a DynamoDB Local table created from
the template's own table definition, so the deployed table and the code cannot
drift apart.
"""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import ids  # noqa: E402
import resources  # noqa: E402

from chalicelib import store as store_module  # noqa: E402
from chalicelib.store import table  # noqa: E402
from stores import table_fixture  # noqa: E402
# Every contract test, collected again in this module with the fixtures below.
from test_api_contract import *  # noqa: E402,F401,F403


def template_table_properties(stage='prod'):
    return resources.build(stage, paths=[])['Resources'][ids.TABLE]['Properties']


@pytest.fixture
def dynamodb_table(dynamodb_endpoint, monkeypatch):
    """A table made from the prod template's CarsTable properties."""
    yield from table_fixture(dynamodb_endpoint, monkeypatch,
                             properties=template_table_properties())


@pytest.fixture
def store_kind(request, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    request.getfixturevalue('dynamodb_table')
    store_module.reset()
    return 'dynamodb'


@pytest.fixture(scope='module')
def packaged(packaged_stages):
    """{stage: SAM template}, both stages packaged offline (tests/stage_packages.py)."""
    return {stage: p.sam for stage, p in packaged_stages.items()}


def test_the_template_table_is_the_table_json_definition_plus_stage_protection():
    for stage, protected in (('dev', False), ('prod', True)):
        built = resources.build(stage, paths=[])['Resources'][ids.TABLE]
        props = dict(built['Properties'])
        assert props.pop('DeletionProtectionEnabled') is protected
        props.pop('Tags')
        assert props == table.cloudformation_properties()
        assert built['DeletionPolicy'] == ('Retain' if protected else 'Delete')
        assert built['UpdateReplacePolicy'] == built['DeletionPolicy']


def test_table_json_has_the_settings_the_deployment_promises():
    props = table.cloudformation_properties()
    assert props['BillingMode'] == 'PAY_PER_REQUEST'
    assert props['PointInTimeRecoverySpecification'] == {'PointInTimeRecoveryEnabled': True}
    assert props['SSESpecification'] == {'SSEEnabled': True}
    assert props['StreamSpecification'] == {'StreamViewType': 'NEW_AND_OLD_IMAGES'}
    assert props['TimeToLiveSpecification'] == {'AttributeName': 'expires_at', 'Enabled': True}


def test_no_chalice_placeholder_survives_packaging(packaged):
    for stage, template in packaged.items():
        text = json.dumps(template)
        for placeholder in ('cars-ingest', '123456789012', 'cars-import-bucket'):
            assert placeholder not in text, (stage, placeholder)


def test_event_sources_point_at_the_stacks_own_resources(packaged):
    res = packaged['prod']['Resources']
    sqs = res[ids.INGEST_QUEUE]['Properties']['Events'][ids.INGEST_EVENT]
    assert sqs['Properties']['Queue'] == {'Fn::Sub': '${%s.Arn}' % ids.QUEUE}
    assert sqs['Properties']['FunctionResponseTypes'] == ['ReportBatchItemFailures']
    stream = res[ids.PUBLISH_CHANGES]['Properties']['Events'][ids.PUBLISH_EVENT]
    assert stream['Properties']['Stream'] == {'Fn::GetAtt': [ids.TABLE, 'StreamArn']}
    rule = res[ids.IMPORT_UPLOAD]['Properties']['Events'][ids.IMPORT_EVENT]
    detail = rule['Properties']['Pattern']['detail']
    assert detail['bucket']['name'] == [{'Ref': ids.BUCKET}]
    assert detail['object']['key'] == [{'prefix': 'imports/'}]


def test_ingest_queue_sends_what_keeps_failing_to_the_dead_letter_queue(packaged):
    queue = packaged['prod']['Resources'][ids.QUEUE]['Properties']
    assert queue['RedrivePolicy']['deadLetterTargetArn'] == {
        'Fn::GetAtt': [resources.DEAD_LETTERS, 'Arn']}
    # docs/deployment.md: "a dead-letter queue after 5 receives".
    assert queue['RedrivePolicy']['maxReceiveCount'] == 5
    # Lambda refuses a mapping whose queue hides messages for less than the
    # function may run.
    assert queue['VisibilityTimeout'] >= packaged['prod']['Resources'][
        ids.INGEST_QUEUE]['Properties']['Timeout']


def test_bucket_is_private_encrypted_and_sends_events_to_eventbridge(packaged):
    bucket = packaged['prod']['Resources'][ids.BUCKET]['Properties']
    assert all(bucket['PublicAccessBlockConfiguration'].values())
    assert len(bucket['PublicAccessBlockConfiguration']) == 4
    assert bucket['BucketEncryption']['ServerSideEncryptionConfiguration']
    assert bucket['NotificationConfiguration']['EventBridgeConfiguration'] == {
        'EventBridgeEnabled': True}


def test_every_function_gets_the_stack_resources_but_chalice_local_does_not(packaged):
    for stage, template in packaged.items():
        env = template['Globals']['Function']['Environment']['Variables']
        assert env['CARS_TABLE'] == {'Ref': ids.TABLE}
        assert env['CARS_BUCKET'] == {'Ref': ids.BUCKET}
        assert env['CARS_EVENTS_TOPIC_ARN'] == {'Ref': ids.TOPIC}
        assert env['CARS_AUTH_SSM_PARAMETER'] == '/cars/%s/auth-tokens' % stage
        assert 'CARS_STORE' not in env
    with open(os.path.join(ROOT, '.chalice', 'config.json')) as f:
        config = json.load(f)
    # `chalice local` applies stage variables to the local process: none may
    # switch it off sqlite or turn on SSM-backed write protection.
    for stage in config['stages'].values():
        assert 'environment_variables' not in stage
    assert 'environment_variables' not in config


def test_writes_are_guarded_by_the_token_authorizer_when_deployed(packaged):
    for template in packaged.values():
        body = template['Resources'][ids.REST_API]['Properties']['DefinitionBody']
        post = body['paths']['/api/v1/cars']['post']
        assert post.get('security'), 'POST /api/v1/cars has no authorizer'
        assert ids.TOKEN_AUTHORIZER in template['Resources']


@pytest.mark.parametrize('kind,status', [
    ('MISSING_AUTHENTICATION_TOKEN', 404), ('UNAUTHORIZED', 401), ('ACCESS_DENIED', 403),
    ('THROTTLED', 429), ('DEFAULT_4XX', 400), ('DEFAULT_5XX', 500)])
def test_gateway_errors_answer_in_the_problem_format(packaged, kind, status):
    body = packaged['prod']['Resources'][ids.REST_API]['Properties']['DefinitionBody']
    response = body['x-amazon-apigateway-gateway-responses'][kind]
    assert response['statusCode'] == str(status)
    # With or without CORS headers (a condition on the CorsOrigins parameter,
    # see tests/test_translated_template.py), the body is problem+json.
    condition, with_cors, without = response['responseParameters']['Fn::If']
    for headers in (with_cors, without):
        assert headers['gatewayresponse.header.Content-Type'] == "'application/problem+json'"
    # API Gateway substitutes $context.error.messageString with a quoted string.
    text = response['responseTemplates']['application/json'].replace(
        '$context.error.messageString', '"Missing Authentication Token"')
    problem = json.loads(text)
    assert problem['status'] == status
    assert set(problem) == {'type', 'title', 'status', 'detail'}


def test_every_gateway_error_type_links_to_a_documented_problem_or_is_about_blank(packaged):
    from chalicelib.http.problems import PROBLEM_TYPES, type_uri
    documented = {type_uri(slug) for slug, _, _ in PROBLEM_TYPES} | {'about:blank'}
    body = packaged['prod']['Resources'][ids.REST_API]['Properties']['DefinitionBody']
    for kind, response in body['x-amazon-apigateway-gateway-responses'].items():
        text = response['responseTemplates']['application/json'].replace(
            '$context.error.messageString', '"message"')
        assert json.loads(text)['type'] in documented, kind


def test_unknown_methods_on_known_paths_reach_the_app_for_a_405(packaged):
    paths = packaged['prod']['Resources'][ids.REST_API]['Properties']['DefinitionBody'][
        'paths']
    for path, methods in paths.items():
        assert 'x-amazon-apigateway-any-method' in methods, path


# Stage throttling as docs/deployment.md ("What the stack holds") states it:
# dev 50 requests a second, burst 100; prod 500, burst 1000.
THROTTLING = {'dev': (50, 100), 'prod': (500, 1000)}


def test_stage_is_throttled_as_documented_and_access_logged(packaged):
    assert set(packaged) == set(THROTTLING)
    for stage, template in packaged.items():
        api = template['Resources'][ids.REST_API]['Properties']
        settings = api['MethodSettings'][0]
        assert (settings['ThrottlingRateLimit'], settings['ThrottlingBurstLimit']) == \
            THROTTLING[stage], stage
        assert api['AccessLogSetting']['DestinationArn'] == {
            'Fn::GetAtt': [resources.ACCESS_LOGS, 'Arn']}
        assert 'EndpointURL' in template['Outputs']


# --- TLS-only queues and topics, the alarm topic's key, reserved concurrency --------

TLS_ONLY = {'Bool': {'aws:SecureTransport': 'false'}}


def _policies_on(resources_, kind, target_key, logical_id):
    return [r['Properties']['PolicyDocument'] for r in resources_.values()
            if r['Type'] == kind and {'Ref': logical_id} in r['Properties'][target_key]]


def test_every_queue_and_topic_refuses_requests_not_made_over_tls(packaged):
    for stage, template in packaged.items():
        res = template['Resources']
        queues = sorted(k for k, r in res.items() if r['Type'] == 'AWS::SQS::Queue')
        assert queues == sorted([ids.QUEUE, resources.DEAD_LETTERS, ids.EVENTS_DEAD_LETTERS,
                                 ids.CHANGES_DEAD_LETTERS])
        for queue in queues:
            # One policy a queue: a second QueuePolicy would replace the first.
            document, = _policies_on(res, 'AWS::SQS::QueuePolicy', 'Queues', queue)
            deny, = [s for s in document['Statement'] if s['Effect'] == 'Deny']
            assert deny == {'Sid': 'DenyPlainHttp', 'Effect': 'Deny', 'Principal': '*',
                            'Action': 'sqs:*', 'Resource': {'Fn::GetAtt': [queue, 'Arn']},
                            'Condition': TLS_ONLY}, (stage, queue)
        topics = sorted(k for k, r in res.items() if r['Type'] == 'AWS::SNS::Topic')
        assert topics == sorted([ids.TOPIC, 'AlarmTopic'])
        for topic in topics:
            document, = _policies_on(res, 'AWS::SNS::TopicPolicy', 'Topics', topic)
            deny, = [s for s in document['Statement'] if s['Effect'] == 'Deny']
            assert deny == {'Sid': 'DenyPlainHttp', 'Effect': 'Deny', 'Principal': '*',
                            'Action': 'sns:Publish', 'Resource': {'Ref': topic},
                            'Condition': TLS_ONLY}, (stage, topic)
        # EventBridge still reaches the events dead-letter queue.
        document, = _policies_on(res, 'AWS::SQS::QueuePolicy', 'Queues',
                                 ids.EVENTS_DEAD_LETTERS)
        assert any(s['Effect'] == 'Allow' and s['Principal'] == {
            'Service': 'events.amazonaws.com'} for s in document['Statement'])


def test_the_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(packaged):
    for stage, template in packaged.items():
        res = template['Resources']
        # The events topic keeps the AWS managed SNS key: its publisher is our role.
        assert res[ids.TOPIC]['Properties']['KmsMasterKeyId'] == 'alias/aws/sns'
        # CloudWatch cannot use the AWS managed key: the alarm topic has its own.
        assert res['AlarmTopic']['Properties']['KmsMasterKeyId'] == {
            'Ref': resources.ALARM_KEY}
        key = res[resources.ALARM_KEY]
        assert key['Type'] == 'AWS::KMS::Key'
        assert key['Properties']['EnableKeyRotation'] is True
        statements = key['Properties']['KeyPolicy']['Statement']
        cloudwatch, = [s for s in statements
                       if s['Principal'] == {'Service': 'cloudwatch.amazonaws.com'}]
        assert cloudwatch['Effect'] == 'Allow'
        assert sorted(cloudwatch['Action']) == ['kms:Decrypt', 'kms:GenerateDataKey*']
        # The account keeps administering the key (without it, no one could).
        assert any(s['Principal'] == {'AWS': {'Fn::Sub': (
            'arn:${AWS::Partition}:iam::${AWS::AccountId}:root')}} and s['Action'] == 'kms:*'
            for s in statements)
        alias = res[resources.ALARM_KEY_ALIAS]
        assert alias['Type'] == 'AWS::KMS::Alias'
        assert alias['Properties']['TargetKeyId'] == {'Ref': resources.ALARM_KEY}
        # Replacing SNS's default topic policy must still let this account's alarms publish.
        document, = _policies_on(res, 'AWS::SNS::TopicPolicy', 'Topics', 'AlarmTopic')
        allow, = [s for s in document['Statement'] if s['Effect'] == 'Allow']
        assert allow['Principal'] == {'Service': 'cloudwatch.amazonaws.com'}
        assert allow['Action'] == 'sns:Publish'
        assert allow['Condition']['StringEquals'] == {
            'aws:SourceAccount': {'Ref': 'AWS::AccountId'}}


# Reserved concurrency as docs/deployment.md ("Reserved concurrency") states it.
RESERVED_CONCURRENCY = {
    'dev': {'APIHandler': 10, 'TokenAuthorizer': 5, 'IngestQueue': 2,
            'ImportUpload': 1, 'PublishChanges': 2, 'ScheduledExport': 1},
    'prod': {'APIHandler': 100, 'TokenAuthorizer': 50, 'IngestQueue': 10,
             'ImportUpload': 2, 'PublishChanges': 10, 'ScheduledExport': 1},
}


def test_every_function_has_the_documented_reserved_concurrency(packaged):
    assert set(packaged) == set(RESERVED_CONCURRENCY)
    for stage, template in packaged.items():
        res = template['Resources']
        functions = {k: r['Properties'] for k, r in res.items()
                     if r['Type'] == 'AWS::Serverless::Function'
                     and k != ids.PRE_TRAFFIC_CHECK}  # the hook serves no traffic
        assert {k: p.get('ReservedConcurrentExecutions') for k, p in functions.items()} == \
            RESERVED_CONCURRENCY[stage], stage
        # The ingest queue is polled no faster than its function may run, so
        # messages wait in the queue rather than being throttled towards its
        # dead-letter queue.
        sqs = functions[ids.INGEST_QUEUE]['Events'][ids.INGEST_EVENT]['Properties']
        assert sqs['ScalingConfig'] == {
            'MaximumConcurrency': RESERVED_CONCURRENCY[stage]['IngestQueue']}
        # The account keeps 100 unreserved; the stage's total is what docs/deployment.md says.
        assert sum(RESERVED_CONCURRENCY[stage].values()) == {'dev': 21, 'prod': 173}[stage]
