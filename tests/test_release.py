"""`make rollback` (deploy/rollback.py), `make prune` (deploy/prune.py) and the wait at
the end of `make deploy` (deploy/release.py), against moto (mock_aws) where moto has
the API.

moto keeps Lambda versions and aliases, so the rollback and the pruning run on real
list-versions-by-function / get-alias / list-aliases / update-alias / delete-function
calls. moto's CodeDeploy
lists and describes deployments but never moves one past "Created", so the
waiting is tested on a stub client with the same two methods (list_deployments,
get_deployment) that plays a deployment's states; moto checks the listing.
The stack's resources come from a stub CloudFormation client (list_stack_resources).
"""
import datetime
import io
import os
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import ids  # noqa: E402
import prune  # noqa: E402
import release  # noqa: E402
import rollback  # noqa: E402
import versions  # noqa: E402

moto = pytest.importorskip('moto')
REGION = 'eu-west-3'


class StubCloudFormation:
    """list_stack_resources, paginated, over [(logical id, type, physical id)]."""

    def __init__(self, resources):
        self.resources = resources

    def get_paginator(self, operation):
        assert operation == 'list_stack_resources'
        stub = self

        class Paginator:
            def paginate(self, StackName):
                yield {'StackResourceSummaries': [
                    {'LogicalResourceId': logical, 'ResourceType': kind,
                     'PhysicalResourceId': physical} for logical, kind, physical in stub.resources]}
        return Paginator()


@pytest.fixture
def aws(monkeypatch):
    for key in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'):
        monkeypatch.setenv(key, 'testing')
    monkeypatch.setenv('AWS_DEFAULT_REGION', REGION)
    monkeypatch.delenv('AWS_PROFILE', raising=False)
    monkeypatch.delenv('AWS_ENDPOINT_URL', raising=False)
    with moto.mock_aws():
        import boto3
        yield boto3.session.Session(region_name=REGION)


def _zip(text):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        z.writestr('app.py', text)
    return buffer.getvalue()


def _function(session, name, versions, live, weights=None):
    """A function with `versions` published versions and `live` on one of them."""
    iam = session.client('iam')
    try:
        role = iam.get_role(RoleName='fn')['Role']['Arn']
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(RoleName='fn', AssumeRolePolicyDocument='{}')['Role']['Arn']
    client = session.client('lambda')
    client.create_function(FunctionName=name, Runtime='python3.13', Role=role,
                           Handler='app.handler', Code={'ZipFile': _zip('# 0')})
    for n in range(1, versions + 1):
        client.update_function_code(FunctionName=name, ZipFile=_zip('# %d' % n))
        client.publish_version(FunctionName=name)
    extra = {'RoutingConfig': {'AdditionalVersionWeights': weights}} if weights else {}
    if live is not None:
        client.create_alias(FunctionName=name, Name=ids.LIVE_ALIAS, FunctionVersion=str(live),
                            **extra)
    return name


def _session(aws, **stubs):
    """A boto3 session whose clients are moto's, but for the named stubs."""
    class Session:
        def client(self, name):
            return stubs[name] if name in stubs else aws.client(name)
    return Session()


def _live(session, name):
    return session.client('lambda').get_alias(FunctionName=name, Name=ids.LIVE_ALIAS)


# --- make rollback ---------------------------------------------------------------

