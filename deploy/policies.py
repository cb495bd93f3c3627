"""Each function's IAM policy, per stage; deploy/resources.py puts each on its function's role.

deploy/check_policy.py holds them to the AWS calls the test suite recorded,
both ways: keep a statement here only with the code that calls it.

    python deploy/policies.py --stage prod    # prints {function: policy}
"""
import argparse
import json
import sys

# deploy/ is not a package: its modules import each other from its folder.
from ids import (API_HANDLER, BUCKET, CHANGES_DEAD_LETTERS, CODEDEPLOY_APPLICATION,
                 EVENTS_DEAD_LETTERS, IMPORT_UPLOAD, INGEST_QUEUE, LIVE_ALIAS,
                 PRE_TRAFFIC_CHECK, PUBLISH_CHANGES, QUEUE, ROLES, SCHEDULED_EXPORT, TABLE,
                 TOKEN_AUTHORIZER, TOPIC)

ACCOUNT = 'arn:${AWS::Partition}:%s:${AWS::Region}:${AWS::AccountId}:%s'

# What each function's code does with the table (recorded by the suite).
TABLE_ACTIONS = {
    API_HANDLER: ['DeleteItem', 'GetItem', 'PutItem', 'Query', 'UpdateItem'],
    INGEST_QUEUE: ['DeleteItem', 'PutItem', 'UpdateItem'],
    IMPORT_UPLOAD: ['BatchWriteItem', 'PutItem', 'UpdateItem'],
    SCHEDULED_EXPORT: ['Query'],
}


def token_parameter_name(stage):
    """The SSM SecureString holding the stage's write tokens."""
    return '/cars/%s/auth-tokens' % stage


def _sub(text):
    return {'Fn::Sub': text}


def _statement(sid, actions, resource, condition=None):
    out = {'Sid': sid, 'Effect': 'Allow', 'Action': sorted(actions), 'Resource': resource}
    if condition:
        out['Condition'] = condition
    return out


def _logs(function):
    # The function's own log group, created by the stack with a retention
    # (deploy/resources.py), so no logs:CreateLogGroup. It cannot be named by
    # reference (role -> log group -> function -> role is a cycle), so by the
    # name CloudFormation gives the function: <stack>-<logical id>-<suffix>.
    return _statement('OwnLogGroup', ['logs:CreateLogStream', 'logs:PutLogEvents'], _sub(
        ACCOUNT % ('logs', 'log-group:/aws/lambda/${AWS::StackName}-%s-*' % function)))


def _xray():
    # Active tracing: the Lambda service sends the function's segments with
    # these two actions, which take no resource narrower than "*".
    return _statement('ActiveTracing', ['xray:PutTelemetryRecords', 'xray:PutTraceSegments'],
                      '*')


def _table(function):
    return _statement('CarItems', ['dynamodb:%s' % a for a in TABLE_ACTIONS[function]],
                      {'Fn::GetAtt': [TABLE, 'Arn']})


def _tokens(stage):
    parameter = _sub(ACCOUNT % ('ssm', 'parameter' + token_parameter_name(stage)))
    return [
        _statement('ReadWriteTokens', ['ssm:GetParameter'], parameter),
        _statement('DecryptWriteTokensThroughSsmOnly', ['kms:Decrypt'],
                   _sub(ACCOUNT % ('kms', 'key/*')),
                   {'StringEquals': {
                       'kms:ViaService': _sub('ssm.${AWS::Region}.amazonaws.com'),
                       'kms:EncryptionContext:PARAMETER_ARN': parameter}}),
    ]


def _objects(sid, action, *prefixes):
    resources = [_sub('${%s.Arn}/%s*' % (BUCKET, p)) for p in prefixes]
    return _statement(sid, [action], resources[0] if len(resources) == 1 else resources)


def _failed_events():
    # Lambda sends an event that failed every asynchronous try of the function
    # to its dead-letter queue with the function's role.
    return _statement('FailedEventsToDeadLetterQueue', ['sqs:SendMessage'],
                      {'Fn::GetAtt': [EVENTS_DEAD_LETTERS, 'Arn']})


