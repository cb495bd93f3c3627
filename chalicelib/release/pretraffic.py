"""CodeDeploy's BeforeAllowTraffic hook: question the new version before it gets traffic.

It invokes the new API version (CARS_HOOK_TARGET_API) with API Gateway proxy events
and the new authorizer version (CARS_HOOK_TARGET_AUTHORIZER) with a TOKEN event,
then reports Succeeded or Failed to CodeDeploy. Nothing it sends can write. Which
events and why: docs/design.md, "The pre-traffic check".
"""
import base64
import json
import logging
import os
import uuid

from chalicelib.http.auth import PRINCIPAL

log = logging.getLogger('cars.release')

TARGET_API = 'CARS_HOOK_TARGET_API'
TARGET_AUTHORIZER = 'CARS_HOOK_TARGET_AUTHORIZER'
TOKENS_ON = 'CARS_HOOK_TOKENS_ON'
STAGE = 'api'
# A route id (4 digits) that is never assigned (ids are 4 digits 1-9); a car
# created with it by PUT, or carried over from the seed, is an answer too.
READ_ID = '0000'
# Fails validation whatever else holds: no write can come of it.
INVALID_CAR = {'make': 'Pre-traffic', 'model': 'Check', 'year': 1700}
PROBLEM = 'application/problem+json'

_clients = {}


def _client(service):
    """A boto3 client built on first use (the module is imported by every function)."""
    client = _clients.get(service)
    if client is None:
        import boto3
        from botocore.config import Config
        # Capped: at most 2 attempts of each call, and a read timeout above the
        # API function's own timeout.
        client = _clients[service] = boto3.client(service, config=Config(
            connect_timeout=3, read_timeout=35,
            retries={'mode': 'standard', 'max_attempts': 2}))
    return client


def invoke_lambda(function_arn, event):
    """(FunctionError or None, the returned JSON) of a RequestResponse invoke."""
    response = _client('lambda').invoke(FunctionName=function_arn,
                                        InvocationType='RequestResponse',
                                        Payload=json.dumps(event).encode('utf-8'))
    payload = response['Payload'].read()
    return response.get('FunctionError'), json.loads(payload) if payload else None


def report_status(deployment_id, execution_id, status):
    _client('codedeploy').put_lifecycle_event_hook_execution_status(
        deploymentId=deployment_id, lifecycleEventHookExecutionId=execution_id, status=status)


# --- events ---------------------------------------------------------------------------

def rest_event(method, path, resource=None, query=None, body=None, headers=None,
               path_parameters=None, principal=None):
    """An API Gateway REST API proxy event (payload 1.0), as the gateway sends it."""
    headers = dict({'Host': 'pre-traffic.invalid', 'Accept': 'application/json',
                    'User-Agent': 'cars-pre-traffic-check'}, **(headers or {}))
    resource = resource or path
    context = {'resourcePath': resource, 'httpMethod': method, 'path': '/%s%s' % (STAGE, path),
               'stage': STAGE, 'requestId': 'pre-traffic-' + uuid.uuid4().hex,
               'identity': {'sourceIp': '127.0.0.1', 'userAgent': headers['User-Agent']}}
    if principal:
        context['authorizer'] = {'principalId': principal}
    return {
        'resource': resource, 'path': path, 'httpMethod': method, 'headers': headers,
        'multiValueHeaders': {k: [v] for k, v in headers.items()},
        'queryStringParameters': query or None,
        'multiValueQueryStringParameters': {k: [v] for k, v in query.items()} if query else None,
        'pathParameters': path_parameters, 'stageVariables': None, 'requestContext': context,
        'body': json.dumps(body) if body is not None else None, 'isBase64Encoded': False,
    }


def token_event(function_arn, region):
    """A TOKEN authorizer event carrying a token nobody holds."""
    parts = function_arn.split(':')
    account = parts[4] if len(parts) > 4 and parts[4] else '000000000000'
    return {'type': 'TOKEN', 'authorizationToken': 'Bearer pre-traffic-' + uuid.uuid4().hex,
            'methodArn': 'arn:aws:execute-api:%s:%s:pretraffic/%s/POST/api/v1/cars'
                         % (region, account, STAGE)}


# --- expectations: each returns None when met, else why not ------------------------

def _response(error, payload):
    if error:
        raise AssertionError('the function raised: %s' % _short(payload))
    if not isinstance(payload, dict) or 'statusCode' not in payload:
        raise AssertionError('not a proxy response: %s' % _short(payload))
    headers = {k.lower(): v for k, v in (payload.get('headers') or {}).items()}
    for name, values in (payload.get('multiValueHeaders') or {}).items():
        headers[name.lower()] = ', '.join(values)
    text = payload.get('body') or ''
    if payload.get('isBase64Encoded'):
        text = base64.b64decode(text).decode('utf-8')
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    return payload['statusCode'], headers, body


def _short(value):
    text = json.dumps(value, default=str)
    return text if len(text) <= 300 else text[:300] + '...'


def _status(status, wanted, body):
    if status != wanted:
        return 'status %s, expected %s: %s' % (status, wanted, _short(body))
    return None