def test_rollback_moves_each_live_alias_to_the_version_before_and_says_so(aws, capsys):
    api = _function(aws, 'cars-prod-APIHandler-x', 3, live=3)
    ingest = _function(aws, 'cars-prod-IngestQueue-x', 5, live=4)
    hook = _function(aws, 'cars-prod-PreTrafficCheck-x', 0, live=None)
    stack = StubCloudFormation([
        (ids.API_HANDLER, 'AWS::Lambda::Function', api),
        (ids.INGEST_QUEUE, 'AWS::Lambda::Function', ingest),
        (ids.PRE_TRAFFIC_CHECK, 'AWS::Lambda::Function', hook),  # no alias: left alone
        (ids.alias_resource(ids.API_HANDLER), 'AWS::Lambda::Alias', api + ':live'),
    ])

    status = rollback.main(['--stack', 'cars-prod', '--region', REGION],
                           session=_session(aws, cloudformation=stack))
    assert status == 0
    assert _live(aws, api)['FunctionVersion'] == '2'
    # Not the newest version: the one below the live one.
    assert _live(aws, ingest)['FunctionVersion'] == '3'
    out = capsys.readouterr().out.splitlines()
    by_number = 'the highest below it (no CodeDeploy record of what it replaced)'
    assert out == ['APIHandler: live 3 -> 2, ' + by_number,
                   'IngestQueue: live 4 -> 3, ' + by_number]


def test_rollback_dry_run_and_a_chosen_version(aws, capsys):
    api = _function(aws, 'api', 4, live=4)
    steps = rollback.plan(aws.client('lambda'), {ids.API_HANDLER: api})
    rollback.roll_back(aws.client('lambda'), steps, dry_run=True)
    assert _live(aws, api)['FunctionVersion'] == '4'
    assert 'APIHandler: live 4 -> 3, the highest below it (no CodeDeploy record of what it ' \
        'replaced) (dry run, nothing changed)' in capsys.readouterr().out
    steps = rollback.plan(aws.client('lambda'), {ids.API_HANDLER: api}, {ids.API_HANDLER: 1})
    rollback.roll_back(aws.client('lambda'), steps)
    assert _live(aws, api)['FunctionVersion'] == '1'


def test_rollback_refuses_without_an_earlier_version_and_changes_nothing(aws):
    first = _function(aws, 'first', 1, live=1)
    other = _function(aws, 'other', 3, live=3)
    with pytest.raises(rollback.RollbackError, match='live is version 1, there is no earlier'):
        rollback.plan(aws.client('lambda'), {'First': first, 'Other': other})
    assert _live(aws, other)['FunctionVersion'] == '3'
    with pytest.raises(rollback.RollbackError, match='no version 9'):
        rollback.plan(aws.client('lambda'), {'Other': other}, {'Other': 9})


def test_rollback_refuses_while_a_canary_is_shifting_traffic(aws):
    api = _function(aws, 'api', 3, live=2, weights={'3': 0.1})
    with pytest.raises(rollback.RollbackError, match='stop-deployment'):
        rollback.plan(aws.client('lambda'), {ids.API_HANDLER: api})
    assert _live(aws, api)['FunctionVersion'] == '2'


class StubHistory:
    """The CodeDeploy calls versions.previous_live makes, over [(deployment id,
    create time, CurrentVersion, TargetVersion)] of succeeded deployments to one
    group (moto's CodeDeploy runs no deployment, so has no targets)."""

    def __init__(self, deployments, group='api-group'):
        self.deployments = {d[0]: d for d in deployments}
        self.group = group

    def list_deployments(self, applicationName, deploymentGroupName, includeOnlyStatuses,
                         nextToken=None):
        assert includeOnlyStatuses == ['Succeeded']
        ids_ = list(self.deployments) if deploymentGroupName == self.group else []
        # Two pages, in no particular order, as the API promises none.
        half = len(ids_) // 2
        if nextToken is None:
            return {'deployments': ids_[half:], 'nextToken': 'more'}
        return {'deployments': ids_[:half]}

    def batch_get_deployments(self, deploymentIds):
        assert len(deploymentIds) <= 25
        return {'deploymentsInfo': [
            {'deploymentId': d, 'createTime': datetime.datetime(
                2026, 12, 1, self.deployments[d][1], tzinfo=datetime.timezone.utc)}
            for d in deploymentIds]}

    def list_deployment_targets(self, deploymentId):
        return {'targetIds': ['fn:live']}

    def get_deployment_target(self, deploymentId, targetId):
        _, _, current, target = self.deployments[deploymentId]
        return {'deploymentTarget': {'deploymentTargetType': 'LambdaTarget', 'lambdaTarget': {
            'lambdaFunctionInfo': {'functionAlias': 'live', 'currentVersion': str(current),
                                   'targetVersion': str(target)}}}}


