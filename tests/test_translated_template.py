"""The stacks as CloudFormation builds them: each stage packaged, then the SAM transform
applied offline (deploy/translate.py), which adds and leaves out what the SAM template
alone does not show.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import ids  # noqa: E402
import package  # noqa: E402
import policies  # noqa: E402
import resources  # noqa: E402

STAGES = sorted(resources.STAGES)
FUNCTIONS = sorted(ids.FUNCTIONS)


@pytest.fixture(scope='module')
def stacks(packaged_stages):
    """{stage: {'sam': path, 'cfn': path, 'template': translated template}}
    (packaged once per session, offline: tests/stage_packages.py)."""
    return {stage: {'sam': p.sam_path, 'cfn': p.cfn_path, 'template': p.cfn}
            for stage, p in packaged_stages.items()}


def of_type(template, kind):
    return {k: v for k, v in template['Resources'].items() if v['Type'] == kind}


def functions(template):
    # The functions that serve traffic; the pre-traffic hook is checked apart
    # (test_the_pre_traffic_hook_*, at the end).
    return {k: v for k, v in of_type(template, 'AWS::Lambda::Function').items()
            if k != ids.PRE_TRAFFIC_CHECK}


def each_stage(stacks):
    for stage in STAGES:
        yield stage, stacks[stage]['template']


# --- a small evaluator for the template's conditions, for parameter values -----

def _value(node, params):
    if isinstance(node, dict):
        (fn, arg), = node.items()
        if fn == 'Ref':
            return params[arg]
        if fn == 'Fn::Split':
            return _value(arg[1], params).split(arg[0])
        if fn == 'Fn::Select':
            return _value(arg[1], params)[arg[0]]
        if fn == 'Fn::Sub':
            return re.sub(r'\$\{(\w+)\}', lambda m: params[m.group(1)], arg)
        raise AssertionError('not evaluated here: %s' % fn)
    return node


def _condition(name, template, params):
    def holds(node):
        (fn, arg), = node.items()
        if fn == 'Condition':
            return holds(template['Conditions'][arg])
        if fn == 'Fn::Equals':
            return _value(arg[0], params) == _value(arg[1], params)
        if fn == 'Fn::And':
            return all(holds(a) for a in arg)
        if fn == 'Fn::Or':
            return any(holds(a) for a in arg)
        if fn == 'Fn::Not':
            return not holds(arg[0])
        raise AssertionError('not a condition function: %s' % fn)
    return holds(template['Conditions'][name])


def resolved(node, template, params):
    """`node` with Fn::If and Fn::Sub of parameters evaluated for `params`."""
    if isinstance(node, list):
        return [resolved(n, template, params) for n in node]
    if isinstance(node, dict):
        if set(node) == {'Fn::If'}:
            name, yes, no = node['Fn::If']
            return resolved(yes if _condition(name, template, params) else no, template, params)
        if set(node) == {'Fn::Sub'} and isinstance(node['Fn::Sub'], str):
            return _value(node, params)
        return {k: resolved(v, template, params) for k, v in node.items()}
    return node


# --- the tests -------------------------------------------------------------------

def test_only_the_api_stage_exists(stacks):
    for stage, template in each_stage(stacks):
        stages = of_type(template, 'AWS::ApiGateway::Stage')
        assert [s['Properties']['StageName'] for s in stages.values()] == ['api'], stage
        # A Deployment with a StageName creates a stage of its own ("Stage").
        for name, deployment in of_type(template, 'AWS::ApiGateway::Deployment').items():
            assert 'StageName' not in deployment['Properties'], (stage, name)


@pytest.mark.parametrize('origins,expected', [
    ('', None),
    ('https://app.example.com', 'https://app.example.com'),
    ('*', '*'),
    # API Gateway cannot echo one of several: no origin gets the header
    # (see resources.cors_conditions).
    ('https://a.example.com,https://b.example.com', None),
])
def test_every_gateway_response_carries_the_stages_cors_headers(stacks, origins, expected):
    for stage, template in each_stage(stacks):
        body = template['Resources'][ids.REST_API]['Properties']['Body']
        answers = body['x-amazon-apigateway-gateway-responses']
        assert set(answers) == set(resources.GATEWAY_PROBLEMS)
        params = {'CorsOrigins': origins}
        for kind, answer in answers.items():
            headers = resolved(answer['responseParameters'], template, params)
            origin = headers.get('gatewayresponse.header.Access-Control-Allow-Origin')
            assert origin == (None if expected is None else "'%s'" % expected), (stage, kind)
            if expected:
                assert 'ETag' in headers['gatewayresponse.header.Access-Control-Expose-Headers']
            assert headers['gatewayresponse.header.Content-Type'] == \
                "'application/problem+json'"


def test_the_gateways_401_names_the_bearer_scheme(stacks):
    for stage, template in each_stage(stacks):
        answers = template['Resources'][ids.REST_API]['Properties']['Body'][
            'x-amazon-apigateway-gateway-responses']
        for origins in ('', 'https://app.example.com'):
            for kind, answer in answers.items():
                headers = resolved(answer['responseParameters'], template,
                                   {'CorsOrigins': origins})
                challenge = headers.get('gatewayresponse.header.WWW-Authenticate')
                if answer['statusCode'] == '401':
                    assert challenge == '\'Bearer realm="cars"\'', (stage, kind)
                else:
                    assert challenge is None, (stage, kind)


def _arn_of(ref, attribute='Arn'):
    """The logical id whose ARN `ref` is ({"Fn::GetAtt": [id, "Arn"]} or
    {"Fn::Sub": "${id.Arn}"}), or None."""
    if 'Fn::GetAtt' in ref and ref['Fn::GetAtt'][1] == attribute:
        return ref['Fn::GetAtt'][0]
    match = re.match(r'^\$\{(\w+)\.%s\}$' % attribute, str(ref.get('Fn::Sub')))
    return match.group(1) if match else None


def _queue_arn_target(ref, template):
    name = _arn_of(ref)
    assert name and template['Resources'][name]['Type'] == 'AWS::SQS::Queue', ref
    return name


def test_every_asynchronous_event_source_has_somewhere_for_failures_to_go(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        mappings = of_type(template, 'AWS::Lambda::EventSourceMapping')
        assert len(mappings) == 2
        for name, mapping in mappings.items():
            props = mapping['Properties']
            source = props['EventSourceArn']
            if _arn_of(source, 'StreamArn'):
                # A stream: retries are capped, then the batch's place in the
                # stream goes to a queue.
                assert props['MaximumRetryAttempts'] <= 10
                _queue_arn_target(props['DestinationConfig']['OnFailure']['Destination'],
                                  template)
            else:
                queue = _queue_arn_target(source, template)
                redrive = res[queue]['Properties']['RedrivePolicy']
                _queue_arn_target(redrive['deadLetterTargetArn'], template)
        rules = of_type(template, 'AWS::Events::Rule')
        assert len(rules) == 2
        for name, rule in rules.items():
            for target in rule['Properties']['Targets']:
                queue = _queue_arn_target(target['DeadLetterConfig']['Arn'], template)
                assert target['RetryPolicy']['MaximumRetryAttempts'] >= 1
                # EventBridge may write to that queue, for this rule.
                allowed = [s for p in of_type(template, 'AWS::SQS::QueuePolicy').values()
                           if {'Ref': queue} in p['Properties']['Queues']
                           for s in p['Properties']['PolicyDocument']['Statement']]
                assert any(s['Principal'] == {'Service': 'events.amazonaws.com'}
                           and {'Fn::GetAtt': [name, 'Arn']} in
                           s['Condition']['ArnEquals']['aws:SourceArn'] for s in allowed)
                # The function runs asynchronously: what fails every try goes too.
                function = res[_function_of(target['Arn'], template)]['Properties']
                _queue_arn_target(function['DeadLetterConfig']['TargetArn'], template)


def test_queue_and_stream_handlers_report_batch_item_failures(stacks):
    for stage, template in each_stage(stacks):
        for name, mapping in of_type(template, 'AWS::Lambda::EventSourceMapping').items():
            assert mapping['Properties']['FunctionResponseTypes'] == [
                'ReportBatchItemFailures'], (stage, name)


def test_every_queues_visibility_timeout_is_six_times_its_consumers(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        checked = 0
        for name, mapping in of_type(template, 'AWS::Lambda::EventSourceMapping').items():
            source = mapping['Properties']['EventSourceArn']
            if _arn_of(source, 'StreamArn'):
                continue
            queue = res[_queue_arn_target(source, template)]['Properties']
            consumer = res[_function_of(mapping['Properties']['FunctionName'],
                                        template)]['Properties']
            assert queue['VisibilityTimeout'] >= 6 * consumer['Timeout'], (stage, name)
            checked += 1
        assert checked == 1  # the ingest queue


def test_each_function_has_its_own_role_allowing_what_policies_py_says(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        expected = policies.build(stage)
        roles = {}
        for name, function in functions(template).items():
            role = function['Properties']['Role']['Fn::GetAtt'][0]
            roles[name] = role
            assert role == ids.ROLES[name]
            documents = [p['PolicyDocument'] for p in res[role]['Properties']['Policies']]
            assert documents == [expected[name]], (stage, name)
            assert 'ManagedPolicyArns' not in res[role]['Properties']
        assert sorted(roles) == FUNCTIONS
        assert len(set(roles.values())) == len(roles)
        # Nothing else in the stack grants the functions anything.
        assert not of_type(template, 'AWS::IAM::Policy')


# The per-stage figures as docs/deployment.md ("What the stack holds") states them,
# written out here rather than read from resources.STAGES, which builds the template.
LOG_RETENTION_DAYS = {'dev': 14, 'prod': 365}
# Old versions of overwritten or deleted objects, import reports, daily exports.
NONCURRENT_VERSION_DAYS = {'dev': 7, 'prod': 30}
EXPIRATION_DAYS = {'dev': {'reports/': 30, 'exports/': 14},
                   'prod': {'reports/': 365, 'exports/': 90}}
# "unfinished multipart uploads after a day"
MULTIPART_UPLOAD_DAYS = 1


def test_every_log_group_has_the_documented_retention(stacks):
    assert STAGES == sorted(LOG_RETENTION_DAYS)
    for stage, template in each_stage(stacks):
        retention = LOG_RETENTION_DAYS[stage]
        groups = of_type(template, 'AWS::Logs::LogGroup')
        for name, group in groups.items():
            assert group['Properties']['RetentionInDays'] == retention, (stage, name)
        named = {json.dumps(g['Properties'].get('LogGroupName')) for g in groups.values()}
        for function in functions(template):
            assert json.dumps({'Fn::Sub': '/aws/lambda/${%s}' % function}) in named
        # With no logs:CreateLogGroup, Lambda cannot make one without a retention.
        for role in of_type(template, 'AWS::IAM::Role').values():
            text = json.dumps(role['Properties'].get('Policies', []))
            assert 'logs:CreateLogGroup' not in text and 'logs:*' not in text


def test_the_bucket_expires_old_versions_reports_and_exports_after_the_documented_days(
        stacks):
    for stage, template in each_stage(stacks):
        rules = template['Resources'][resources.BUCKET]['Properties'][
            'LifecycleConfiguration']['Rules']
        assert all(r['Status'] == 'Enabled' for r in rules)
        everything = [r for r in rules if 'Prefix' not in r]
        assert len(everything) == 1, stage
        assert everything[0]['NoncurrentVersionExpiration'] == {
            'NoncurrentDays': NONCURRENT_VERSION_DAYS[stage]}, stage
        assert everything[0]['AbortIncompleteMultipartUpload'] == {
            'DaysAfterInitiation': MULTIPART_UPLOAD_DAYS}, stage
        # Nothing expires uploads under imports/ ("uploads under imports/ are kept").
        assert 'ExpirationInDays' not in everything[0], stage
        by_prefix = {r['Prefix']: r['ExpirationInDays'] for r in rules if 'Prefix' in r}
        assert by_prefix == EXPIRATION_DAYS[stage], stage


def _render_access_log(fmt, message):
    # API Gateway puts $context.error.messageString in quoted and escaped, the
    # other variables as they are.
    line = fmt.replace('$context.error.messageString', json.dumps(message))
    return re.sub(r'\$context\.[\w.]+', '1', line)


def test_the_access_log_line_is_json_even_with_a_quote_in_the_error(stacks):
    for stage, template in each_stage(stacks):
        fmt = template['Resources']['RestAPIapiStage']['Properties']['AccessLogSetting'][
            'Format']
        message = 'Invalid request body: unexpected "}" at 3'
        entry = json.loads(_render_access_log(fmt, message))
        assert entry['error'] == message
        assert '$context.error.message"' not in fmt


def test_the_account_wide_logging_role_is_created_only_when_asked(stacks):
    for stage, template in each_stage(stacks):
        param = template['Parameters']['CreateApiGatewayAccountRole']
        assert param['Default'] == 'false'
        res = template['Resources']
        for name in ('ApiGatewayLoggingRole', 'ApiGatewayAccount'):
            assert res[name]['Condition'] == 'CreateApiGatewayAccountRole'
            assert res[name]['DeletionPolicy'] == 'Retain'
        assert _condition('CreateApiGatewayAccountRole', template,
                          {'CreateApiGatewayAccountRole': 'false'}) is False
        # The API still waits for the account setting when the stack makes it.
        assert 'ApiGatewayAccountReady' in res[ids.REST_API]['DependsOn']
        metadata = res['ApiGatewayAccountReady']['Metadata']
        assert {'Ref': 'ApiGatewayAccount'} in metadata['AccountSetting']['Fn::If']


def test_every_function_and_the_stage_are_traced_by_xray(stacks):
    for stage, template in each_stage(stacks):
        for name, function in functions(template).items():
            assert function['Properties']['TracingConfig'] == {'Mode': 'Active'}, name
        stage_props = template['Resources']['RestAPIapiStage']['Properties']
        assert stage_props['TracingEnabled'] is True


def test_every_function_runs_python313_on_arm64(stacks):
    for stage, template in each_stage(stacks):
        assert sorted(functions(template)) == FUNCTIONS
        for name, function in functions(template).items():
            assert function['Properties']['Runtime'] == 'python3.13', (stage, name)
            assert function['Properties']['Architectures'] == ['arm64'], (stage, name)


def test_the_code_package_holds_arm64_python313_binaries_only(stacks):
    import zipfile
    for stage in STAGES:
        with zipfile.ZipFile(stacks[stage]['sam'].parent / 'deployment.zip') as z:
            binaries = [n for n in z.namelist() if n.endswith('.so')]
        assert binaries, 'msgspec ships a compiled extension'
        for name in binaries:
            assert 'cpython-313-aarch64-linux-gnu' in name, (stage, name)


def test_cfn_lint_finds_nothing_in_either_form_of_either_stage(stacks):
    files = [str(stacks[s][form]) for s in STAGES for form in ('sam', 'cfn')]
    lint = os.path.join(os.path.dirname(sys.executable), 'cfn-lint')
    result = subprocess.run([lint] + files, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ''


def test_packaging_refuses_any_python_but_the_runtimes():
    assert package.check_interpreter((3, 13, 1)) is None
    message = package.check_interpreter((3, 12, 4), '/usr/bin/python3.12')
    assert 'Python 3.13' in message and '3.12.4' in message
    assert 'pyenv install 3.13' in message and 'make clean && make' in message


def test_package_py_run_by_another_python_stops_before_packaging(tmp_path):
    other = next((p for p in (shutil.which('python3.11'), shutil.which('python3.12'))
                  if p and subprocess.run([p, '-c', 'import sys'],
                                          capture_output=True).returncode == 0), None)
    if other is None:
        pytest.skip('no Python other than 3.13 on this machine')
    result = subprocess.run([other, os.path.join(ROOT, 'deploy', 'package.py'),
                             '--stage', 'dev', str(tmp_path / 'out')],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'the functions run Python 3.13' in result.stderr
    assert not (tmp_path / 'out').exists()


# --- reserved concurrency, TLS-only queues and topics, the alarm topic's key --------
# (the figures are tests/test_template.py's RESERVED_CONCURRENCY, as documented)

def test_translated_functions_keep_their_reserved_concurrency_and_the_queue_its_ceiling(
        stacks):
    from test_template import RESERVED_CONCURRENCY
    for stage, template in each_stage(stacks):
        assert {k: f['Properties'].get('ReservedConcurrentExecutions')
                for k, f in functions(template).items()} == RESERVED_CONCURRENCY[stage]
        mappings = of_type(template, 'AWS::Lambda::EventSourceMapping')
        sqs, = [m['Properties'] for m in mappings.values()
                if ids.QUEUE in json.dumps(m['Properties']['EventSourceArn'])]
        assert sqs['ScalingConfig'] == {
            'MaximumConcurrency': RESERVED_CONCURRENCY[stage][ids.INGEST_QUEUE]}


def test_translated_stack_has_one_tls_only_policy_per_queue_and_topic_and_the_alarm_key(
        stacks):
    for stage, template in each_stage(stacks):
        queues = of_type(template, 'AWS::SQS::Queue')
        queue_policies = of_type(template, 'AWS::SQS::QueuePolicy').values()
        for queue in queues:
            on_it = [p for p in queue_policies if {'Ref': queue} in p['Properties']['Queues']]
            assert len(on_it) == 1, (stage, queue)
        topic_policies = of_type(template, 'AWS::SNS::TopicPolicy').values()
        for topic in of_type(template, 'AWS::SNS::Topic'):
            on_it = [p for p in topic_policies if {'Ref': topic} in p['Properties']['Topics']]
            assert len(on_it) == 1, (stage, topic)
        for policy in list(queue_policies) + list(topic_policies):
            assert any(s['Effect'] == 'Deny' and s['Condition'] == {
                'Bool': {'aws:SecureTransport': 'false'}}
                for s in policy['Properties']['PolicyDocument']['Statement'])
        assert list(of_type(template, 'AWS::KMS::Key')) == [resources.ALARM_KEY]
        assert template['Resources']['AlarmTopic']['Properties']['KmsMasterKeyId'] == {
            'Ref': resources.ALARM_KEY}


# --- releases: versions, the live alias, CodeDeploy, the hook, SnapStart ------------
# (deploy/release_template.py; docs/deployment.md "Releases")

import release_template  # noqa: E402

LIVE = ids.LIVE_ALIAS
CANARY_FUNCTIONS = {ids.API_HANDLER, ids.TOKEN_AUTHORIZER}
# The figures docs/deployment.md states, written out here.
DEPLOYMENT_CONFIGS = {
    'prod': {f: 'Canary10Percent5Minutes' if f in CANARY_FUNCTIONS else 'AllAtOnce'
             for f in FUNCTIONS},
    'dev': {f: 'AllAtOnce' for f in FUNCTIONS},
}
API_RELEASE_ALARMS = {'ApiServerErrorRateAlarm', 'ApiLatencyP99Alarm'}


def _function_of(ref, template):
    """The function a Ref / Fn::GetAtt Arn names, directly or through an alias
    or a version of it."""
    res = template['Resources']
    name = ref.get('Ref') or _arn_of(ref)
    if name in res and res[name]['Type'] in ('AWS::Lambda::Alias', 'AWS::Lambda::Version'):
        name = res[name]['Properties']['FunctionName']['Ref']
    assert res[name]['Type'] == 'AWS::Lambda::Function', ref
    return name


def _sub_names(node):
    text = node.get('Fn::Sub') if isinstance(node, dict) else None
    text = text[0] if isinstance(text, list) else text
    return re.findall(r'\$\{([\w:]+)(?:\.(\w+))?\}', text or '')


def _invoked(node, template):
    """What an invoker position names: [(logical id, its type)]."""
    res = template['Resources']
    if isinstance(node, dict) and 'Ref' in node:
        names = [node['Ref']]
    elif isinstance(node, dict) and 'Fn::GetAtt' in node:
        names = [node['Fn::GetAtt'][0]]
    else:
        names = [n for n, _ in _sub_names(node)]
    return [(n, res[n]['Type']) for n in names if n in res]


def latest_invokers(template):
    """Every place that invokes a function, with what it names, unless that is
    an alias (or, for the hook's targets, a published version): a function's
    unqualified ARN is its $LATEST."""
    res = template['Resources']
    places = []
    body = res[ids.REST_API]['Properties']['Body']
    for path, methods in body['paths'].items():
        for method, operation in methods.items():
            integration = operation.get('x-amazon-apigateway-integration') or {}
            if integration.get('type') == 'aws_proxy':
                places.append(('integration %s %s' % (method, path), integration['uri'],
                               'AWS::Lambda::Alias'))
    for name, scheme in body.get('securityDefinitions', {}).items():
        authorizer = scheme.get('x-amazon-apigateway-authorizer')
        if authorizer:
            places.append(('authorizer %s' % name, authorizer['authorizerUri'],
                           'AWS::Lambda::Alias'))
    for name, r in res.items():
        props = r.get('Properties') or {}
        if r['Type'] in ('AWS::Lambda::EventSourceMapping', 'AWS::Lambda::Permission'):
            places.append((name, props['FunctionName'], 'AWS::Lambda::Alias'))
        if r['Type'] == 'AWS::Events::Rule':
            for target in props['Targets']:
                places.append(('%s target %s' % (name, target['Id']), target['Arn'],
                               'AWS::Lambda::Alias'))
    hook = res.get(ids.PRE_TRAFFIC_CHECK)
    if hook:
        variables = hook['Properties']['Environment']['Variables']
        for key in (release_template.HOOK_TARGET_API, release_template.HOOK_TARGET_AUTHORIZER):
            places.append(('hook %s' % key, variables[key], 'AWS::Lambda::Version'))
    out = []
    for place, node, wanted in places:
        named = _invoked(node, template)
        lambdas = [(n, t) for n, t in named if t.startswith('AWS::Lambda::')
                   and t != 'AWS::Lambda::Permission']
        if not lambdas or any(t != wanted for _, t in lambdas):
            out.append('%s: %s' % (place, json.dumps(node)))
    return out


def test_nothing_invokes_latest_every_invoker_names_the_live_alias(stacks):
    for stage, template in each_stage(stacks):
        assert latest_invokers(template) == [], stage
        res = template['Resources']
        # ...and there is something to check: every route, the authorizer, the
        # two mappings, the two rules, their permissions and the API's.
        mappings = of_type(template, 'AWS::Lambda::EventSourceMapping').values()
        assert {_function_of(m['Properties']['FunctionName'], template) for m in mappings} \
            == {ids.INGEST_QUEUE, ids.PUBLISH_CHANGES}
        permissions = of_type(template, 'AWS::Lambda::Permission').values()
        assert {_function_of(p['Properties']['FunctionName'], template)
                for p in permissions} == {ids.API_HANDLER, ids.TOKEN_AUTHORIZER,
                                          ids.IMPORT_UPLOAD, ids.SCHEDULED_EXPORT}
        for p in permissions:
            assert res[p['Properties']['FunctionName']['Ref']]['Type'] == 'AWS::Lambda::Alias'


def test_the_latest_invoker_check_finds_a_route_a_mapping_and_a_permission_on_latest(stacks):
    template = json.loads(json.dumps(stacks['prod']['template']))
    res = template['Resources']
    path = next(iter(res[ids.REST_API]['Properties']['Body']['paths'].values()))
    integration = next(o['x-amazon-apigateway-integration'] for o in path.values()
                       if o.get('x-amazon-apigateway-integration', {}).get('type') == 'aws_proxy')
    integration['uri'] = {'Fn::Sub': 'arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:'
                                     'path/2015-03-31/functions/${APIHandler.Arn}/invocations'}
    mapping = next(iter(of_type(template, 'AWS::Lambda::EventSourceMapping').values()))
    mapping['Properties']['FunctionName'] = {'Ref': ids.INGEST_QUEUE}
    permission = next(iter(of_type(template, 'AWS::Lambda::Permission').values()))
    permission['Properties']['FunctionName'] = {'Fn::GetAtt': [ids.API_HANDLER, 'Arn']}
    assert len(latest_invokers(template)) == 3


def test_every_function_that_serves_traffic_has_versions_and_a_live_alias(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        aliases = of_type(template, 'AWS::Lambda::Alias')
        assert sorted(_function_of(a['Properties']['FunctionName'], template)
                      for a in aliases.values()) == FUNCTIONS, stage
        for name, alias in aliases.items():
            props = alias['Properties']
            assert props['Name'] == LIVE
            version = props['FunctionVersion']['Fn::GetAtt']
            assert version[1] == 'Version'
            assert res[version[0]]['Type'] == 'AWS::Lambda::Version'
            assert res[version[0]]['Properties']['FunctionName'] == props['FunctionName']
            # Old versions stay: what make rollback goes back to.
            assert res[version[0]]['DeletionPolicy'] == 'Retain'
        assert ids.alias_resource(ids.PRE_TRAFFIC_CHECK) not in res


def test_a_configuration_change_publishes_a_version_too(stacks):
    for stage in STAGES:
        with open(stacks[stage]['sam']) as f:
            sam = json.load(f)
        for function in FUNCTIONS:
            props = sam['Resources'][function]['Properties']
            assert props['AutoPublishAlias'] == LIVE
            assert props['AutoPublishAliasAllProperties'] is True


def test_codedeploy_rolls_back_on_failure_and_on_the_release_alarms(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        applications = of_type(template, 'AWS::CodeDeploy::Application')
        assert list(applications) == [ids.CODEDEPLOY_APPLICATION]
        assert applications[ids.CODEDEPLOY_APPLICATION]['Properties'] == {
            'ComputePlatform': 'Lambda'}
        groups = of_type(template, 'AWS::CodeDeploy::DeploymentGroup')
        assert sorted(groups) == sorted(ids.deployment_group(f) for f in FUNCTIONS)
        for function in FUNCTIONS:
            props = groups[ids.deployment_group(function)]['Properties']
            assert props['ApplicationName'] == {'Ref': ids.CODEDEPLOY_APPLICATION}
            rollback = props['AutoRollbackConfiguration']
            assert rollback['Enabled'] is True
            assert {'DEPLOYMENT_FAILURE', 'DEPLOYMENT_STOP_ON_ALARM'} <= set(rollback['Events'])
            alarms = props['AlarmConfiguration']
            assert alarms['Enabled'] is True
            watched = {a['Name']['Ref'] for a in alarms['Alarms']}
            expected = {'%sNewVersionErrorsAlarm' % function}
            if function in CANARY_FUNCTIONS:
                expected |= API_RELEASE_ALARMS
            assert watched == expected, (stage, function)
            for alarm in watched:
                assert res[alarm]['Type'] == 'AWS::CloudWatch::Alarm'
            config = props['DeploymentConfigName']['Fn::Sub']
            assert config == ['CodeDeployDefault.Lambda${ConfigName}', {
                'ConfigName': DEPLOYMENT_CONFIGS[stage][function]}], (stage, function)
            assert props['ServiceRoleArn'] == {'Fn::GetAtt': [ids.CODEDEPLOY_ROLE, 'Arn']}
        # SAM makes no role of its own (with the managed policy) when given one.
        assert 'CodeDeployServiceRole' not in res


def test_the_release_alarms_watch_the_new_version_through_the_alias(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        for function in FUNCTIONS:
            props = res['%sNewVersionErrorsAlarm' % function]['Properties']
            assert (props['Namespace'], props['MetricName']) == ('AWS/Lambda', 'Errors')
            dims = {d['Name']: d['Value'] for d in props['Dimensions']}
            assert dims['FunctionName'] == {'Ref': function}
            assert dims['Resource'] == {'Fn::Sub': '${%s}:%s' % (function, LIVE)}
            # ExecutedVersion: the number at the end of this deploy's version ARN.
            version = res[ids.alias_resource(function)]['Properties']['FunctionVersion'][
                'Fn::GetAtt'][0]
            assert dims['ExecutedVersion'] == {
                'Fn::Select': [7, {'Fn::Split': [':', {'Ref': version}]}]}
            assert props['Period'] == 60 and props['TreatMissingData'] == 'notBreaching'


def test_every_alias_runs_the_pre_traffic_hook_before_traffic_moves(stacks):
    for stage, template in each_stage(stacks):
        for name, alias in of_type(template, 'AWS::Lambda::Alias').items():
            function = _function_of(alias['Properties']['FunctionName'], template)
            update = alias['UpdatePolicy']['CodeDeployLambdaAliasUpdate']
            assert update == {
                'ApplicationName': {'Ref': ids.CODEDEPLOY_APPLICATION},
                'DeploymentGroupName': {'Ref': ids.deployment_group(function)},
                'BeforeAllowTrafficHook': {'Ref': ids.PRE_TRAFFIC_CHECK}}, (stage, name)


def test_the_pre_traffic_hook_tests_the_new_versions_and_may_do_nothing_else(stacks):
    for stage, template in each_stage(stacks):
        res = template['Resources']
        hook = res[ids.PRE_TRAFFIC_CHECK]['Properties']
        variables = hook['Environment']['Variables']
        for key, target in ((release_template.HOOK_TARGET_API, ids.API_HANDLER),
                            (release_template.HOOK_TARGET_AUTHORIZER, ids.TOKEN_AUTHORIZER)):
            version = res[ids.alias_resource(target)]['Properties']['FunctionVersion'][
                'Fn::GetAtt'][0]
            assert variables[key] == {'Ref': version}, (stage, key)
        assert variables[release_template.HOOK_TOKENS_ON] == 'true'
        assert hook['Runtime'] == 'python3.13' and hook['Architectures'] == ['arm64']
        assert hook['TracingConfig'] == {'Mode': 'Active'}
        assert 'SnapStart' not in hook  # invoked as $LATEST, never a published version
        role = hook['Role']['Fn::GetAtt'][0]
        assert role == ids.ROLES[ids.PRE_TRAFFIC_CHECK]
        documents = [p['PolicyDocument'] for p in res[role]['Properties']['Policies']]
        assert documents == [policies.build(stage)[ids.PRE_TRAFFIC_CHECK]]
        granted = {a for s in documents[0]['Statement'] for a in s['Action']}
        assert granted == {'logs:CreateLogStream', 'logs:PutLogEvents',
                           'xray:PutTelemetryRecords', 'xray:PutTraceSegments',
                           'lambda:InvokeFunction',
                           'codedeploy:PutLifecycleEventHookExecutionStatus'}
        invoke, = [s for s in documents[0]['Statement'] if s['Action'] == [
            'lambda:InvokeFunction']]
        assert invoke['Resource'] == [{'Fn::Sub': '${%s.Arn}:*' % f}
                                      for f in (ids.API_HANDLER, ids.TOKEN_AUTHORIZER)]
        report, = [s for s in documents[0]['Statement'] if s['Action'] == [
            'codedeploy:PutLifecycleEventHookExecutionStatus']]
        assert report['Resource']['Fn::Sub'].endswith(
            ':deploymentgroup:${%s}/*' % ids.CODEDEPLOY_APPLICATION)
        groups = {json.dumps(g['Properties'].get('LogGroupName'))
                  for g in of_type(template, 'AWS::Logs::LogGroup').values()}
        assert json.dumps({'Fn::Sub': '/aws/lambda/${%s}' % ids.PRE_TRAFFIC_CHECK}) in groups


def test_codedeploys_role_may_shift_these_aliases_read_alarms_and_run_the_hook_only(stacks):
    for stage, template in each_stage(stacks):
        role = template['Resources'][ids.CODEDEPLOY_ROLE]['Properties']
        assert role['AssumeRolePolicyDocument']['Statement'] == [{
            'Effect': 'Allow', 'Principal': {'Service': 'codedeploy.amazonaws.com'},
            'Action': 'sts:AssumeRole'}]
        assert 'ManagedPolicyArns' not in role
        (policy,) = role['Policies']
        by_action = {}
        for statement in policy['PolicyDocument']['Statement']:
            assert statement['Effect'] == 'Allow'
            for action in statement['Action']:
                by_action[action] = statement['Resource']
        aliases = [{'Fn::Sub': '${%s.Arn}:%s' % (f, LIVE)} for f in FUNCTIONS]
        assert by_action == {
            'lambda:GetAlias': aliases, 'lambda:UpdateAlias': aliases,
            'lambda:GetProvisionedConcurrencyConfig': aliases,
            'cloudwatch:DescribeAlarms': {'Fn::Sub': 'arn:${AWS::Partition}:cloudwatch:'
                                          '${AWS::Region}:${AWS::AccountId}:alarm:*'},
            'lambda:InvokeFunction': {'Fn::GetAtt': [ids.PRE_TRAFFIC_CHECK, 'Arn']},
        }


def test_snapstart_on_prods_published_versions_only(stacks):
    for stage, template in each_stage(stacks):
        for name, function in functions(template).items():
            snap = function['Properties'].get('SnapStart')
            if stage == 'prod':
                assert snap == {'ApplyOn': 'PublishedVersions'}, name
            else:
                assert snap is None, (stage, name)
