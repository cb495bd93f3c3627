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
    return of_type(template, 'AWS::Lambda::Function')


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
                function = res[target['Arn']['Fn::GetAtt'][0]]['Properties']
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
            consumer = res[mapping['Properties']['FunctionName']['Ref']]['Properties']
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


def test_every_log_group_has_the_stages_retention(stacks):
    for stage, template in each_stage(stacks):
        retention = resources.STAGES[stage]['log_retention_days']
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


def test_the_bucket_expires_old_versions_reports_and_exports(stacks):
    for stage, template in each_stage(stacks):
        settings = resources.STAGES[stage]
        rules = template['Resources'][resources.BUCKET]['Properties'][
            'LifecycleConfiguration']['Rules']
        assert all(r['Status'] == 'Enabled' for r in rules)
        everything = [r for r in rules if 'Prefix' not in r]
        assert everything and everything[0]['NoncurrentVersionExpiration'] == {
            'NoncurrentDays': settings['noncurrent_version_days']}
        assert everything[0]['AbortIncompleteMultipartUpload']['DaysAfterInitiation'] <= 7
        by_prefix = {r['Prefix']: r['ExpirationInDays'] for r in rules if 'Prefix' in r}
        assert by_prefix == {'reports/': settings['report_days'],
                             'exports/': settings['export_days']}


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