def statements(function, stage):
    """The statements of `function`'s policy, besides logs and tracing."""
    if function == API_HANDLER:
        # Writes are checked by the authorizer in front of it, so the API
        # function never reads the tokens (chalicelib/http/auth.py).
        return [_table(function)]
    if function == TOKEN_AUTHORIZER:
        return _tokens(stage)
    if function == INGEST_QUEUE:
        return [
            _table(function),
            # Lambda's event source mapping polls the queue with the function's role.
            _statement('PollIngestQueue', ['sqs:DeleteMessage', 'sqs:GetQueueAttributes',
                                           'sqs:ReceiveMessage'],
                       {'Fn::GetAtt': [QUEUE, 'Arn']}),
        ]
    if function == IMPORT_UPLOAD:
        return [
            _table(function),
            _objects('ReadImports', 's3:GetObject', 'imports/'),
            _objects('WriteReports', 's3:PutObject', 'reports/'),
            _failed_events(),
        ]
    if function == PUBLISH_CHANGES:
        return [
            # Lambda's event source mapping reads the stream with the function's role
            _statement('ReadChangeStream', ['dynamodb:DescribeStream', 'dynamodb:GetRecords',
                                            'dynamodb:GetShardIterator',
                                            'dynamodb:ListStreams'],
                       _sub('${%s.Arn}/stream/*' % TABLE)),
            # ... and sends what keeps failing to the OnFailure destination.
            _statement('StreamFailuresToDeadLetterQueue', ['sqs:SendMessage'],
                       {'Fn::GetAtt': [CHANGES_DEAD_LETTERS, 'Arn']}),
            _statement('PublishChangeEvents', ['sns:Publish'], {'Ref': TOPIC}),
            _statement('EncryptChangeEventsWithTheSnsKey', ['kms:Decrypt', 'kms:GenerateDataKey'],
                       _sub(ACCOUNT % ('kms', 'key/*')),
                       {'StringEquals': {
                           'kms:ViaService': _sub('sns.${AWS::Region}.amazonaws.com'),
                           'kms:EncryptionContext:aws:sns:topicArn': {'Ref': TOPIC}}}),
        ]
    if function == SCHEDULED_EXPORT:
        return [_table(function), _objects('WriteExports', 's3:PutObject', 'exports/'),
                _failed_events()]
    if function == PRE_TRAFFIC_CHECK:
        return hook_statements()
    raise KeyError(function)


# The functions whose new versions the pre-traffic hook invokes before
# CodeDeploy shifts traffic (chalicelib/release/pretraffic.py).
HOOK_TARGETS = (API_HANDLER, TOKEN_AUTHORIZER)


def hook_statements():
    """The pre-traffic hook: invoke the new versions, then tell CodeDeploy."""
    return [
        # Any published version (or the alias) of the two functions it tests;
        # never $LATEST, which the unqualified ARN would be.
        _statement('InvokeNewVersions', ['lambda:InvokeFunction'],
                   [_sub('${%s.Arn}:*' % f) for f in HOOK_TARGETS]),
        # PutLifecycleEventHookExecutionStatus is authorized on the deployment
        # group: only this stack's CodeDeploy application's groups.
        _statement('ReportToCodeDeploy', ['codedeploy:PutLifecycleEventHookExecutionStatus'],
                   _sub(ACCOUNT % ('codedeploy', 'deploymentgroup:${%s}/*'
                                   % CODEDEPLOY_APPLICATION))),
    ]


def codedeploy_role_policy(functions, hook=True):
    """What CodeDeploy does with its service role in this stack's deployments.

    The AWS managed AWSCodeDeployRoleForLambda grants cloudwatch:DescribeAlarms,
    lambda:GetAlias/UpdateAlias/GetProvisionedConcurrencyConfig and sns:Publish
    on "*", S3 reads of CodeDeploy revisions, and lambda:InvokeFunction on any
    function named CodeDeployHook_*. Here: the aliases of this stack's
    functions only, this account's alarms, this stack's hook; no SNS (no
    deployment triggers) and no S3 (CloudFormation hands CodeDeploy the
    AppSpec itself).
    """
    aliases = [_sub('${%s.Arn}:%s' % (f, LIVE_ALIAS)) for f in functions]
    statements = [
        _statement('ShiftTheLiveAliases', ['lambda:GetAlias', 'lambda:UpdateAlias',
                                           'lambda:GetProvisionedConcurrencyConfig'], aliases),
        _statement('ReadTheRollbackAlarms', ['cloudwatch:DescribeAlarms'],
                   _sub(ACCOUNT % ('cloudwatch', 'alarm:*'))),
    ]
    if hook:
        statements.append(_statement('RunThePreTrafficHook', ['lambda:InvokeFunction'],
                                     {'Fn::GetAtt': [PRE_TRAFFIC_CHECK, 'Arn']}))
    return {'Version': '2012-10-17', 'Statement': statements}


def policy(function, stage):
    return {'Version': '2012-10-17',
            'Statement': [_logs(function), _xray()] + statements(function, stage)}


def build(stage):
    """{function logical id: its policy document} for `stage` (the functions
    that serve traffic and the pre-traffic hook)."""
    return {function: policy(function, stage) for function in sorted(ROLES)}


def role_overrides(stage, hook=True):
    """Merge-template entries replacing each Chalice role's policy with its own
    (the hook's only when app.py has the hook: a role override for a function
    Chalice does not make would be a resource without a type)."""
    return {ROLES[function]: {'Properties': {'Policies': [{
        'PolicyName': '%sPolicy' % ROLES[function], 'PolicyDocument': document}]}}
        for function, document in build(stage).items()
        if hook or function != PRE_TRAFFIC_CHECK}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stage', required=True, choices=['dev', 'prod'])
    args = parser.parse_args(argv)
    json.dump(build(args.stage), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
