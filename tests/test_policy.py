"""Each function's IAM policy (deploy/policies.py) is its own, and least privilege.

`make test` also holds each role to the calls its function made (deploy/check_policy.py).
"""
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import check_policy  # noqa: E402
import ids  # noqa: E402
import policies  # noqa: E402
import resources  # noqa: E402

STAGES = sorted(resources.STAGES)
TRACING = {'xray:PutTelemetryRecords', 'xray:PutTraceSegments'}


def _as_list(value):
    return value if isinstance(value, list) else [value]


def statements(stage, function):
    return policies.build(stage)[function]['Statement']


def actions(stage, function):
    return {a for s in statements(stage, function) for a in _as_list(s['Action'])}


def every_statement(stage):
    for function in ids.FUNCTIONS:
        for statement in statements(stage, function):
            yield function, statement


@pytest.mark.parametrize('stage', STAGES)
def test_no_wildcard_resource_or_action_but_tracing(stage):
    for function, statement in every_statement(stage):
        assert statement['Effect'] == 'Allow'
        for action in _as_list(statement['Action']):
            assert '*' not in action, (function, statement['Sid'])
        if set(_as_list(statement['Action'])) == TRACING:
            continue  # X-Ray has no resource narrower than "*"
        for resource in _as_list(statement['Resource']):
            assert resource != '*', (function, statement['Sid'])


@pytest.mark.parametrize('stage', STAGES)
def test_every_resource_is_one_of_this_stacks_own(stage):
    own = set(resources.build(stage, paths=[])['Resources'])
    for function, statement in every_statement(stage):
        if statement['Resource'] == '*':
            continue
        for resource in _as_list(statement['Resource']):
            text = json.dumps(resource)
            names = set(re.findall(r'\$\{(\w+)\.\w+\}', text))
            names |= {r['Ref'] for r in [resource] if 'Ref' in r}
            names |= {r['Fn::GetAtt'][0] for r in [resource] if 'Fn::GetAtt' in r}
            assert names <= own, (function, statement['Sid'], names - own)
            if not names:
                # Account-scoped ARNs: only this stack's log groups, the stage's
                # token parameter, or a KMS key used through one named service.
                assert '${AWS::AccountId}' in text, (function, statement['Sid'])


@pytest.mark.parametrize('stage', STAGES)
def test_only_the_authorizer_reads_the_stages_own_token_parameter(stage):
    name = resources.auth_parameter_name(stage)
    for function in ids.FUNCTIONS:
        ssm = [s for s in statements(stage, function)
               if 'ssm:GetParameter' in _as_list(s['Action'])]
        if function != ids.TOKEN_AUTHORIZER:
            assert ssm == [], function
            continue
        assert len(ssm) == 1
        assert json.dumps(ssm[0]['Resource']).endswith(':parameter%s"}' % name)
    for function, statement in every_statement(stage):
        if any(a.startswith('kms:') for a in _as_list(statement['Action'])):
            assert 'kms:ViaService' in statement['Condition']['StringEquals'], function


@pytest.mark.parametrize('stage', STAGES)
def test_the_authorizer_cannot_touch_the_table_and_the_api_cannot_publish(stage):
    assert not any(a.startswith(('dynamodb:', 's3:', 'sns:', 'sqs:'))
                   for a in actions(stage, ids.TOKEN_AUTHORIZER))
    assert not any(a.startswith(('ssm:', 'kms:', 'sns:', 's3:', 'sqs:'))
                   for a in actions(stage, ids.API_HANDLER))
    assert 'dynamodb:BatchWriteItem' not in actions(stage, ids.API_HANDLER)
    assert actions(stage, ids.SCHEDULED_EXPORT) & {
        'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'} == set()


@pytest.mark.parametrize('stage', STAGES)
def test_no_role_creates_log_groups_and_every_role_traces(stage):
    for function in ids.FUNCTIONS:
        granted = actions(stage, function)
        assert 'logs:CreateLogGroup' not in granted, function
        assert TRACING <= granted, function


def test_stages_allow_the_same_actions():
    for function in ids.FUNCTIONS:
        assert actions('dev', function) == actions('prod', function), function


def test_every_function_has_a_role_chalice_makes():
    assert set(policies.build('prod')) == set(ids.FUNCTIONS) | {ids.PRE_TRAFFIC_CHECK} == \
        set(ids.ROLES)
    overrides = policies.role_overrides('prod')
    assert set(overrides) == set(ids.ROLES.values())


# --- deploy/check_policy.py ---------------------------------------------------------

def call(function, service, operation, **extra):
    return dict(extra, function=function, service=service, operation=operation)


