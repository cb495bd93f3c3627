"""The hand-written IAM policies (.chalice/policy-<stage>.json) are least privilege.

That they cover every call the code makes is checked by `make test`: the suite
records the calls (tests/conftest.py) and deploy/check_policy.py compares.
"""
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import check_policy  # noqa: E402
import resources  # noqa: E402

STAGES = sorted(resources.STAGES)


def policy(stage):
    with open(os.path.join(ROOT, '.chalice', 'policy-%s.json' % stage)) as f:
        return json.load(f)


def statements(stage):
    return policy(stage)['Statement']


def _as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize('stage', STAGES)
def test_no_wildcard_resource_or_action(stage):
    for statement in statements(stage):
        assert statement['Effect'] == 'Allow'
        for resource in _as_list(statement['Resource']):
            assert resource != '*', statement['Sid']
        for action in _as_list(statement['Action']):
            assert '*' not in action, statement['Sid']


@pytest.mark.parametrize('stage', STAGES)
def test_every_resource_is_one_of_this_stacks_own(stage):
    own = set(resources.build(stage, paths=[])['Resources'])
    for statement in statements(stage):
        for resource in _as_list(statement['Resource']):
            text = json.dumps(resource)
            names = set(re.findall(r'\$\{(\w+)\.\w+\}', text))
            names |= {r['Ref'] for r in [resource] if isinstance(r, dict) and 'Ref' in r}
            names |= {r['Fn::GetAtt'][0] for r in [resource] if 'Fn::GetAtt' in r}
            assert names <= own, (statement['Sid'], names - own)
            if not names:
                # Account-scoped ARNs: only this stage's log groups, token
                # parameter, or a KMS key used through one named service.
                assert '${AWS::AccountId}' in text, statement['Sid']


@pytest.mark.parametrize('stage', STAGES)
def test_token_parameter_is_the_stages_own_and_kms_only_through_services(stage):
    name = resources.auth_parameter_name(stage)
    ssm = [s for s in statements(stage) if 'ssm:GetParameter' in _as_list(s['Action'])]
    assert len(ssm) == 1
    assert json.dumps(ssm[0]['Resource']).endswith(':parameter%s"}' % name)
    for statement in statements(stage):
        if any(a.startswith('kms:') for a in _as_list(statement['Action'])):
            assert 'kms:ViaService' in statement['Condition']['StringEquals']


def test_stages_allow_the_same_actions():
    actions = {stage: sorted(a for s in statements(stage) for a in _as_list(s['Action']))
               for stage in STAGES}
    assert actions['dev'] == actions['prod']


def test_check_reports_an_action_the_policy_lacks():
    calls = [{'service': 'dynamodb', 'operation': 'Scan'}]
    assert check_policy.problems(calls, policy('prod')) == [
        'dynamodb:Scan (for dynamodb.Scan)']


def test_check_maps_operations_to_their_iam_action():
    calls = [{'service': 'sns', 'operation': 'PublishBatch'},
             {'service': 's3', 'operation': 'HeadObject', 'key': 'imports/cars.csv'}]
    assert check_policy.problems(calls, policy('prod')) == []


def test_check_reports_an_object_key_outside_the_allowed_prefixes():
    calls = [{'service': 's3', 'operation': 'PutObject', 'key': 'imports/overwrite.csv'}]
    assert check_policy.problems(calls, policy('prod')) == [
        "s3:PutObject on key 'imports/overwrite.csv'"]


def test_check_takes_transactions_item_by_item():
    calls = [{'service': 'dynamodb', 'operation': 'TransactWriteItems',
              'actions': ['dynamodb:ConditionCheckItem', 'dynamodb:PutItem']}]
    assert check_policy.problems(calls, policy('prod')) == [
        'dynamodb:ConditionCheckItem (for dynamodb.TransactWriteItems)']
