"""`make deploy`, run for real against an AWS emulator (moto's server, started
in this process on 127.0.0.1).

The Makefile's own commands run: packaging, `aws cloudformation package` and
`deploy` (change sets from a template uploaded to S3), the describe-stacks that
reads the endpoint. The region comes from an AWS profile (AWS_CONFIG_FILE), not
from AWS_DEFAULT_REGION, so a deploy that ignored the profile would land in
moto's us-east-1 and fail here.

moto is not CloudFormation; what CloudFormation does on its side and moto does
not is added to the emulator here, and only here:
- the SAM transform, with deploy/translate.py (aws-sam-translator, the library
  CloudFormation's transform runs on), where moto reads a template;
- CloudFormation's refusals: template size, missing capabilities, references to
  resources the processed template does not define, too many resources;
- outputs of a stack made through a change set (moto keeps none).
What moto cannot build is taken out of the processed template by the named
filters in EMULATOR_FILTERS, never out of the shipped template; each is listed
in docs/deployment.md ("Deployment rehearsal", #deployment-rehearsal).
The refusals are the emulator's stand-ins for CloudFormation's checks: the
tests below show that each stand-in refuses what it should, and that `make
deploy` passes them all.
"""
import copy
import json
import os
import re
import socket
import subprocess
import sys
from typing import Callable, NamedTuple

import boto3
import botocore.exceptions
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'deploy'))

import ids  # noqa: E402 - deploy/ is not a package
import translate  # noqa: E402

moto_server = pytest.importorskip('moto.server')
from moto.cloudformation import models as cfn_models  # noqa: E402
from moto.cloudformation import parsing as cfn_parsing  # noqa: E402
from moto.cloudformation import responses as cfn_responses  # noqa: E402
from moto.cloudformation.exceptions import CloudFormationError, ValidationError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Not us-east-1: moto's default and the region the Makefile used to force.
PROFILE_REGION = 'eu-west-3'
ACCOUNT = '123456789012'  # moto's
ARTIFACT_BUCKET = 'cars-rehearsal-artifacts'
SERVERLESS = 'AWS::Serverless-2016-10-31'

# CloudFormation's limits (AWS CloudFormation quotas).
INLINE_TEMPLATE_LIMIT = 51200        # TemplateBody in a request
S3_TEMPLATE_LIMIT = 1000000          # template object in S3: "1 MB" (taken as 10^6)
MAX_RESOURCES = 500

# Creating these needs CAPABILITY_IAM or CAPABILITY_NAMED_IAM; with one of the
# name properties set, CAPABILITY_NAMED_IAM.
IAM_TYPES = {
    'AWS::IAM::AccessKey': None, 'AWS::IAM::Group': 'GroupName',
    'AWS::IAM::InstanceProfile': 'InstanceProfileName', 'AWS::IAM::Policy': None,
    'AWS::IAM::ManagedPolicy': 'ManagedPolicyName', 'AWS::IAM::Role': 'RoleName',
    'AWS::IAM::User': 'UserName', 'AWS::IAM::UserToGroupAddition': None,
}


# --- what moto cannot build: filtered out of the processed template ------------

class Filter(NamedTuple):
    name: str
    reason: str
    apply: Callable[[dict], list]  # changes the template, returns what it touched


def _drop_rest_api_bodies(template):
    touched = []
    for logical_id, resource in template['Resources'].items():
        props = resource.get('Properties') or {}
        if resource['Type'] == 'AWS::ApiGateway::RestApi' and 'Body' in props:
            body = props.pop('Body')
            # CloudFormation names the API from the body's title; moto needs Name.
            props.setdefault('Name', (body.get('info') or {}).get('title', logical_id))
            touched.append(logical_id)
    return touched


def _drop_types(types):
    def apply(template):
        dropped = [k for k, r in template['Resources'].items() if r['Type'] in types]
        for logical_id in dropped:
            del template['Resources'][logical_id]
        return dropped
    return apply


def _drop_types_moto_lacks(template):
    models = cfn_parsing.get_model_map()
    return _drop_types({r['Type'] for r in template['Resources'].values()
                        if r['Type'] not in models})(template)


def _drop_dangling(template):
    """Resources and outputs that refer to a resource another filter dropped
    (moto would pass None on, or fail on a KeyError). A DependsOn on a dropped
    resource only orders creation: that entry goes, the resource stays."""
    touched = []
    outside = _parameters_and_pseudo(template)
    while True:
        known = set(template['Resources'])
        for logical_id, resource in template['Resources'].items():
            after = resource.get('DependsOn')
            if after is not None:
                after = [after] if isinstance(after, str) else after
                kept = [name for name in after if name in known]
                if kept != after:
                    resource['DependsOn'] = kept
                    touched.append('%s.DependsOn' % logical_id)
        dangling = [k for k, r in template['Resources'].items()
                    if _targets(r) - known - outside]
        if not dangling:
            break
        for logical_id in dangling:
            del template['Resources'][logical_id]
        touched += dangling
    outputs = template.get('Outputs') or {}
    for key in [k for k, o in outputs.items()
                if _targets(o) - set(template['Resources']) - outside]:
        del outputs[key]
        touched.append('Outputs.%s' % key)
    return touched