def _stack_with_codedeploy(session, function, codedeploy):
    stack = StubCloudFormation([
        (ids.API_HANDLER, 'AWS::Lambda::Function', function),
        (ids.CODEDEPLOY_APPLICATION, 'AWS::CodeDeploy::Application', 'cars-prod-app'),
        (ids.deployment_group(ids.API_HANDLER), 'AWS::CodeDeploy::DeploymentGroup',
         'api-group'),
    ])

    return _session(session, cloudformation=stack, codedeploy=codedeploy)


# 7 live. 4 and 6 were released and rolled back by CodeDeploy: no succeeded
# deployment made them live, so 5 is what 7 replaced.
RELEASES = [('d-3', 1, 2, 3), ('d-5', 2, 3, 5), ('d-7', 3, 5, 7)]


def test_rollback_goes_to_the_version_the_live_one_replaced_not_a_rolled_back_one(
        aws, capsys):
    api = _function(aws, 'api', 7, live=7)
    session = _stack_with_codedeploy(aws, api, StubHistory(RELEASES))
    assert rollback.main(['--stack', 'cars-prod', '--region', REGION], session=session) == 0
    assert _live(aws, api)['FunctionVersion'] == '5'
    assert capsys.readouterr().out.splitlines() == [
        'APIHandler: live 7 -> 5, the version it replaced']
    # From 5, the record of how 5 went live: back to 3.
    assert rollback.main(['--stack', 'cars-prod', '--region', REGION], session=session) == 0
    assert _live(aws, api)['FunctionVersion'] == '3'


def test_rollback_ignores_the_stack_rollback_that_moved_the_alias_back_down(aws, capsys):
    # 7 was released, then the stack rolled back (another function failed):
    # CodeDeploy moved the alias 7 -> 5, a deployment that succeeded too.
    api = _function(aws, 'api', 7, live=5)
    history = StubHistory(RELEASES + [('d-back', 4, 7, 5)])
    session = _stack_with_codedeploy(aws, api, history)
    assert rollback.main(['--stack', 'cars-prod', '--region', REGION], session=session) == 0
    assert _live(aws, api)['FunctionVersion'] == '3'


def test_rollback_refuses_when_the_version_live_replaced_is_deleted(aws):
    api = _function(aws, 'api', 7, live=7)
    aws.client('lambda').delete_function(FunctionName=api, Qualifier='5')
    session = _stack_with_codedeploy(aws, api, StubHistory(RELEASES))
    assert rollback.main(['--stack', 'cars-prod', '--region', REGION], session=session) == 1
    assert _live(aws, api)['FunctionVersion'] == '7'


# --- make prune ------------------------------------------------------------------

def _versions(session, name):
    return versions.published_versions(session.client('lambda'), name)