def expect_health(error, payload):
    status, _, body = _response(error, payload)
    why = _status(status, 200, body)
    if why is None and not (isinstance(body, dict) and body.get('status') == 'ok'):
        why = 'body %s, expected {"status": "ok", ...}' % _short(body)
    return why


def expect_page(error, payload):
    status, _, body = _response(error, payload)
    why = _status(status, 200, body)
    if why is None and not (isinstance(body, dict) and isinstance(body.get('cars'), list)):
        why = 'body %s has no "cars" list' % _short(body)
    return why


def expect_problem(wanted):
    def expect(error, payload):
        status, headers, body = _response(error, payload)
        why = _status(status, wanted, body)
        if why is None and not headers.get('content-type', '').startswith(PROBLEM):
            why = 'Content-Type %r, expected %s' % (headers.get('content-type'), PROBLEM)
        if why is None and not (isinstance(body, dict) and body.get('status') == wanted):
            why = 'not a %d problem body: %s' % (wanted, _short(body))
        return why
    expect.__name__ = 'expect_problem_%d' % wanted
    return expect


def expect_car_or_404(car_id):
    not_found = expect_problem(404)

    def expect(error, payload):
        status, _, body = _response(error, payload)
        if status != 200:
            return not_found(error, payload)
        if not (isinstance(body, dict) and body.get('id') == car_id):
            return 'body %s, expected car %s' % (_short(body), car_id)
        return None
    return expect


def expect_refusal(error, payload):
    """The authorizer turned the token away: "Unauthorized" raised, or no Allow."""
    if error:
        message = (payload or {}).get('errorMessage') if isinstance(payload, dict) else None
        return None if message == 'Unauthorized' else 'the authorizer raised %s' % _short(payload)
    if not isinstance(payload, dict) or 'policyDocument' not in payload:
        return 'not an authorizer response: %s' % _short(payload)
    allowed = [s for s in payload['policyDocument'].get('Statement', [])
               if s.get('Effect') == 'Allow' and s.get('Resource')]
    if allowed or payload.get('principalId') == PRINCIPAL:
        return 'a bogus token was ALLOWED: %s' % _short(payload)
    return None


# --- the checks ------------------------------------------------------------------------

def _flag(value):
    return (value or '').strip().lower() in ('1', 'true', 'yes', 'on')


def checks(env):
    """[(name, function ARN, event, expectation)] for the configured targets."""
    api = (env.get(TARGET_API) or '').strip()
    if not api:
        raise ValueError('%s is not set: no version to check' % TARGET_API)
    cars, one = '/api/v1/cars', '/api/v1/cars/{car_id}'
    found = [
        ('GET /api/v1/health', api, rest_event('GET', '/api/v1/health'), expect_health),
        ('GET /api/v1/cars?limit=1', api,
         rest_event('GET', cars, query={'limit': '1'}, principal=PRINCIPAL), expect_page),
        ('GET /api/v1/cars/%s' % READ_ID, api,
         rest_event('GET', '%s/%s' % (cars, READ_ID), one,
                    path_parameters={'car_id': READ_ID}, principal=PRINCIPAL),
         expect_car_or_404(READ_ID)),
    ]
    json_body = {'Content-Type': 'application/json'}
    if _flag(env.get(TOKENS_ON)):
        found.append(('POST /api/v1/cars behind the authorizer, two credentials', api,
                      rest_event('POST', cars, body=INVALID_CAR, principal=PRINCIPAL,
                                 headers=dict(json_body, Authorization=(
                                     'Bearer pre-traffic-a, Bearer pre-traffic-b'))),
                      expect_problem(400)))
    else:
        found.append(('POST /api/v1/cars, year 1700', api,
                      rest_event('POST', cars, body=INVALID_CAR, headers=json_body),
                      expect_problem(422)))
    authorizer = (env.get(TARGET_AUTHORIZER) or '').strip()
    if authorizer:
        region = env.get('AWS_REGION') or env.get('AWS_DEFAULT_REGION') or 'us-east-1'
        found.append(('authorizer, bogus token', authorizer,
                      token_event(authorizer, region), expect_refusal))
    return found


def run_checks(invoke, env):
    """The failures, one line each (empty: every check passed)."""
    failures = []
    for name, target, event, expect in checks(env):
        try:
            why = expect(*invoke(target, event))
        except Exception as e:  # noqa: BLE001 - a check that cannot run has failed
            why = '%s: %s' % (type(e).__name__, e)
        if why:
            failures.append('%s: %s' % (name, why))
    return failures


def handle(event, invoke=None, report=None, env=None):
    """The hook: run the checks, report the outcome to CodeDeploy, return it."""
    env = os.environ if env is None else env
    try:
        failures = run_checks(invoke or invoke_lambda, env)
    except Exception as e:  # noqa: BLE001 - anything unexpected fails the deployment
        failures = ['the checks could not run: %s: %s' % (type(e).__name__, e)]
    for failure in failures:
        log.error('pre-traffic check failed: %s', failure)
    status = 'Failed' if failures else 'Succeeded'
    log.info('pre-traffic checks of %s: %s', env.get(TARGET_API), status)
    (report or report_status)(event['DeploymentId'], event['LifecycleEventHookExecutionId'],
                              status)
    return {'status': status, 'failures': failures}