EMULATOR_FILTERS = [
    Filter('rest-api-body',
           "moto does not import a REST API's Body (its importer takes OpenAPI 3 only; "
           'SAM writes Swagger 2.0): the API is created empty, named from the body title',
           _drop_rest_api_bodies),
    Filter('api-deployment',
           'AWS::ApiGateway::Deployment: with no imported body the API has no methods, '
           'and moto refuses to deploy an API without methods',
           _drop_types({'AWS::ApiGateway::Deployment'})),
    Filter('no-moto-model',
           'resource types moto 5.2.5 has no CloudFormation model for (it would skip them '
           'with a warning), e.g. API Gateway stages, gateway responses and the account, '
           'S3 bucket policies, CloudWatch alarms, Lambda aliases, SQS/SNS policies',
           _drop_types_moto_lacks),
    Filter('dangling-after-filters',
           'resources and outputs that refer to a resource dropped above (a DependsOn '
           'on one is removed, the resource kept)',
           _drop_dangling),
]

# What each filter touched, per stack name: the report, and the test that no
# resource disappears without a named filter.
FILTERED = {}


# --- references ----------------------------------------------------------------

PSEUDO = {'AWS::AccountId', 'AWS::NotificationARNs', 'AWS::NoValue', 'AWS::Partition',
          'AWS::Region', 'AWS::StackId', 'AWS::StackName', 'AWS::URLSuffix'}
SUB_VARIABLE = re.compile(r'\$\{([^!}][^}]*)\}')


def _parameters_and_pseudo(template):
    return set(template.get('Parameters') or {}) | PSEUDO


