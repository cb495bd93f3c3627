"""The pre-traffic hook (chalicelib/release/pretraffic.py) against the real app, in process.

A fake `invoke` hands each event to the app's Lambda entry points (app.app, and
app.token_authorizer for the authorizer's version) as Lambda would, and a fake
reporter records what the hook tells CodeDeploy. The package's handler, with boto3
against a local Lambda and CodeDeploy, is in tests/test_lambda_sandbox.py.
"""
import json

import pytest

from chalicelib.release import pretraffic
from local_aws import LocalAws
from chalicelib.store import get_store

API = 'arn:aws:lambda:us-east-1:123456789012:function:cars-prod-APIHandler:7'
AUTHORIZER = 'arn:aws:lambda:us-east-1:123456789012:function:cars-prod-TokenAuthorizer:7'
HOOK_EVENT = {'DeploymentId': 'd-ABCDEF123', 'LifecycleEventHookExecutionId': 'exec-1'}
COROLLA = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
           'color': 'blue'}


@pytest.fixture
def app_store(sqlite_path, monkeypatch):
    """The app on a fresh sqlite file holding one car, writes open, outside Lambda."""
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    for name in ('CARS_AUTH_TOKENS', 'CARS_AUTH_SSM_PARAMETER', 'CARS_AUTH_PROTECT_READS',
                 'AWS_LAMBDA_FUNCTION_NAME'):
        monkeypatch.delenv(name, raising=False)
    store = get_store()
    store.create(dict(COROLLA))
    return store


class Lambda(object):
    """invoke(arn, event) as Lambda answers it: (FunctionError, payload), through JSON."""

    def __init__(self, api_override=None):
        self.calls = []
        self.api_override = api_override

    def __call__(self, arn, event):
        import app
        event = json.loads(json.dumps(event))
        self.calls.append((arn, event))
        handler = app.token_authorizer if arn == AUTHORIZER else app.app
        if arn == API and self.api_override:
            answer = self.api_override(event)
            if answer is not None:
                return None, answer
        try:
            returned = handler(event, None)
        except Exception as e:  # noqa: BLE001 - as Lambda reports a raised error
            return 'Unhandled', {'errorMessage': str(e), 'errorType': type(e).__name__}
        return None, json.loads(json.dumps(returned))


class Reporter(object):
    def __init__(self):
        self.reports = []

    def __call__(self, deployment_id, execution_id, status):
        self.reports.append((deployment_id, execution_id, status))


def run(invoke, **env):
    reporter = Reporter()
    outcome = pretraffic.handle(HOOK_EVENT, invoke=invoke, report=reporter,
                                env=dict({pretraffic.TARGET_API: API}, **env))
    assert reporter.reports == [('d-ABCDEF123', 'exec-1', outcome['status'])]
    return outcome


def test_a_healthy_version_with_open_writes_succeeds_and_nothing_is_written(app_store):
    before = app_store.count()
    invoke = Lambda()
    outcome = run(invoke)
    assert outcome == {'status': 'Succeeded', 'failures': []}
    assert [(e['httpMethod'], e['path']) for _, e in invoke.calls] == [
        ('GET', '/api/v1/health'), ('GET', '/api/v1/cars'), ('GET', '/api/v1/cars/0000'),
        ('POST', '/api/v1/cars')]
    assert app_store.count() == before


