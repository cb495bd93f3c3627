"""Monitoring in the deployment template: every function, queue, API, table and stream watched.

Both stages are packaged as `make package` does and run through the SAM
transform (deploy/translate.py), so the assertions hold for the resources
CloudFormation would really create, including functions added to app.py later.
"""
import glob
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import ids  # noqa: E402
import monitoring  # noqa: E402

STAGES = ('dev', 'prod')


@pytest.fixture(scope='module')
def templates(packaged_stages):
    """{stage: (SAM template path, translated CloudFormation template)}, packaged offline."""
    return {stage: (str(p.sam_path), p.cfn) for stage, p in packaged_stages.items()}


def of_type(template, kind):
    return {rid: r for rid, r in template['Resources'].items() if r['Type'] == kind}


def alarms_on(template, namespace, metric):
    """{alarm id: {dimension name: value}} for the plain alarms on one metric."""
    out = {}
    for rid, alarm in of_type(template, 'AWS::CloudWatch::Alarm').items():
        props = alarm['Properties']
        if props.get('Namespace') == namespace and props.get('MetricName') == metric:
            out[rid] = {d['Name']: d['Value'] for d in props['Dimensions']}
    return out


@pytest.mark.parametrize('stage', STAGES)
def test_every_function_logs_json_at_the_stage_level(templates, stage):
    cfn = templates[stage][1]
    functions = of_type(cfn, 'AWS::Lambda::Function')
    assert set(ids.FUNCTIONS) <= set(functions)
    for fn in functions.values():
        props = fn['Properties']
        assert props['LoggingConfig'] == {'LogFormat': 'JSON', 'SystemLogLevel': 'WARN',
                                          'ApplicationLogLevel': {'Ref': 'ApplicationLogLevel'}}
        assert props['Environment']['Variables']['CARS_STAGE'] == stage
    level = cfn['Parameters']['ApplicationLogLevel']
    assert level['Default'] == 'INFO'
    # The EMF metric lines are INFO lines: a higher level would drop them.
    assert 'WARN' not in level['AllowedValues'] and 'ERROR' not in level['AllowedValues']


@pytest.mark.parametrize('stage', STAGES)
def test_every_function_has_error_and_throttle_alarms(templates, stage):
    cfn = templates[stage][1]
    functions = set(of_type(cfn, 'AWS::Lambda::Function'))
    for metric in ('Errors', 'Throttles'):
        watched = {dims['FunctionName']['Ref'] for dims in
                   alarms_on(cfn, 'AWS/Lambda', metric).values()}
        assert watched == functions, metric


@pytest.mark.parametrize('stage', STAGES)
def test_every_dead_letter_queue_alarms_on_its_first_message(templates, stage):
    cfn = templates[stage][1]
    queues = {rid for rid in of_type(cfn, 'AWS::SQS::Queue') if rid.endswith('DeadLetterQueue')}
    assert queues
    alarms = alarms_on(cfn, 'AWS/SQS', 'ApproximateNumberOfMessagesVisible')
    assert {dims['QueueName']['Fn::GetAtt'][0] for dims in alarms.values()} == queues
    for rid in alarms:
        props = cfn['Resources'][rid]['Properties']
        assert (props['Threshold'], props['ComparisonOperator']) == (0, 'GreaterThanThreshold')


@pytest.mark.parametrize('stage', STAGES)
def test_the_api_alarms_watch_this_stages_api_by_its_name(templates, stage):
    cfn = templates[stage][1]
    (api,) = of_type(cfn, 'AWS::ApiGateway::RestApi').values()
    (api_stage,) = of_type(cfn, 'AWS::ApiGateway::Stage').values()
    name = api['Properties']['Name']
    assert name == api['Properties']['Body']['info']['title'] == 'cars-%s' % stage
    dims = {'ApiName': name, 'Stage': api_stage['Properties']['StageName']}
    assert list(alarms_on(cfn, 'AWS/ApiGateway', '5XXError').values()) == [dims]
    (latency,) = alarms_on(cfn, 'AWS/ApiGateway', 'Latency')
    assert cfn['Resources'][latency]['Properties']['ExtendedStatistic'] == 'p99'


