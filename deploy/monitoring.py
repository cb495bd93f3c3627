"""Monitoring, per stage: the functions' log settings, alarms, an alarm topic, a dashboard.

`add(template, stage)` adds them to the merge template deploy/resources.py
builds. What each alarm means and what to do when it fires is in
docs/operations.md.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# deploy/ is not a package; the repository root holds chalicelib.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), ROOT]

from ids import API_HANDLER, FUNCTIONS, LIVE_ALIAS, REST_API, TABLE  # noqa: E402
from ids import PUBLISH_CHANGES as STREAM_CONSUMER  # noqa: E402
from ids import TOKEN_AUTHORIZER as AUTHORIZER  # noqa: E402
from chalicelib.observability import NAMESPACE as METRICS_NAMESPACE  # noqa: E402

API_STAGE = 'api'

ALARM_TOPIC = 'AlarmTopic'
ALARM_EMAIL = 'AlarmEmail'
HAS_ALARM_EMAIL = 'HasAlarmEmail'
LOG_LEVEL = 'ApplicationLogLevel'
DASHBOARD = 'OperationsDashboard'

STAGES = {
    'dev': {'log_level': 'INFO', 'latency_p99_ms': 3000},
    'prod': {'log_level': 'INFO', 'latency_p99_ms': 2000},
}

# The share of requests answered 5XX (API Gateway's 5XXError is 1 or 0 per
# request, so its average is the rate) that alarms, over 3 of 5 minutes.
SERVER_ERROR_RATE = 0.05
# The authorizer raises "Unauthorized" for every malformed Authorization
# header (that is how API Gateway is told to answer 401), so a few errors are
# callers' mistakes; a failing SSM read makes every request fail.
AUTHORIZER_ERRORS = 10
# Change events later than this (ms) mean the stream consumer is stuck.
ITERATOR_AGE_MS = 5 * 60 * 1000


def api_name(stage):
    """The REST API's name, which API Gateway's metrics carry as ApiName.

    Chalice names it after the app (the document's title, `cars`) in every
    stage; one name per stage keeps two stages in one account apart.
    """
    return 'cars-%s' % stage


def dead_letter_queues(template):
    """The queues whose logical id ends with DeadLetterQueue."""
    return sorted(rid for rid, r in template.get('Resources', {}).items()
                  if r.get('Type') == 'AWS::SQS::Queue' and rid.endswith('DeadLetterQueue'))


def _alarm(description, namespace, metric, dimensions, threshold, period=300,
           evaluation_periods=1, datapoints=None, statistic='Sum', extended=None,
           missing='notBreaching'):
    props = {
        'AlarmDescription': description,
        'Namespace': namespace,
        'MetricName': metric,
        'Dimensions': [{'Name': k, 'Value': v} for k, v in dimensions],
        'Period': period,
        'EvaluationPeriods': evaluation_periods,
        'DatapointsToAlarm': datapoints or evaluation_periods,
        'Threshold': threshold,
        'ComparisonOperator': 'GreaterThanThreshold',
        'TreatMissingData': missing,
        'AlarmActions': [{'Ref': ALARM_TOPIC}],
        'OKActions': [{'Ref': ALARM_TOPIC}],
    }
    if extended:
        props['ExtendedStatistic'] = extended
    else:
        props['Statistic'] = statistic
    return {'Type': 'AWS::CloudWatch::Alarm', 'Properties': props}


def alarms(stage, functions=FUNCTIONS, queues=()):
    settings = STAGES[stage]
    api = [('ApiName', api_name(stage)), ('Stage', API_STAGE)]
    out = {
        'ApiServerErrorRateAlarm': _alarm(
            'More than %d%% of API requests answered 5XX in 3 of 5 minutes.'
            % (SERVER_ERROR_RATE * 100), 'AWS/ApiGateway', '5XXError', api,
            SERVER_ERROR_RATE, period=60, evaluation_periods=5, datapoints=3,
            statistic='Average'),
        'ApiLatencyP99Alarm': _alarm(
            'API p99 latency above %d ms in 2 of 3 five-minute periods.'
            % settings['latency_p99_ms'], 'AWS/ApiGateway', 'Latency', api,
            settings['latency_p99_ms'], evaluation_periods=3, datapoints=2, extended='p99'),
        'StreamIteratorAgeAlarm': _alarm(
            'Change events are more than %d minutes behind the table.'
            % (ITERATOR_AGE_MS // 60000), 'AWS/Lambda', 'IteratorAge',
            [('FunctionName', {'Ref': STREAM_CONSUMER})], ITERATOR_AGE_MS,
            statistic='Maximum'),
    }
    for fn in functions:
        errors = AUTHORIZER_ERRORS if fn == AUTHORIZER else 0
        out['%sErrorsAlarm' % fn] = _alarm(
            '%s: more than %d failed invocations in 5 minutes.' % (fn, errors),
            'AWS/Lambda', 'Errors', [('FunctionName', {'Ref': fn})], errors)
        out['%sThrottlesAlarm' % fn] = _alarm(
            '%s: invocations throttled (concurrency limit).' % fn,
            'AWS/Lambda', 'Throttles', [('FunctionName', {'Ref': fn})], 0)
    for queue in queues:
        out['%sMessagesAlarm' % queue] = _alarm(
            '%s holds messages that failed every delivery.' % queue, 'AWS/SQS',
            'ApproximateNumberOfMessagesVisible',
            [('QueueName', {'Fn::GetAtt': [queue, 'QueueName']})], 0, statistic='Maximum')
    # Read and write throttles together: on-demand tables throttle only past
    # the account's or a partition's limits, and either way callers get 503s.
    table = [{'Name': 'TableName', 'Value': {'Ref': TABLE}}]
    out['TableThrottlesAlarm'] = {'Type': 'AWS::CloudWatch::Alarm', 'Properties': {
        'AlarmDescription': 'DynamoDB throttled reads or writes on the cars table.',
        'Metrics': [
            {'Id': 'reads', 'ReturnData': False, 'MetricStat': {
                'Metric': {'Namespace': 'AWS/DynamoDB', 'MetricName': 'ReadThrottleEvents',
                           'Dimensions': table}, 'Period': 300, 'Stat': 'Sum'}},
            {'Id': 'writes', 'ReturnData': False, 'MetricStat': {
                'Metric': {'Namespace': 'AWS/DynamoDB', 'MetricName': 'WriteThrottleEvents',
                           'Dimensions': table}, 'Period': 300, 'Stat': 'Sum'}},
            {'Id': 'throttles', 'Label': 'throttled requests', 'ReturnData': True,
             'Expression': 'FILL(reads, 0) + FILL(writes, 0)'},
        ],
        'EvaluationPeriods': 1, 'DatapointsToAlarm': 1, 'Threshold': 0,
        'ComparisonOperator': 'GreaterThanThreshold', 'TreatMissingData': 'notBreaching',
        'AlarmActions': [{'Ref': ALARM_TOPIC}], 'OKActions': [{'Ref': ALARM_TOPIC}],
    }}
    return out


# --- the alarms that roll a release back ------------------------------------------

# The API-wide alarms that mean "this release is bad" for the functions that
# serve requests (the authorizer's failures are the API's 5XX answers too).
API_RELEASE_ALARMS = ('ApiServerErrorRateAlarm', 'ApiLatencyP99Alarm')


def new_version_number(function):
    """The number of the version this deploy published: the last field of
    SAM's `<Function>.Version` ARN (arn:aws:lambda:<region>:<account>:function:<name>:<n>)."""
    return {'Fn::Select': [7, {'Fn::Split': [':', {'Ref': '%s.Version' % function}]}]}


def release_alarm_id(function):
    return '%sNewVersionErrorsAlarm' % function


def release_alarms(functions=FUNCTIONS):
    """(alarm resources, {function: the alarms CodeDeploy watches for it}).

    Each function's Errors of the version being released only: Lambda's
    metrics of an invocation through an alias carry the dimensions
    FunctionName, Resource (`<function>:<alias>`) and ExecutedVersion (the
    version that ran), so during a canary the old version's errors do not
    count. One-minute periods: the canary lasts 5 minutes.
    """
    resources, watched = {}, {}
    for fn in functions:
        errors = AUTHORIZER_ERRORS if fn == AUTHORIZER else 0
        resources[release_alarm_id(fn)] = _alarm(
            '%s: the version being released failed more than %d invocations in a minute '
            '(rolls the release back).' % (fn, errors), 'AWS/Lambda', 'Errors',
            [('FunctionName', {'Ref': fn}),
             ('Resource', {'Fn::Sub': '${%s}:%s' % (fn, LIVE_ALIAS)}),
             ('ExecutedVersion', new_version_number(fn))], errors, period=60)
        watched[fn] = [release_alarm_id(fn)] + (
            list(API_RELEASE_ALARMS) if fn in (API_HANDLER, AUTHORIZER) else [])
    return resources, watched


# --- the dashboard ------------------------------------------------------------------

def _metric_widget(title, metrics, x, y, stat='Sum', width=8, height=6, period=300):
    return {'type': 'metric', 'x': x, 'y': y, 'width': width, 'height': height,
            'properties': {'title': title, 'view': 'timeSeries', 'stacked': False,
                           'region': '${AWS::Region}', 'stat': stat, 'period': period,
                           'metrics': metrics}}


def dashboard_body(stage, functions=FUNCTIONS, queues=(), alarm_ids=()):
    """The dashboard's JSON, for Fn::Sub: ${Id} names a resource, ${Id.Attr} its attribute."""
    api = ['ApiName', api_name(stage), 'Stage', API_STAGE]
    ns = METRICS_NAMESPACE

    def per_function(metric, stat=None):
        return [['AWS/Lambda', metric, 'FunctionName', '${%s}' % fn,
                 dict({'label': fn}, **({'stat': stat} if stat else {}))] for fn in functions]

    def business(*names):
        return [[ns, name, 'stage', stage] for name in names]

    widgets = [
        {'type': 'alarm', 'x': 0, 'y': 0, 'width': 24, 'height': 4,
         'properties': {'title': 'Alarms (cars-%s)' % stage,
                        'alarms': ['${%s.Arn}' % a for a in alarm_ids]}},
        _metric_widget('API requests and errors', [
            ['AWS/ApiGateway', 'Count'] + api + [{'label': 'requests'}],
            ['AWS/ApiGateway', '4XXError'] + api + [{'label': '4XX'}],
            ['AWS/ApiGateway', '5XXError'] + api + [{'label': '5XX'}]], 0, 4, period=60),
        _metric_widget('API latency (ms)', [
            ['AWS/ApiGateway', 'Latency'] + api + [{'stat': 'p50', 'label': 'p50'}],
            ['AWS/ApiGateway', 'Latency'] + api + [{'stat': 'p99', 'label': 'p99'}],
            ['AWS/ApiGateway', 'IntegrationLatency'] + api + [
                {'stat': 'p99', 'label': 'integration p99'}]], 8, 4, stat='p99', period=60),
        _metric_widget('Car writes (API)', business('CarsCreated', 'CarsUpdated', 'CarsDeleted'),
                       16, 4),
        _metric_widget('Function errors', per_function('Errors'), 0, 10),
        _metric_widget('Function throttles', per_function('Throttles'), 8, 10),
        _metric_widget('Function duration p99 (ms)', per_function('Duration', 'p99'), 16, 10,
                       stat='p99'),
        _metric_widget('Queue ingest', business('IngestMessagesAccepted',
                                                'IngestMessagesRejected',
                                                'IngestMessagesRetried'), 0, 16),
        _metric_widget('Imports and change events', business(
            'ImportRowsWritten', 'ImportRowsRefused', 'ChangeEventsPublished'), 8, 16),
        _metric_widget('Dead-letter queues (messages)', [
            ['AWS/SQS', 'ApproximateNumberOfMessagesVisible', 'QueueName',
             '${%s.QueueName}' % q, {'label': q}] for q in queues], 16, 16, stat='Maximum'),
        _metric_widget('Change events behind the table (ms)', [
            ['AWS/Lambda', 'IteratorAge', 'FunctionName', '${%s}' % STREAM_CONSUMER,
             {'label': 'iterator age'}]], 0, 22, stat='Maximum'),
        _metric_widget('DynamoDB throttles', [
            ['AWS/DynamoDB', 'ReadThrottleEvents', 'TableName', '${%s}' % TABLE],
            ['AWS/DynamoDB', 'WriteThrottleEvents', 'TableName', '${%s}' % TABLE]], 8, 22),
        _metric_widget('DynamoDB capacity used', [
            ['AWS/DynamoDB', 'ConsumedReadCapacityUnits', 'TableName', '${%s}' % TABLE],
            ['AWS/DynamoDB', 'ConsumedWriteCapacityUnits', 'TableName', '${%s}' % TABLE]],
            16, 22),
    ]
    return json.dumps({'widgets': widgets}, separators=(',', ':'))


# --- the whole of it ----------------------------------------------------------------------

def add(template, stage, functions=FUNCTIONS, queues=None, released=()):
    """Add the stage's monitoring to `template` (a merge template dict) and return it.

    `queues` are the dead-letter queues to watch; by default every SQS queue
    in the template whose logical id ends with DeadLetterQueue. `released`:
    the functions released through CodeDeploy, each with an alarm on its new
    version's errors (see release_alarms).
    """
    settings = STAGES[stage]
    queues = dead_letter_queues(template) if queues is None else list(queues)
    resources = template.setdefault('Resources', {})

    template.setdefault('Parameters', {}).update({
        ALARM_EMAIL: {
            'Type': 'String', 'Default': '',
            'Description': 'An email address to subscribe to the alarm topic (it must '
                           'confirm the subscription); empty means none.'},
        LOG_LEVEL: {
            'Type': 'String', 'Default': settings['log_level'],
            'AllowedValues': ['TRACE', 'DEBUG', 'INFO'],
            'Description': 'The functions\' application log level. Not above INFO: the '
                           'metrics are INFO-level lines.'},
    })
    template.setdefault('Conditions', {})[HAS_ALARM_EMAIL] = {
        'Fn::Not': [{'Fn::Equals': [{'Ref': ALARM_EMAIL}, '']}]}

    # Globals: a function added to app.py logs JSON through the runtime too.
    function_globals = template.setdefault('Globals', {}).setdefault('Function', {})
    function_globals['LoggingConfig'] = {
        'LogFormat': 'JSON', 'ApplicationLogLevel': {'Ref': LOG_LEVEL},
        'SystemLogLevel': 'WARN'}
    variables = function_globals.setdefault('Environment', {}).setdefault('Variables', {})
    variables['CARS_STAGE'] = stage  # the metrics' `stage` dimension

    # API Gateway's metrics name the API (see api_name). The document's title
    # is set too, so the name is the same whichever of the two API Gateway reads.
    api_props = resources.setdefault(REST_API, {}).setdefault('Properties', {})
    api_props['Name'] = api_name(stage)
    api_props.setdefault('DefinitionBody', {}).setdefault('info', {})['title'] = api_name(stage)

    # Not encrypted: CloudWatch cannot publish to a topic under the AWS managed
    # SNS key, and an alarm's message holds nothing confidential.
    resources[ALARM_TOPIC] = {'Type': 'AWS::SNS::Topic', 'Properties': {
        'DisplayName': 'cars-%s alarms' % stage}}
    resources['AlarmEmailSubscription'] = {
        'Type': 'AWS::SNS::Subscription', 'Condition': HAS_ALARM_EMAIL,
        'Properties': {'TopicArn': {'Ref': ALARM_TOPIC}, 'Protocol': 'email',
                       'Endpoint': {'Ref': ALARM_EMAIL}}}
    stage_alarms = alarms(stage, functions, queues)
    stage_alarms.update(release_alarms(released)[0])
    resources.update(stage_alarms)
    resources[DASHBOARD] = {'Type': 'AWS::CloudWatch::Dashboard', 'Properties': {
        'DashboardName': {'Fn::Sub': '${AWS::StackName}'},
        'DashboardBody': {'Fn::Sub': dashboard_body(stage, functions, queues,
                                                    sorted(stage_alarms))}}}

    template.setdefault('Outputs', {}).update({
        'AlarmTopicArn': {'Value': {'Ref': ALARM_TOPIC}},
        'DashboardUrl': {'Value': {'Fn::Sub': (
            'https://${AWS::Region}.console.aws.amazon.com/cloudwatch/home?region='
            '${AWS::Region}#dashboards:name=${%s}' % DASHBOARD)}},
        'ApiHandlerLogGroup': {'Value': {'Fn::Sub': '/aws/lambda/${%s}' % API_HANDLER}},
    })
    return template