def document(function, stage='prod'):
    return policies.build(stage)[function]


def test_check_reports_an_action_the_policy_lacks():
    calls = [call(ids.API_HANDLER, 'dynamodb', 'Scan')]
    assert check_policy.problems(calls, document(ids.API_HANDLER)) == [
        'dynamodb:Scan (for dynamodb.Scan)']


def test_check_maps_operations_to_their_iam_action_and_the_kms_they_need():
    calls = [call(ids.PUBLISH_CHANGES, 'sns', 'PublishBatch')]
    assert check_policy.problems(calls, document(ids.PUBLISH_CHANGES)) == []
    assert check_policy.iam_actions(calls[0]) == [
        'sns:Publish', 'kms:Decrypt', 'kms:GenerateDataKey']
    head = call(ids.IMPORT_UPLOAD, 's3', 'HeadObject', key='imports/cars.csv')
    assert check_policy.problems([head], document(ids.IMPORT_UPLOAD)) == []


def test_check_reports_an_object_key_outside_the_allowed_prefixes():
    calls = [call(ids.IMPORT_UPLOAD, 's3', 'PutObject', key='imports/overwrite.csv')]
    assert check_policy.problems(calls, document(ids.IMPORT_UPLOAD)) == [
        "s3:PutObject on key 'imports/overwrite.csv'"]


def test_check_takes_transactions_item_by_item():
    calls = [call(ids.API_HANDLER, 'dynamodb', 'TransactWriteItems',
                  actions=['dynamodb:ConditionCheckItem', 'dynamodb:PutItem'])]
    assert check_policy.problems(calls, document(ids.API_HANDLER)) == [
        'dynamodb:ConditionCheckItem (for dynamodb.TransactWriteItems)']


def test_check_reports_what_a_role_allows_beyond_its_calls():
    # ScheduledExport only queries and writes exports; its platform needs
    # (logs, tracing, its dead-letter queue) count as needed.
    export = ids.SCHEDULED_EXPORT
    calls = [call(export, 'dynamodb', 'Query')]
    assert check_policy.extras(calls, document(export),
                               check_policy.platform_actions(export)) == ['s3:PutObject']
    calls.append(call(export, 's3', 'PutObject', key='exports/2024-01-01/cars.csv'))
    assert check_policy.extras(calls, document(export),
                               check_policy.platform_actions(export)) == []


def test_check_reports_an_unused_object_prefix():
    both = {'Statement': [{'Effect': 'Allow', 'Action': 's3:PutObject', 'Resource': [
        {'Fn::Sub': '${CarsBucket.Arn}/reports/*'}, {'Fn::Sub': '${CarsBucket.Arn}/exports/*'}]}]}
    calls = [call(ids.IMPORT_UPLOAD, 's3', 'PutObject', key='reports/a.csv.json')]
    assert check_policy.extras(calls, both) == ["s3:PutObject on 'exports/*'"]


def test_check_holds_each_function_to_its_own_role():
    # The authorizer may read the tokens; the same call by the API is refused.
    read = {'service': 'ssm', 'operation': 'GetParameter'}
    found = check_policy.check([dict(read, function=ids.API_HANDLER)], 'prod')
    assert 'prod %s does not allow ssm:GetParameter (for ssm.GetParameter)' % (
        ids.API_HANDLER) in found
    assert 'prod %s does not allow kms:Decrypt (for ssm.GetParameter)' % ids.API_HANDLER in found
    found = check_policy.check([dict(read, function=ids.TOKEN_AUTHORIZER)], 'prod')
    assert not [f for f in found if f.startswith('prod %s' % ids.TOKEN_AUTHORIZER)]


def test_check_needs_some_role_for_calls_made_outside_a_handler():
    found = check_policy.check([call(None, 'dynamodb', 'Scan')], 'dev')
    assert 'dev: no function may dynamodb.Scan' in found
    found = check_policy.check([call(None, 'dynamodb', 'BatchWriteItem')], 'dev')
    assert not [f for f in found if f.startswith('dev: ')]


# --- the token authorizer's own call, recorded for check_policy ------------------

