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
    assert queue['RedrivePolicy']['maxReceiveCount'] >= 2
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


def test_unknown_methods_on_known_paths_reach_the_app_for_a_405(packaged):
    paths = packaged['prod']['Resources'][ids.REST_API]['Properties']['DefinitionBody'][
        'paths']
    for path, methods in paths.items():
        assert 'x-amazon-apigateway-any-method' in methods, path


def test_stage_is_throttled_and_access_logged(packaged):
    for stage, template in packaged.items():
        api = template['Resources'][ids.REST_API]['Properties']
        settings = api['MethodSettings'][0]
        assert settings['ThrottlingRateLimit'] == resources.STAGES[stage]['rate_limit']
        assert settings['ThrottlingBurstLimit'] == resources.STAGES[stage]['burst_limit']
        assert api['AccessLogSetting']['DestinationArn'] == {
            'Fn::GetAtt': [resources.ACCESS_LOGS, 'Arn']}
        assert 'EndpointURL' in template['Outputs']