@pytest.mark.parametrize('stage', STAGES)
def test_the_stream_consumer_and_the_table_are_watched(templates, stage):
    cfn = templates[stage][1]
    (consumer,) = [m['Properties']['FunctionName']['Ref']
                   for m in of_type(cfn, 'AWS::Lambda::EventSourceMapping').values()
                   if m['Properties']['EventSourceArn'] == {
                       'Fn::GetAtt': [ids.TABLE, 'StreamArn']}]
    resources = cfn['Resources']
    if resources[consumer]['Type'] == 'AWS::Lambda::Alias':
        # The mapping invokes the live alias; the metric is the function's.
        consumer = resources[consumer]['Properties']['FunctionName']['Ref']
    ages = alarms_on(cfn, 'AWS/Lambda', 'IteratorAge')
    assert [d['FunctionName']['Ref'] for d in ages.values()] == [consumer]
    throttles = cfn['Resources']['TableThrottlesAlarm']['Properties']['Metrics']
    watched = {(q['MetricStat']['Metric']['MetricName'],
                q['MetricStat']['Metric']['Dimensions'][0]['Value']['Ref'])
               for q in throttles if 'MetricStat' in q}
    assert watched == {('ReadThrottleEvents', ids.TABLE), ('WriteThrottleEvents', ids.TABLE)}


@pytest.mark.parametrize('stage', STAGES)
def test_every_alarm_notifies_the_topic_and_an_email_is_optional(templates, stage):
    cfn = templates[stage][1]
    assert cfn['Resources']['AlarmTopic']['Type'] == 'AWS::SNS::Topic'
    for alarm in of_type(cfn, 'AWS::CloudWatch::Alarm').values():
        assert alarm['Properties']['AlarmActions'] == [{'Ref': 'AlarmTopic'}]
        assert alarm['Properties']['TreatMissingData'] == 'notBreaching'
    (subscription,) = of_type(cfn, 'AWS::SNS::Subscription').values()
    assert subscription['Condition'] == 'HasAlarmEmail'
    assert cfn['Parameters']['AlarmEmail']['Default'] == ''


@pytest.mark.parametrize('stage', STAGES)
def test_the_dashboard_shows_every_alarm_function_queue_and_metric(templates, stage):
    cfn = templates[stage][1]
    (dashboard,) = of_type(cfn, 'AWS::CloudWatch::Dashboard').values()
    body_text = dashboard['Properties']['DashboardBody']['Fn::Sub']
    body = json.loads(body_text)
    alarms = set(of_type(cfn, 'AWS::CloudWatch::Alarm'))
    (alarm_widget,) = [w for w in body['widgets'] if w['type'] == 'alarm']
    assert set(alarm_widget['properties']['alarms']) == {'${%s.Arn}' % a for a in alarms}
    for fn in of_type(cfn, 'AWS::Lambda::Function'):
        assert '"${%s}"' % fn in body_text
    for queue in of_type(cfn, 'AWS::SQS::Queue'):
        if queue.endswith('DeadLetterQueue'):
            assert '"${%s.QueueName}"' % queue in body_text
    shown = {m[1] for w in body['widgets'] if w['type'] == 'metric'
             for m in w['properties']['metrics'] if m[0] == monitoring.METRICS_NAMESPACE}
    assert shown == emitted_metric_names()
    for w in body['widgets']:
        for m in w['properties'].get('metrics', ()):
            if m[0] == monitoring.METRICS_NAMESPACE:
                assert m[2:4] == ['stage', stage]


def emitted_metric_names():
    """The metric names the app's code counts (observability.count and the write table)."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, 'chalicelib', '**', '*.py'), recursive=True):
        with open(path) as f:
            text = f.read()
        names.update(re.findall(r"observability\.count\('(\w+)'", text))
    from chalicelib import observability
    names.update(metric for _, metric in observability._DONE.values())
    return names


def test_dead_letter_queues_added_later_are_found_by_their_id():
    template = {'Resources': {
        'CarsIngestDeadLetterQueue': {'Type': 'AWS::SQS::Queue'},
        'CarsImportDeadLetterQueue': {'Type': 'AWS::SQS::Queue'},
        'CarsIngestQueue': {'Type': 'AWS::SQS::Queue'},
    }}
    monitoring.add(template, 'dev')
    assert {'CarsIngestDeadLetterQueueMessagesAlarm',
            'CarsImportDeadLetterQueueMessagesAlarm'} <= set(template['Resources'])
    assert 'CarsIngestQueueMessagesAlarm' not in template['Resources']