def test_a_healthy_version_with_tokens_on_succeeds_authorizer_included(app_store, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', 'the-real-token')
    before = app_store.count()
    invoke = Lambda()
    outcome = run(invoke, CARS_HOOK_TOKENS_ON='true', CARS_HOOK_TARGET_AUTHORIZER=AUTHORIZER)
    assert outcome == {'status': 'Succeeded', 'failures': []}
    assert [arn for arn, _ in invoke.calls] == [API] * 4 + [AUTHORIZER]
    assert app_store.count() == before


def test_the_authorizer_check_accepts_unauthorized_as_lambda_raises_it(app_store, monkeypatch):
    # Inside Lambda the authorizer raises "Unauthorized" (401) for a missing token;
    # a bogus one is denied (403). Either is a refusal.
    assert pretraffic.expect_refusal('Unhandled', {'errorMessage': 'Unauthorized'}) is None
    assert pretraffic.expect_refusal('Unhandled', {'errorMessage': 'Unavailable'})
    allow = {'principalId': 'cars-writer', 'policyDocument': {'Statement': [
        {'Effect': 'Allow', 'Action': 'execute-api:Invoke', 'Resource': ['arn:...']}]}}
    assert 'ALLOWED' in pretraffic.expect_refusal(None, allow)


def test_a_car_0000_in_the_store_is_a_good_answer_to_the_read_check(app_store):
    app_store.replace('0000', {'make': 'Seed', 'model': 'Zero', 'year': 1999,
                               'trans': None, 'color': None}, None)
    assert run(Lambda())['status'] == 'Succeeded'


def test_a_read_that_answers_another_car_or_a_non_problem_404_fails(app_store):
    def wrong_car(event):
        if event['path'] == '/api/v1/cars/0000':
            return {'statusCode': 200, 'headers': {}, 'body': '{"id": "1234"}'}
        return None

    def plain_404(event):
        if event['path'] == '/api/v1/cars/0000':
            return {'statusCode': 404, 'headers': {}, 'body': '{"message": "nope"}'}
        return None
    for override in (wrong_car, plain_404):
        outcome = run(Lambda(override))
        assert [f.split(':')[0] for f in outcome['failures']] == ['GET /api/v1/cars/0000']


def test_a_store_that_cannot_be_reached_fails_the_deployment(app_store, monkeypatch, caplog):
    def unreachable():
        raise OSError('disk gone')
    monkeypatch.setattr(app_store, 'ping', unreachable)
    outcome = run(Lambda())
    assert outcome['status'] == 'Failed'
    assert [f.split(':')[0] for f in outcome['failures']] == ['GET /api/v1/health']
    assert 'status 503, expected 200' in outcome['failures'][0]
    failed = [r.getMessage() for r in caplog.records if r.name == 'cars.release'
              and r.getMessage().startswith('pre-traffic check failed')]
    assert len(failed) == 1


def test_a_500_or_a_raised_error_fails_the_deployment(app_store):
    def broken_health(event):
        if event['path'] == '/api/v1/health':
            return {'statusCode': 500, 'headers': {}, 'body': '{"message": "boom"}'}
        return None
    assert run(Lambda(broken_health))['status'] == 'Failed'

    def raising(arn, event):
        return 'Unhandled', {'errorMessage': 'ImportError: no module named app'}
    outcome = run(raising)
    assert outcome['status'] == 'Failed' and len(outcome['failures']) == 4

    def unreachable(arn, event):
        raise ConnectionError('no route to Lambda')
    assert run(unreachable)['status'] == 'Failed'


def test_a_version_that_lets_writes_through_without_a_token_fails_and_writes_nothing(
        app_store):
    # The stage says tokens are on, but the new version has none configured: the
    # write reaches validation (422) instead of being refused (400).
    before = app_store.count()
    outcome = run(Lambda(), CARS_HOOK_TOKENS_ON='true')
    assert outcome['status'] == 'Failed'
    assert 'status 422, expected 400' in outcome['failures'][0]
    assert app_store.count() == before


def test_an_authorizer_that_allows_a_bogus_token_fails(app_store, monkeypatch):
    monkeypatch.setenv('CARS_AUTH_TOKENS', 'the-real-token')
    monkeypatch.setattr(pretraffic, 'token_event', lambda arn, region: {
        'type': 'TOKEN', 'authorizationToken': 'Bearer the-real-token',
        'methodArn': 'arn:aws:execute-api:us-east-1:123456789012:x/api/POST/api/v1/cars'})
    outcome = run(Lambda(), CARS_HOOK_TOKENS_ON='true', CARS_HOOK_TARGET_AUTHORIZER=AUTHORIZER)
    assert outcome['status'] == 'Failed'
    assert outcome['failures'][0].startswith('authorizer, bogus token: a bogus token was ALLOWED')


def test_no_target_fails_and_a_report_is_still_made(app_store):
    reporter = Reporter()
    outcome = pretraffic.handle(HOOK_EVENT, invoke=Lambda(), report=reporter, env={})
    assert outcome['status'] == 'Failed'
    assert reporter.reports == [('d-ABCDEF123', 'exec-1', 'Failed')]


def test_the_hook_events_are_gateway_proxy_events():
    event = pretraffic.rest_event('GET', '/api/v1/cars/0000', '/api/v1/cars/{car_id}',
                                  path_parameters={'car_id': '0000'})
    assert {'resource', 'path', 'httpMethod', 'headers', 'multiValueHeaders', 'requestContext',
            'body', 'isBase64Encoded'} <= set(event)
    context = event['requestContext']
    assert (context['resourcePath'], context['httpMethod'], context['stage']) == (
        '/api/v1/cars/{car_id}', 'GET', 'api')
    assert 'authorizer' not in context


def test_the_hook_function_calls_lambda_and_codedeploy_through_boto3(app_store, monkeypatch):
    # The function as deployed, with the SDK (so the suite's call recorder credits
    # its two AWS calls to PreTrafficCheck, whose role must allow exactly those).
    import app as app_module
    monkeypatch.setattr(pretraffic, '_clients', {})
    # Invoke is answered by the app's entry point, in this process.
    with LocalAws(lambda arn, event: (app_module.app(event, None), None)) as local:
        for name, value in (('AWS_ENDPOINT_URL_LAMBDA', local.endpoint),
                            ('AWS_ENDPOINT_URL_CODEDEPLOY', local.endpoint),
                            ('AWS_ACCESS_KEY_ID', 'testing'), ('AWS_SECRET_ACCESS_KEY', 'testing'),
                            ('AWS_DEFAULT_REGION', 'us-east-1'), ('CARS_HOOK_TARGET_API', API)):
            monkeypatch.setenv(name, value)
        monkeypatch.delenv('CARS_HOOK_TARGET_AUTHORIZER', raising=False)
        monkeypatch.delenv('CARS_HOOK_TOKENS_ON', raising=False)
        before = app_store.count()
        app_module.pre_traffic_check(HOOK_EVENT, None)
    assert local.statuses == [{'deploymentId': HOOK_EVENT['DeploymentId'],
                               'lifecycleEventHookExecutionId': 'exec-1',
                               'status': 'Succeeded'}]
    assert {arn for arn, _ in local.invoked} == {API}
    assert app_store.count() == before