def _targets(node):
    """Every logical id `node` refers to (Ref, Fn::GetAtt, Fn::Sub, DependsOn)."""
    found = set()
    if isinstance(node, list):
        for item in node:
            found |= _targets(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == 'Ref' and isinstance(value, str):
                found.add(value)
            elif key == 'Fn::GetAtt':
                name = value.split('.')[0] if isinstance(value, str) else value[0]
                found.add(name)
            elif key == 'Fn::Sub':
                text, variables = (value, {}) if isinstance(value, str) else value
                found |= _targets(variables)
                for name in SUB_VARIABLE.findall(text):
                    name = name.split('.')[0] if not name.startswith('AWS::') else name
                    if name not in variables:
                        found.add(name)
            elif key == 'DependsOn':
                found |= {value} if isinstance(value, str) else set(value)
            else:
                found |= _targets(value)
    return found


def unresolved_references(template):
    """(block, name) of every Ref/GetAtt/Sub/DependsOn target the template does
    not define: CloudFormation refuses such a template before it creates
    anything; moto may pass None on instead."""
    known = set(template.get('Resources') or {}) | _parameters_and_pseudo(template)
    out = []
    for block in ('Resources', 'Outputs'):
        for node in (template.get(block) or {}).values():
            out += [(block, name) for name in sorted(_targets(node) - known)]
    return out


# --- CloudFormation's side, added to moto --------------------------------------

class InsufficientCapabilities(CloudFormationError):
    code = 'InsufficientCapabilitiesException'


def _has_transform(template):
    transform = template.get('Transform')
    return transform == SERVERLESS or (isinstance(transform, list) and SERVERLESS in transform)


def processed(template_text, region):
    """The template as CloudFormation processes it: parsed, the SAM transform
    applied, then its own checks."""
    template = _original_parse_template(template_text)
    if _has_transform(template):
        template = translate.translate(template, region)
    missing = unresolved_references(template)
    if missing:
        raise ValidationError(message='Template format error: Unresolved resource dependencies '
                              '%s in the %s block of the template' % (
                                  sorted({n for _, n in missing}), missing[0][0]))
    if len(template.get('Resources') or {}) > MAX_RESOURCES:
        raise ValidationError(message='Template format error: Number of resources, %d, is '
                              'greater than maximum allowed, %d' % (
                                  len(template['Resources']), MAX_RESOURCES))
    return template


def emulated(template_text, region, stack_name=None):
    """The processed template with EMULATOR_FILTERS applied: what moto builds."""
    template = copy.deepcopy(processed(template_text, region))
    report = {}
    for entry in EMULATOR_FILTERS:
        touched = entry.apply(template)
        if touched:
            report[entry.name] = touched
    if stack_name:
        FILTERED[stack_name] = report
    return template


def required_capabilities(template, original, direct):
    """What CloudFormation asks to be acknowledged for `template` (processed)
    made from `original`; `direct` for CreateStack/UpdateStack (a change set
    needs CAPABILITY_AUTO_EXPAND only for nested stacks a macro makes)."""
    needed = set()
    for resource in template['Resources'].values():
        if resource['Type'] in IAM_TYPES:
            name_property = IAM_TYPES[resource['Type']]
            named = name_property and name_property in (resource.get('Properties') or {})
            needed.add('CAPABILITY_NAMED_IAM' if named else 'CAPABILITY_IAM')
    if _has_transform(original) and (direct or any(
            r['Type'] == 'AWS::CloudFormation::Stack' for r in template['Resources'].values())):
        needed.add('CAPABILITY_AUTO_EXPAND')
    return needed


def check_request(response, direct):
    """CloudFormation's checks on a CreateStack/UpdateStack/CreateChangeSet request."""
    body = response._get_param('TemplateBody')
    if body is not None and len(body.encode('utf-8')) > INLINE_TEMPLATE_LIMIT:
        raise ValidationError(message="1 validation error detected: Value at 'templateBody' "
                              'failed to satisfy constraint: Member must have length less '
                              'than or equal to %d' % INLINE_TEMPLATE_LIMIT)
    url = response._get_param('TemplateURL')
    if url:
        body = response._get_stack_from_s3_url(url)
    if body is None:
        return
    template = processed(body, response.region)
    given = set(response._get_param('Capabilities', []) or [])
    needed = required_capabilities(template, _original_parse_template(body), direct)
    if 'CAPABILITY_NAMED_IAM' in given:
        given.add('CAPABILITY_IAM')
    missing = sorted(needed - given)
    if missing:
        raise InsufficientCapabilities('Requires capabilities : [%s]' % ', '.join(missing))
    PASSED_CHECKS.append((response._get_param('StackName'), 'direct' if direct else 'change set',
                          tuple(sorted(needed))))


_original_parse_template = cfn_models.Stack.parse_template
# (stack name, request kind, capabilities needed) of every request that passed
# check_request with a template to check.
PASSED_CHECKS = []


def install(monkeypatch, emulator_address):
    """Patch moto's CloudFormation where templates come in and where a change
    set is executed."""

    def stack_parse(self):
        self.template_dict = emulated(self.template, self.region_name, self.name)

    def stack_has_template(self, other):
        return emulated(self.template, self.region_name) == emulated(other, self.region_name)

    def change_set_parse(self):
        self.template_dict = emulated(self.template, self.stack.region_name, self.stack_name)

    monkeypatch.setattr(cfn_models.Stack, '_parse_template', stack_parse)
    monkeypatch.setattr(cfn_models.Stack, 'has_template', stack_has_template)
    monkeypatch.setattr(cfn_models.ChangeSet, '_parse_template', change_set_parse)

    execute = cfn_models.CloudFormationBackend.execute_change_set

    def execute_change_set(self, change_set_name, stack_name=None):
        # moto applies the change set's resources but leaves the stack's
        # template, parameters and outputs as they were (none, for a stack a
        # change set created); CloudFormation's stack has all three.
        result = execute(self, change_set_name, stack_name)
        change_set = self.describe_change_set(change_set_name)
        stack = self.stacks[change_set.stack_id]
        stack._parse_template()
        stack.parameters = dict(change_set.parameters)
        stack.output_map = stack._create_output_map()
        return result

    monkeypatch.setattr(cfn_models.CloudFormationBackend, 'execute_change_set',
                        execute_change_set)

    fetch = cfn_responses.CloudFormationResponse._get_stack_from_s3_url

    def get_stack_from_s3_url(self, template_url):
        # `aws cloudformation deploy` names the uploaded template by the S3
        # endpoint it used (here the emulator's http://127.0.0.1:port/bucket/key);
        # moto reads an IP address as a bucket name.
        prefix = emulator_address.rstrip('/') + '/'
        if template_url.startswith(prefix):
            template_url = 'https://s3.amazonaws.com/' + template_url[len(prefix):]
        body = fetch(self, template_url)
        if len(body.encode('utf-8')) > S3_TEMPLATE_LIMIT:
            raise ValidationError(message='Template may not exceed %d bytes in size.'
                                  % S3_TEMPLATE_LIMIT)
        return body

    monkeypatch.setattr(cfn_responses.CloudFormationResponse, '_get_stack_from_s3_url',
                        get_stack_from_s3_url)

    for action, direct in (('create_stack', True), ('update_stack', True),
                           ('create_change_set', False)):
        original = getattr(cfn_responses.CloudFormationResponse, action)

        def checked(self, _original=original, _direct=direct):
            check_request(self, _direct)
            return _original(self)

        monkeypatch.setattr(cfn_responses.CloudFormationResponse, action, checked)


# --- the emulator and the deploys ------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, url, home):
        self.url = url
        self.home = home

    def client(self, service, region=PROFILE_REGION):
        return boto3.client(service, endpoint_url=self.url, region_name=region,
                            aws_access_key_id='testing', aws_secret_access_key='testing')

    def env(self):
        """A deployer's environment: a profile with a region, fake keys, the
        emulator's endpoint; no AWS_DEFAULT_REGION, nothing from this process."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('AWS_', 'CARS_', 'MAKE')) and k != 'MFLAGS'}
        env.update(
            AWS_CONFIG_FILE=os.path.join(self.home, 'config'),
            AWS_SHARED_CREDENTIALS_FILE=os.path.join(self.home, 'credentials'),
            AWS_ENDPOINT_URL=self.url, AWS_EC2_METADATA_DISABLED='true',
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', ''),
            NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')
        return env

    def make(self, *args, env=None, timeout=900):
        # The venv is the one running this test: make must not rebuild it.
        cmd = ['make', '--no-print-directory', '-o', '.venv/.installed'] + list(args)
        return subprocess.run(cmd, cwd=ROOT, env=dict(self.env(), **(env or {})),
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
    home = tmp_path_factory.mktemp('aws-profile')
    (home / 'config').write_text('[default]\nregion = %s\n' % PROFILE_REGION)
    (home / 'credentials').write_text(
        '[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n')
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    url = 'http://127.0.0.1:%d' % port
    with pytest.MonkeyPatch.context() as monkeypatch:
        install(monkeypatch, url)
        server.start()
        try:
            emu = Emulator(url, str(home))
            emu.client('s3').create_bucket(
                Bucket=ARTIFACT_BUCKET,
                CreateBucketConfiguration={'LocationConstraint': PROFILE_REGION})
            yield emu
        finally:
            server.stop()


def _ran(result):
    return 'exit %d\n--- stdout\n%s\n--- stderr\n%s' % (
        result.returncode, result.stdout[-4000:], result.stderr[-6000:])


class Deploy(NamedTuple):
    stage: str
    stack: str
    out: str
    created: subprocess.CompletedProcess
    updated: subprocess.CompletedProcess
    unchanged: subprocess.CompletedProcess
    after_create: dict
    after_update: dict


@pytest.fixture(scope='module', params=['dev', 'prod'])
def deploy(request, emulator, tmp_path_factory):
    """`make deploy` for a stage: a create (which packages), an update with new
    CORS origins, then the same again (both reusing that package)."""
    stage = request.param
    out = str(tmp_path_factory.mktemp('out-%s' % stage))
    stack = 'cars-%s' % stage
    cfn = emulator.client('cloudformation')
    common = ['STAGE=%s' % stage, 'OUT=%s' % out, 'ARTIFACT_BUCKET=%s' % ARTIFACT_BUCKET,
              'SMOKE=0']
    created = emulator.make('deploy', *common)
    assert created.returncode == 0, _ran(created)
    after_create = cfn.describe_stacks(StackName=stack)['Stacks'][0]
    updated = emulator.make('-o', 'package', 'deploy', *common,
                            'CORS_ORIGINS=https://app.example.com')
    assert updated.returncode == 0, _ran(updated)
    after_update = cfn.describe_stacks(StackName=stack)['Stacks'][0]
    unchanged = emulator.make('-o', 'package', 'deploy', *common,
                              'CORS_ORIGINS=https://app.example.com')
    return Deploy(stage, stack, out, created, updated, unchanged, after_create, after_update)


def _outputs(stack):
    return {o['OutputKey']: o['OutputValue'] for o in stack.get('Outputs') or []}


# --- the tests -------------------------------------------------------------------

def test_make_deploy_creates_the_stack_in_the_profiles_region(deploy, emulator):
    assert deploy.after_create['StackStatus'] == 'CREATE_COMPLETE'
    assert 'to account %s in region %s' % (ACCOUNT, PROFILE_REGION) in deploy.created.stdout
    with pytest.raises(botocore.exceptions.ClientError):
        emulator.client('cloudformation', 'us-east-1').describe_stacks(StackName=deploy.stack)


def test_aws_region_wins_over_aws_default_region_and_the_profile(deploy, emulator):
    # The CLI v2 order; the v1 CLI ignores AWS_REGION, so the Makefile passes
    # the region it announces to every call.
    stack = deploy.stack + '-elsewhere'
    result = emulator.make(
        '-o', 'package', 'deploy', 'STAGE=%s' % deploy.stage, 'OUT=%s' % deploy.out,
        'STACK=%s' % stack, 'ARTIFACT_BUCKET=%s' % ARTIFACT_BUCKET, 'SMOKE=0',
        env={'AWS_REGION': 'ap-south-1', 'AWS_DEFAULT_REGION': 'sa-east-1'})
    assert result.returncode == 0, _ran(result)
    assert 'in region ap-south-1' in result.stdout
    created = emulator.client('cloudformation', 'ap-south-1').describe_stacks(
        StackName=stack)['Stacks'][0]
    assert created['StackStatus'] == 'CREATE_COMPLETE'


def test_make_deploy_without_any_region_stops_before_touching_aws(deploy, emulator, tmp_path):
    (tmp_path / 'config').write_text('[default]\n')
    result = emulator.make(
        '-o', 'package', 'deploy', 'STAGE=%s' % deploy.stage, 'OUT=%s' % deploy.out,
        'ARTIFACT_BUCKET=%s' % ARTIFACT_BUCKET, 'SMOKE=0',
        env={'AWS_CONFIG_FILE': str(tmp_path / 'config')})
    assert result.returncode == 2
    assert 'no AWS region' in result.stderr
    assert 'aws cloudformation' not in result.stderr


def test_make_deploy_prints_the_endpoint_from_the_stack_outputs(deploy):
    url = _outputs(deploy.after_create)['EndpointURL']
    assert url.startswith('https://') and '.execute-api.%s.' % PROFILE_REGION in url
    assert 'endpoint: %s' % url in deploy.created.stdout


def test_the_stack_holds_the_table_queues_bucket_topic_and_functions(deploy, emulator):
    outputs = _outputs(deploy.after_create)
    table = emulator.client('dynamodb').describe_table(TableName=outputs['CarsTableName'])
    assert table['Table']['StreamSpecification']['StreamViewType'] == 'NEW_AND_OLD_IMAGES'
    sqs = emulator.client('sqs')
    queue = sqs.get_queue_attributes(QueueUrl=outputs['CarsIngestQueueUrl'],
                                     AttributeNames=['All'])['Attributes']
    dead = sqs.get_queue_attributes(QueueUrl=outputs['CarsIngestDeadLetterQueueUrl'],
                                    AttributeNames=['QueueArn'])['Attributes']
    assert json.loads(queue['RedrivePolicy'])['deadLetterTargetArn'] == dead['QueueArn']
    emulator.client('s3').head_bucket(Bucket=outputs['CarsBucketName'])
    emulator.client('sns').get_topic_attributes(TopicArn=outputs['CarsChangesTopicArn'])

    resources = emulator.client('cloudformation').describe_stack_resources(
        StackName=deploy.stack)['StackResources']
    # Every resource of the template moto was given exists: none was skipped.
    # (The stack's own template: packaged.json is rewritten by the other
    # tests' deploys, and the S3 key of the code, their stack's prefix, is in
    # the hash SAM names each function's version by.)
    body = emulator.client('cloudformation').get_template(StackName=deploy.stack)[
        'TemplateBody']
    built = emulated(body if isinstance(body, str) else json.dumps(body), PROFILE_REGION)
    # Resources under a Condition (the account-wide logging role is opt-in)
    # exist only when it holds; with the defaults it does not. A wait-condition
    # handle is no AWS resource: moto lists it without a logical id.
    expected = {k for k, v in built['Resources'].items() if 'Condition' not in v
                and v['Type'] != 'AWS::CloudFormation::WaitConditionHandle'}
    resources = [r for r in resources if r.get('LogicalResourceId')
                 and not _retained_version_moto_still_lists(r, expected)]
    assert {r['LogicalResourceId'] for r in resources} == expected
    # moto's Lambda permission has no id of its own: it is checked in the
    # function's policy below; nor has its Lambda version (checked through the
    # Lambda API, test_every_function_has_a_version_...).
    assert [r for r in resources if not r.get('PhysicalResourceId')
            and r['ResourceType'] not in ('AWS::Lambda::Permission',
                                          'AWS::Lambda::Version')] == []
    functions = {r['LogicalResourceId']: r['PhysicalResourceId'] for r in resources
                 if r['ResourceType'] == 'AWS::Lambda::Function'}
    assert set(ids.FUNCTIONS) <= set(functions)
    lam = emulator.client('lambda')
    for name in functions.values():
        config = lam.get_function_configuration(FunctionName=name)
        assert config['Runtime'] == 'python3.13'
        assert config['Environment']['Variables']['CARS_TABLE'] == outputs['CarsTableName']
    # API Gateway's permission is on the live alias, which moto cannot build
    # (no-moto-model): it is checked in the processed template instead.
    assert processed_permission(deploy, ids.API_HANDLER)['Principal'] == \
        'apigateway.amazonaws.com'


def test_a_second_make_deploy_updates_the_stack(deploy, emulator):
    assert deploy.after_update['StackStatus'] == 'UPDATE_COMPLETE'
    params = {p['ParameterKey']: p['ParameterValue'] for p in deploy.after_update['Parameters']}
    assert params['CorsOrigins'] == 'https://app.example.com'
    api = _outputs(deploy.after_update)[ids.API_HANDLER + 'Name']
    config = emulator.client('lambda').get_function_configuration(FunctionName=api)
    assert config['Environment']['Variables']['CARS_CORS_ORIGINS'] == 'https://app.example.com'


def test_make_deploy_without_changes_succeeds_and_changes_nothing(deploy, emulator):
    assert deploy.unchanged.returncode == 0, _ran(deploy.unchanged)
    assert 'No changes to deploy' in deploy.unchanged.stdout
    stack = emulator.client('cloudformation').describe_stacks(StackName=deploy.stack)['Stacks'][0]
    assert stack['StackStatus'] == 'UPDATE_COMPLETE'
    assert _outputs(stack) == _outputs(deploy.after_update)


def test_only_named_filters_left_anything_out(deploy):
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        shipped = processed(f.read(), PROFILE_REGION)
    report = FILTERED[deploy.stack]
    built = emulated(json.dumps(shipped), PROFILE_REGION)
    removed = set(shipped['Resources']) - set(built['Resources'])
    by_filters = {k for touched in report.values() for k in touched}
    assert removed <= by_filters
    # The filters never drop what the stack is for.
    kept_types = {r['Type'] for r in built['Resources'].values()}
    assert {'AWS::DynamoDB::Table', 'AWS::SQS::Queue', 'AWS::S3::Bucket', 'AWS::SNS::Topic',
            'AWS::Lambda::Function', 'AWS::IAM::Role', 'AWS::ApiGateway::RestApi'} <= kept_types


def test_the_packaged_template_fits_cloudformations_limits(deploy):
    with open(os.path.join(deploy.out, 'packaged.json'), 'rb') as f:
        size = len(f.read())
    # Too big to send inline: this is why `make deploy` uploads it.
    assert INLINE_TEMPLATE_LIMIT < size <= S3_TEMPLATE_LIMIT


def test_the_cli_refuses_the_template_inline(deploy, emulator):
    result = subprocess.run(
        ['aws', 'cloudformation', 'deploy', '--template-file',
         os.path.join(deploy.out, 'packaged.json'), '--stack-name', deploy.stack + '-inline',
         '--capabilities', 'CAPABILITY_IAM', 'CAPABILITY_AUTO_EXPAND'],
        env=emulator.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert 'greater than 51,200 bytes must be deployed via an S3 Bucket' in result.stderr


def _upload(emulator, key, text):
    emulator.client('s3').put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=text.encode())
    return 'https://s3.amazonaws.com/%s/%s' % (ARTIFACT_BUCKET, key)


# --- the emulator's stand-ins for CloudFormation's checks (check_request, processed)
# moto enforces none of these; the tests below show that each stand-in refuses
# what CloudFormation would refuse, and the first that `make deploy` passes them.

def test_make_deploy_passes_the_emulators_stand_ins_for_cloudformations_checks(deploy):
    checked = [c for c in PASSED_CHECKS if c[0] == deploy.stack]
    # The create, the update and the re-run each sent a change set with the
    # template through check_request; none was a direct CreateStack/UpdateStack.
    assert len(checked) >= 3, checked
    assert {kind for _, kind, _ in checked} == {'change set'}
    # The stack has IAM roles, so the capability check had something to refuse.
    assert all('CAPABILITY_IAM' in needed for _, _, needed in checked), checked


@pytest.mark.parametrize('capabilities,missing', [
    ([], 'CAPABILITY_IAM'),
    (['CAPABILITY_AUTO_EXPAND'], 'CAPABILITY_IAM'),
])
def test_the_emulators_capability_check_refuses_a_change_set_without_capability_iam(
        deploy, emulator, capabilities, missing):
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        url = _upload(emulator, 'checks/%s.json' % deploy.stage, f.read())
    cfn = emulator.client('cloudformation')
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        cfn.create_change_set(StackName=deploy.stack + '-nocaps', ChangeSetName='c1',
                              ChangeSetType='CREATE', TemplateURL=url,
                              Capabilities=capabilities)
    assert refused.value.response['Error']['Code'] == 'InsufficientCapabilitiesException'
    assert missing in refused.value.response['Error']['Message']


def test_the_emulators_capability_check_refuses_create_stack_of_a_sam_template_without_auto_expand(
        deploy, emulator):
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        url = _upload(emulator, 'checks/%s.json' % deploy.stage, f.read())
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        emulator.client('cloudformation').create_stack(
            StackName=deploy.stack + '-direct', TemplateURL=url,
            Capabilities=['CAPABILITY_IAM'])
    assert 'CAPABILITY_AUTO_EXPAND' in refused.value.response['Error']['Message']


def test_the_emulator_refuses_a_template_over_the_s3_size_limit(deploy, emulator):
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        template = json.load(f)
    template['Metadata'] = {'Padding': 'x' * S3_TEMPLATE_LIMIT}
    url = _upload(emulator, 'checks/%s-big.json' % deploy.stage, json.dumps(template))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        emulator.client('cloudformation').create_change_set(
            StackName=deploy.stack + '-big', ChangeSetName='c1', ChangeSetType='CREATE',
            TemplateURL=url, Capabilities=['CAPABILITY_IAM', 'CAPABILITY_AUTO_EXPAND'])
    assert 'may not exceed' in refused.value.response['Error']['Message']


def test_every_reference_in_the_processed_template_resolves(deploy):
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        template = translate.translate(json.load(f), PROFILE_REGION)
    assert unresolved_references(template) == []


def test_the_emulator_refuses_a_reference_to_a_missing_resource(deploy, emulator):
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        template = json.load(f)
    template['Outputs']['Dangling'] = {'Value': {'Fn::GetAtt': ['NoSuchResource', 'Arn']}}
    url = _upload(emulator, 'checks/%s-dangling.json' % deploy.stage, json.dumps(template))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        emulator.client('cloudformation').create_change_set(
            StackName=deploy.stack + '-dangling', ChangeSetName='c1', ChangeSetType='CREATE',
            TemplateURL=url, Capabilities=['CAPABILITY_IAM', 'CAPABILITY_AUTO_EXPAND'])
    assert 'Unresolved resource dependencies' in refused.value.response['Error']['Message']
    assert 'NoSuchResource' in refused.value.response['Error']['Message']


# --- releases: versions, the live alias, CodeDeploy (deploy/release_template.py) ----
# moto has no CloudFormation model for AWS::Lambda::Alias or AWS::CodeDeploy::*
# (the no-moto-model filter drops them; dangling-after-filters then drops what
# invokes an alias: the event source mappings, the rules' permissions). It does
# build AWS::Lambda::Version, and keeps listing a version a later template no
# longer has (CloudFormation removes it from the stack and, DeletionPolicy
# Retain, keeps the version itself): a moto bug worked around here.

def _retained_version_moto_still_lists(resource, expected):
    """A Lambda version of an earlier deploy, replaced by this template's own
    version of the same function (SAM's `<Function>Version<hash>`)."""
    logical_id = resource['LogicalResourceId']
    if resource['ResourceType'] != 'AWS::Lambda::Version' or logical_id in expected:
        return False
    function = re.sub(r'Version[0-9a-f]{10}$', '', logical_id)
    return any(re.fullmatch(r'%sVersion[0-9a-f]{10}' % re.escape(function), e)
               for e in expected)


def test_every_function_has_a_version_and_a_changed_configuration_publishes_another(
        deploy, emulator):
    resources = emulator.client('cloudformation').describe_stack_resources(
        StackName=deploy.stack)['StackResources']
    functions = {r['LogicalResourceId']: r['PhysicalResourceId'] for r in resources
                 if r.get('ResourceType') == 'AWS::Lambda::Function'}
    lam = emulator.client('lambda')
    for function in ids.FUNCTIONS:
        published = [v['Version'] for v in lam.list_versions_by_function(
            FunctionName=functions[function])['Versions'] if v['Version'] != '$LATEST']
        # The create published one. (The update, new CORS origins, is a new
        # AWS::Lambda::Version resource too, AutoPublishAliasAllProperties, but
        # moto's PublishVersion publishes only for new code, where Lambda also
        # publishes for a new configuration: not checked here.)
        assert published[:1] == ['1'], (function, published)


def test_make_deploy_reports_how_the_release_ended(deploy):
    # moto's stack has no CodeDeploy application (filtered out): nothing to wait for.
    for result in (deploy.created, deploy.updated, deploy.unchanged):
        assert 'release: stack %s has no CodeDeploy application' % deploy.stack \
            in result.stdout, _ran(result)
        # Then the pruning of old versions, which finds no alias in moto's stack.
        assert 'prune: no function of %s has a live alias; nothing deleted' % deploy.stack \
            in result.stdout, _ran(result)


def test_the_processed_template_has_what_moto_cannot_build(deploy):
    """What the filters take out for moto is in the template CloudFormation gets."""
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        shipped = processed(f.read(), PROFILE_REGION)
    types = {r['Type'] for r in shipped['Resources'].values()}
    assert {'AWS::Lambda::Alias', 'AWS::CodeDeploy::Application',
            'AWS::CodeDeploy::DeploymentGroup'} <= types
    removed = {k for touched in FILTERED[deploy.stack].values() for k in touched}
    assert {ids.alias_resource(f) for f in ids.FUNCTIONS} <= removed
    assert {ids.deployment_group(f) for f in ids.FUNCTIONS} <= removed
    # The hook's role may report to this stack's CodeDeploy application only,
    # so without the application moto builds neither the role nor the hook.
    assert {ids.PRE_TRAFFIC_CHECK, ids.ROLES[ids.PRE_TRAFFIC_CHECK]} <= set(
        FILTERED[deploy.stack]['dangling-after-filters'])


def processed_permission(deploy, function):
    """The properties of the permission that lets API Gateway invoke
    `function`, in the template CloudFormation processes: on its live alias."""
    with open(os.path.join(deploy.out, 'packaged.json')) as f:
        shipped = processed(f.read(), PROFILE_REGION)
    res = shipped['Resources']
    (permission,) = [r['Properties'] for r in res.values()
                     if r['Type'] == 'AWS::Lambda::Permission'
                     and r['Properties']['FunctionName'] == {
                         'Ref': ids.alias_resource(function)}
                     and r['Properties']['Principal'] == 'apigateway.amazonaws.com']
    assert res[ids.alias_resource(function)]['Type'] == 'AWS::Lambda::Alias'
    return permission


def test_make_rollback_moves_the_live_alias_back_one_version(deploy, emulator):
    """`make rollback` as an operator runs it (region from the profile). moto's
    stack has no alias (no-moto-model), so the test makes one: a second version
    of the API function, the alias on it."""
    import io
    import zipfile
    resources = emulator.client('cloudformation').describe_stack_resources(
        StackName=deploy.stack)['StackResources']
    (api,) = [r['PhysicalResourceId'] for r in resources
              if r.get('LogicalResourceId') == ids.API_HANDLER]
    lam = emulator.client('lambda')
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        z.writestr('app.py', '# a newer release')
    lam.update_function_code(FunctionName=api, ZipFile=buffer.getvalue())
    newer = lam.publish_version(FunctionName=api)['Version']
    lam.create_alias(FunctionName=api, Name=ids.LIVE_ALIAS, FunctionVersion=newer)
    result = emulator.make('rollback', 'STAGE=%s' % deploy.stage,
                           'ROLLBACK_ARGS=--only %s' % ids.API_HANDLER)
    assert result.returncode == 0, _ran(result)
    assert 'in region %s' % PROFILE_REGION in result.stdout
    before = str(int(newer) - 1)
    assert '%s: live %s -> %s' % (ids.API_HANDLER, newer, before) in result.stdout
    assert lam.get_alias(FunctionName=api, Name=ids.LIVE_ALIAS)['FunctionVersion'] == before


def test_make_prune_deletes_the_versions_no_alias_or_rollback_needs(deploy, emulator):
    """`make prune` as an operator runs it, on versions and an alias the test adds
    to the emulated import function (moto's stack has no alias)."""
    import io
    import zipfile
    resources = emulator.client('cloudformation').describe_stack_resources(
        StackName=deploy.stack)['StackResources']
    (function,) = [r['PhysicalResourceId'] for r in resources
                   if r.get('LogicalResourceId') == ids.IMPORT_UPLOAD]
    lam = emulator.client('lambda')
    for n in range(3):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, 'w') as z:
            z.writestr('app.py', '# release %d' % n)
        lam.update_function_code(FunctionName=function, ZipFile=buffer.getvalue())
        newest = lam.publish_version(FunctionName=function)['Version']
    lam.create_alias(FunctionName=function, Name=ids.LIVE_ALIAS, FunctionVersion=newest)

    def published():
        return [v['Version'] for v in lam.list_versions_by_function(
            FunctionName=function)['Versions'] if v['Version'] != '$LATEST']
    before = published()
    assert len(before) >= 4, before
    result = emulator.make('prune', 'STAGE=%s' % deploy.stage, 'KEEP_VERSIONS=1')
    assert result.returncode == 0, _ran(result)
    assert 'in region %s' % PROFILE_REGION in result.stdout
    left = [before[-2], newest]
    assert published() == left
    assert '%s: deleted %s; live %s, kept %s' % (
        ids.IMPORT_UPLOAD, ', '.join(before[:-2]), newest, before[-2]) in result.stdout