def test_prune_keeps_live_newer_aliased_and_the_rollback_targets_and_deletes_the_rest(
        aws, capsys):
    # Ten versions, live on 8 with a canary to 9; 10 above live (a release under
    # way); an operator's alias on 2.
    api = _function(aws, 'cars-prod-APIHandler-x', 10, live=8, weights={'9': 0.1})
    aws.client('lambda').create_alias(FunctionName=api, Name='pinned', FunctionVersion='2')
    ingest = _function(aws, 'cars-prod-IngestQueue-x', 2, live=2)
    hook = _function(aws, 'cars-prod-PreTrafficCheck-x', 0, live=None)
    stack = StubCloudFormation([
        (ids.API_HANDLER, 'AWS::Lambda::Function', api),
        (ids.INGEST_QUEUE, 'AWS::Lambda::Function', ingest),
        (ids.PRE_TRAFFIC_CHECK, 'AWS::Lambda::Function', hook),  # no alias: left alone
    ])

    assert prune.main(['--stack', 'cars-prod', '--region', REGION, '--keep', '3'],
                      session=_session(aws, cloudformation=stack)) == 0
    assert _versions(aws, api) == [2, 5, 6, 7, 8, 9, 10]
    assert _versions(aws, ingest) == [1, 2]
    assert capsys.readouterr().out.splitlines() == [
        'APIHandler: deleted 1, 3, 4; live 8, kept 2, 5, 6, 7, 9, 10',
        'IngestQueue: nothing to delete; live 2, kept 1']
    # What is left is what make rollback needs.
    steps = rollback.plan(aws.client('lambda'), {ids.INGEST_QUEUE: ingest})
    assert [(s[2], s[3]) for s in steps] == [(2, 1)]


def test_prune_keeps_the_version_the_live_one_replaced(aws, capsys):
    api = _function(aws, 'api', 7, live=7)
    session = _stack_with_codedeploy(aws, api, StubHistory(RELEASES))
    assert prune.main(['--stack', 'cars-prod', '--region', REGION, '--keep', '1'],
                      session=session) == 0
    assert versions.published_versions(aws.client('lambda'), api) == [5, 6, 7]
    assert capsys.readouterr().out.splitlines() == [
        'APIHandler: deleted 1, 2, 3, 4; live 7, kept 5, 6']


def test_prune_dry_run_deletes_nothing_and_keep_must_leave_a_rollback_target(aws, capsys):
    api = _function(aws, 'api', 6, live=6)
    steps = prune.plan(aws.client('lambda'), {ids.API_HANDLER: api}, keep=2)
    prune.prune(aws.client('lambda'), steps, dry_run=True)
    assert _versions(aws, api) == [1, 2, 3, 4, 5, 6]
    assert capsys.readouterr().out.splitlines() == [
        'APIHandler: deleted 1, 2, 3; live 6, kept 4, 5 (dry run, nothing deleted)']
    with pytest.raises(SystemExit):
        prune.main(['--stack', 's', '--region', REGION, '--keep', '0'])


# --- the wait at the end of make deploy ----------------------------------------------

STACK = StubCloudFormation([
    (ids.CODEDEPLOY_APPLICATION, 'AWS::CodeDeploy::Application', 'cars-prod-app'),
    (ids.deployment_group(ids.API_HANDLER), 'AWS::CodeDeploy::DeploymentGroup', 'api-group'),
    (ids.deployment_group(ids.IMPORT_UPLOAD), 'AWS::CodeDeploy::DeploymentGroup',
     'import-group'),
])


class StubCodeDeploy:
    """list_deployments and get_deployment, playing each deployment's states in turn."""

    def __init__(self, by_group):
        # {group: {deployment id: [deploymentInfo, ...] in the order polls see them]}
        self.by_group = by_group
        self.polls = {}

    def list_deployments(self, applicationName, deploymentGroupName, createTimeRange,
                         nextToken=None):
        assert applicationName == 'cars-prod-app'
        assert isinstance(createTimeRange['start'], datetime.datetime)
        return {'deployments': list(self.by_group.get(deploymentGroupName, {}))}

    def get_deployment(self, deploymentId):
        for deployments in self.by_group.values():
            if deploymentId in deployments:
                states = deployments[deploymentId]
                n = self.polls.get(deploymentId, 0)
                self.polls[deploymentId] = n + 1
                return {'deploymentInfo': dict(states[min(n, len(states) - 1)],
                                               deploymentId=deploymentId)}
        raise KeyError(deploymentId)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


SINCE = datetime.datetime(2026, 12, 3, 16, 0, tzinfo=datetime.timezone.utc)


def _run(codedeploy, timeout=600):
    clock = Clock()
    return release.run(STACK, codedeploy, 'cars-prod', SINCE, timeout, poll=10, clock=clock,
                       sleep=clock.sleep), clock