def test_the_authorizer_reads_the_stages_tokens_from_ssm(monkeypatch):
    """The deployed authorizer fetches the token list from the stage's SecureString
    (moto stands in for SSM) and allows a listed token, denies another."""
    from chalice.test import Client
    from moto import mock_aws

    from app import app
    from chalicelib.http import auth
    name = resources.auth_parameter_name('dev')
    monkeypatch.setenv('CARS_AUTH_SSM_PARAMETER', name)
    monkeypatch.delenv('CARS_AUTH_TOKENS', raising=False)
    auth.clear_cache()
    try:
        with mock_aws():
            import boto3
            boto3.client('ssm').put_parameter(Name=name, Type='SecureString',
                                              Value='first-token,second-token')
            with Client(app) as client:
                def verdict(token):
                    return client.lambda_.invoke('token_authorizer', {
                        'type': 'TOKEN', 'authorizationToken': 'Bearer %s' % token,
                        'methodArn': 'arn:aws:execute-api:us-east-1:123456789012:'
                                     'abc/api/POST/api/v1/cars'}).payload
                allowed = verdict('second-token')
                denied = verdict('not-a-token')
    finally:
        auth.clear_cache()
    assert allowed['principalId'] == auth.PRINCIPAL
    assert allowed['policyDocument']['Statement'][0]['Effect'] == 'Allow'
    assert denied['principalId'] != auth.PRINCIPAL


# --- the pre-traffic hook's role (deploy/policies.py hook_statements) -------------
# The runtime's sandbox test records the hook's calls as the function
# PreTrafficCheck; check_policy holds its role to them like any other.

HOOK_CALLS = [call(ids.PRE_TRAFFIC_CHECK, 'codedeploy', 'PutLifecycleEventHookExecutionStatus'),
              call(ids.PRE_TRAFFIC_CHECK, 'lambda', 'Invoke')]


@pytest.mark.parametrize('stage', STAGES)
def test_the_hooks_recorded_calls_are_allowed_and_nothing_more(stage):
    found = check_policy.check(HOOK_CALLS, stage)
    assert not [f for f in found if f.startswith('%s %s ' % (stage, ids.PRE_TRAFFIC_CHECK))]
    assert check_policy.problems(HOOK_CALLS, document(ids.PRE_TRAFFIC_CHECK, stage)) == []
    assert check_policy.extras(HOOK_CALLS, document(ids.PRE_TRAFFIC_CHECK, stage),
                               check_policy.platform_actions(ids.PRE_TRAFFIC_CHECK)) == []


def test_the_hook_may_not_move_aliases_or_touch_the_data():
    found = check_policy.check([call(ids.PRE_TRAFFIC_CHECK, 'lambda', 'UpdateAlias'),
                                call(ids.PRE_TRAFFIC_CHECK, 'dynamodb', 'PutItem')], 'prod')
    assert 'prod PreTrafficCheck does not allow lambda:UpdateAlias (for lambda.UpdateAlias)' \
        in found
    assert 'prod PreTrafficCheck does not allow dynamodb:PutItem (for dynamodb.PutItem)' \
        in found
    # Without recorded calls its grants are extra: the check is both ways.
    found = check_policy.check([], 'prod')
    assert 'prod PreTrafficCheck allows lambda:InvokeFunction, which nothing it runs needs' \
        in found


@pytest.mark.parametrize('stage', STAGES)
def test_the_hook_invokes_versions_of_the_api_and_the_authorizer_never_latest(stage):
    (invoke,) = [s for s in statements(stage, ids.PRE_TRAFFIC_CHECK)
                 if 'lambda:InvokeFunction' in s['Action']]
    # ...:function:<name>:* matches a qualifier only: never the unqualified ARN.
    assert invoke['Resource'] == [{'Fn::Sub': '${%s.Arn}:*' % ids.API_HANDLER},
                                  {'Fn::Sub': '${%s.Arn}:*' % ids.TOKEN_AUTHORIZER}]
    (report,) = [s for s in statements(stage, ids.PRE_TRAFFIC_CHECK)
                 if 'codedeploy:PutLifecycleEventHookExecutionStatus' in s['Action']]
    assert report['Resource'] == {'Fn::Sub': 'arn:${AWS::Partition}:codedeploy:${AWS::Region}:'
                                  '${AWS::AccountId}:deploymentgroup:'
                                  '${ServerlessDeploymentApplication}/*'}


def test_codedeploys_role_is_narrower_than_the_managed_policy():
    # AWSCodeDeployRoleForLambda: DescribeAlarms, Get/UpdateAlias,
    # GetProvisionedConcurrencyConfig and sns:Publish on "*", S3 reads,
    # InvokeFunction on CodeDeployHook_*; here no "*", no SNS, no S3.
    document_ = policies.codedeploy_role_policy(ids.FUNCTIONS)
    for statement in document_['Statement']:
        assert statement['Resource'] != '*'
        assert not any(a.startswith(('sns:', 's3:')) for a in statement['Action'])
    without_hook = policies.codedeploy_role_policy(ids.FUNCTIONS, hook=False)
    assert 'lambda:InvokeFunction' not in json.dumps(without_hook)