def test_deploy_waits_until_the_canary_succeeds():
    codedeploy = StubCodeDeploy({
        'api-group': {'d-API': [{'status': 'InProgress'}] * 30 + [{'status': 'Succeeded'}]},
        'import-group': {'d-IMP': [{'status': 'Succeeded'}]},
    })
    (status, text), clock = _run(codedeploy)
    assert status == 0
    assert text.splitlines()[0] == 'release: succeeded'
    assert 'APIHandler: deployment d-API Succeeded' in text
    assert 'ImportUpload: deployment d-IMP Succeeded' in text
    assert clock.now == 300  # 30 polls, 10 seconds apart
    assert codedeploy.polls['d-IMP'] == 1  # a finished one is not asked again


def test_deploy_reports_a_rollback_and_why():
    failed = {'status': 'Stopped', 'autoRollbackConfiguration': {'enabled': True},
              'errorInformation': {'code': 'ALARM_ACTIVE',
                                   'message': 'One or more alarms have been activated: '
                                              '[APIHandlerNewVersionErrorsAlarm]'},
              'rollbackInfo': {'rollbackDeploymentId': 'd-BACK',
                               'rollbackMessage': 'Automatic rollback after an alarm'}}
    codedeploy = StubCodeDeploy({'api-group': {'d-API': [{'status': 'InProgress'}, failed]}})
    (status, text), _ = _run(codedeploy)
    assert status == 1
    assert text.splitlines()[0] == 'release: FAILED and rolled back'
    assert 'why: ALARM_ACTIVE One or more alarms have been activated: ' \
           '[APIHandlerNewVersionErrorsAlarm]' in text
    assert 'rolled back by deployment d-BACK: Automatic rollback after an alarm' in text


def test_deploy_stops_waiting_at_the_deadline():
    codedeploy = StubCodeDeploy({'api-group': {'d-API': [{'status': 'InProgress'}]}})
    (status, text), clock = _run(codedeploy, timeout=60)
    assert status == 2 and clock.now == 60
    assert 'still running at the deadline' in text


def test_nothing_changed_means_no_deployment_and_success():
    (status, text), _ = _run(StubCodeDeploy({}))
    assert (status, text) == (0, 'release: no CodeDeploy deployment (no function changed)')
    status, text = release.run(StubCloudFormation([]), StubCodeDeploy({}), 'cars-prod', SINCE)
    assert status == 0 and 'has no CodeDeploy application' in text


def test_the_deployments_are_found_by_group_and_start_time_in_moto(aws):
    """moto's CodeDeploy: the listing by application, group and creation time."""
    codedeploy = aws.client('codedeploy')
    codedeploy.create_application(applicationName='cars-prod-app', computePlatform='Lambda')
    role = 'arn:aws:iam::123456789012:role/codedeploy'
    for group in ('api-group', 'import-group'):
        codedeploy.create_deployment_group(applicationName='cars-prod-app',
                                           deploymentGroupName=group, serviceRoleArn=role)
    made = codedeploy.create_deployment(applicationName='cars-prod-app',
                                        deploymentGroupName='api-group')['deploymentId']
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    found = release.deployments_since(codedeploy, 'cars-prod-app',
                                      {'api-group': 'APIHandlerDeploymentGroup',
                                       'import-group': 'ImportUploadDeploymentGroup'}, since)
    assert found == {made: 'APIHandlerDeploymentGroup'}
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
    assert release.deployments_since(codedeploy, 'cars-prod-app',
                                     {'api-group': 'x'}, later) == {}
    # moto never moves a deployment on: the wait ends at its deadline.
    clock = Clock()
    infos = release.wait(codedeploy, [made], timeout=30, poll=10, clock=clock,
                         sleep=clock.sleep)
    assert infos[made]['status'] not in release.TERMINAL and clock.now == 30
