"""The merge template for `chalice package`: what a stage needs besides Chalice's functions and API.

`build(stage)` adds the table (from chalicelib/store/table.json), queues, bucket,
topic, log groups and gateway responses, points Chalice's placeholders at them,
sends what keeps failing to dead-letter queues, gives each role its own policy
(deploy/policies.py) and each function its reserved concurrency, adds monitoring
(deploy/monitoring.py) with the alarm topic's own KMS key, and makes every
queue, topic and the bucket refuse requests not made over TLS. Versions, the
`live` alias, CodeDeploy's canaries and SnapStart come from release_template.py.

    python deploy/resources.py --stage prod > resources.json
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# deploy/ is not a package; the repository root holds app.py and chalicelib.
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), ROOT]

import monitoring  # noqa: E402 - deploy/ is not a package; log settings, alarms, dashboard
import policies  # noqa: E402
import release_template  # noqa: E402 - versions, the live alias, CodeDeploy, SnapStart
from ids import (API_HANDLER, BUCKET, CHANGES_DEAD_LETTERS, EVENTS_DEAD_LETTERS,  # noqa: E402
                 EXPORT_EVENT, EXPORT_RULE, FUNCTIONS, HOOK_HANDLER, IMPORT_EVENT, IMPORT_RULE,
                 IMPORT_UPLOAD, INGEST_EVENT, INGEST_QUEUE, PRE_TRAFFIC_CHECK, PUBLISH_CHANGES,
                 PUBLISH_EVENT, QUEUE, REST_API, SCHEDULED_EXPORT, TABLE, TOKEN_AUTHORIZER,
                 TOPIC)
from chalicelib.store import table  # noqa: E402

# Settings that differ between stages. Throttling: requests per second
# (steady) and burst, for the whole stage.
# Bucket lifecycle, in days: old versions of any object, then the import
# reports and the daily exports (both can be made again; uploads under
# imports/ are the operators' own and are kept).
STAGES = {
    'dev': {'rate_limit': 50, 'burst_limit': 100, 'log_retention_days': 14,
            'protect_data': False, 'noncurrent_version_days': 7,
            'report_days': 30, 'export_days': 14,
            'reserved_concurrency': {
                API_HANDLER: 10, TOKEN_AUTHORIZER: 5, INGEST_QUEUE: 2,
                IMPORT_UPLOAD: 1, PUBLISH_CHANGES: 2, SCHEDULED_EXPORT: 1}},
    'prod': {'rate_limit': 500, 'burst_limit': 1000, 'log_retention_days': 365,
             'protect_data': True, 'noncurrent_version_days': 30,
             'report_days': 365, 'export_days': 90,
             'reserved_concurrency': {
                 API_HANDLER: 100, TOKEN_AUTHORIZER: 50, INGEST_QUEUE: 10,
                 IMPORT_UPLOAD: 2, PUBLISH_CHANGES: 10, SCHEDULED_EXPORT: 1}},
}
# Reserved concurrency (ReservedConcurrentExecutions), per function and stage:
# each function is guaranteed that many concurrent runs and never takes more,
# so a flood of reads cannot starve the event handlers (or another stack's
# functions) and a burst of events cannot starve the API. The figures and why
# are in docs/deployment.md ("Reserved concurrency", #reserved-concurrency).
# The ingest queue's event source polls with at most as many concurrent runs
# as the function may have (ScalingConfig.MaximumConcurrency, 2 at least), so
# messages wait in the queue instead of being throttled towards its
# dead-letter queue.

# Our own resources that only this module names (the shared ids are in deploy/ids.py).
DEAD_LETTERS = 'CarsIngestDeadLetterQueue'
ACCESS_LOGS = 'ApiAccessLogs'
# The customer managed key the alarm topic is encrypted with (see alarm_topic_key).
ALARM_KEY = 'AlarmTopicKey'
ALARM_KEY_ALIAS = 'AlarmTopicKeyAlias'

ACCOUNT_ROLE_CONDITION = 'CreateApiGatewayAccountRole'
# CORS conditions on the CorsOrigins parameter (see gateway_responses).
CORS_ONE_ORIGIN = 'CorsOneOrigin'

# How often a message is tried before it moves to the dead-letter queue.
MAX_RECEIVE_COUNT = 5
# AWS advises a queue visibility timeout of six times the consumer's timeout,
# so a batch that is retried inside Lambda does not reappear meanwhile.
INGEST_VISIBILITY_SECONDS = 6 * 29
# EventBridge's own retries of a delivery to a function (throttled, not yet
# allowed), after which the event goes to the dead-letter queue.
RULE_RETRY_POLICY = {'MaximumRetryAttempts': 20, 'MaximumEventAgeInSeconds': 6 * 3600}
# The SAM event source properties that send what keeps failing somewhere.
STREAM_FAILURES = {
    # A record that keeps failing must not block the stream for 24 hours.
    'MaximumRetryAttempts': 10,
    'BisectBatchOnFunctionError': True,
    # The handler returns batchItemFailures: only the failed record onwards
    # is retried, not the events already published.
    'FunctionResponseTypes': ['ReportBatchItemFailures'],
}


def auth_parameter_name(stage):
    """The SSM SecureString holding the stage's write tokens (created by hand:
    CloudFormation cannot create SecureString parameters)."""
    return policies.token_parameter_name(stage)


def table_properties():
    return table.cloudformation_properties()


def _sub(text):
    return {'Fn::Sub': text}


def _arn(name):
    return {'Fn::GetAtt': [name, 'Arn']}


# --- problem+json bodies for API Gateway's own errors --------------------------

# API Gateway answers some requests before any function runs: an unknown path
# (MISSING_AUTHENTICATION_TOKEN, a 403 by default), a refused token, throttling.
# These templates give them the contract's problem shape, with the titles and
# `type` links of chalicelib/http/problems.py. Only $context values that API
# Gateway escapes for JSON ($context.error.messageString is quoted and
# escaped) are interpolated, so no request text can break the JSON.
GATEWAY_PROBLEMS = {
    # type: (status, slug or None, detail or None for API Gateway's message)
    'MISSING_AUTHENTICATION_TOKEN': (404, None, 'no resource at this path'),
    'RESOURCE_NOT_FOUND': (404, None, 'no resource at this path'),
    'UNAUTHORIZED': (401, 'unauthorized', 'send Authorization: Bearer <token> to write'),
    'ACCESS_DENIED': (403, 'forbidden', 'this token may not write'),
    'AUTHORIZER_FAILURE': (503, 'auth-unavailable',
                           'write protection is unavailable; retry shortly'),
    'AUTHORIZER_CONFIGURATION_ERROR': (503, 'auth-unavailable',
                                       'write protection is unavailable; retry shortly'),
    'THROTTLED': (429, None, 'too many requests; retry shortly'),
    'QUOTA_EXCEEDED': (429, None, 'request quota exceeded'),
    'REQUEST_TOO_LARGE': (413, None, 'the request is too large'),
    'UNSUPPORTED_MEDIA_TYPE': (415, 'unsupported-media-type',
                               'send application/json or application/x-www-form-urlencoded'),
    'BAD_REQUEST_BODY': (400, None, None),
    'BAD_REQUEST_PARAMETERS': (400, None, None),
    'INVALID_API_KEY': (403, 'forbidden', None),
    'INVALID_SIGNATURE': (403, 'forbidden', None),
    'EXPIRED_TOKEN': (403, 'forbidden', None),
    'WAF_FILTERED': (403, 'forbidden', None),
    'INTEGRATION_TIMEOUT': (504, None, 'the request took too long'),
    'INTEGRATION_FAILURE': (502, None, 'an internal error occurred'),
    'API_CONFIGURATION_ERROR': (500, None, 'an internal error occurred'),
    'DEFAULT_4XX': (400, None, None),
    'DEFAULT_5XX': (500, None, 'an internal error occurred'),
}


def problem_template(status, slug, detail):
    # Imported here: problems.py imports chalice, and deploy/package.py imports
    # this module before it checks which Python runs it.
    from chalicelib.http.problems import REASONS, type_uri
    return '{"type": %s, "title": %s, "status": %d, "detail": %s}' % (
        json.dumps(type_uri(slug)), json.dumps(REASONS[status]), status,
        json.dumps(detail) if detail else '$context.error.messageString')


# The 401 names the scheme, as the app's own 401 does (chalicelib/http/auth.py).
CHALLENGE = 'Bearer realm="cars"'


def _cors_expose_headers():
    from chalicelib.http import cors
    return cors.EXPOSE_HEADERS


def _header(value):
    # Gateway response header values are static: a quoted literal.
    return "'%s'" % value


def cors_conditions():
    """CORS on API Gateway's own errors, from the CorsOrigins parameter.

    chalicelib/http/cors.py echoes the caller's origin when it is one of the
    allowed ones. A gateway response cannot: its headers are fixed when the
    stage is deployed. So with one origin (or `*`) the gateway's errors carry
    it, as the app's answers would; with several they carry none: one fixed
    origin would be right for only one of them, and `*` would admit origins the
    stage does not list. Browsers at such a stage see the gateway's own errors (unknown
    path, refused token, throttling) as network errors; the app's are unchanged.
    """
    origins = {'Ref': 'CorsOrigins'}
    return {
        'CorsOff': {'Fn::Equals': [origins, '']},
        CORS_ONE_ORIGIN: {'Fn::And': [
            {'Fn::Not': [{'Condition': 'CorsOff'}]},
            # No comma: the first item of the list is the whole value.
            {'Fn::Equals': [{'Fn::Select': [0, {'Fn::Split': [',', origins]}]}, origins]},
        ]},
    }


def gateway_responses():
    from chalicelib.http.problems import PROBLEM
    expose = _cors_expose_headers()
    out = {}
    for kind, (status, slug, detail) in GATEWAY_PROBLEMS.items():
        headers = {'gatewayresponse.header.Content-Type': _header(PROBLEM)}
        if status == 401:
            headers['gatewayresponse.header.WWW-Authenticate'] = _header(CHALLENGE)
        with_cors = dict(headers, **{
            'gatewayresponse.header.Access-Control-Allow-Origin': _sub("'${CorsOrigins}'"),
            'gatewayresponse.header.Access-Control-Expose-Headers': _header(expose),
            'gatewayresponse.header.Vary': _header('Origin'),
        })
        out[kind] = {
            'statusCode': str(status),
            'responseParameters': {'Fn::If': [CORS_ONE_ORIGIN, with_cors, headers]},
            'responseTemplates': {
                'application/json': problem_template(status, slug, detail),
            },
        }
    return out


def api_paths():
    """The app's route paths, so each can send unknown methods to the function."""
    from app import app
    return sorted(app.routes)


def has_pre_traffic_hook():
    """Whether app.py defines the pre-traffic hook (ids.HOOK_HANDLER), which
    Chalice then packages as ids.PRE_TRAFFIC_CHECK."""
    from app import app
    return any(f.name == HOOK_HANDLER for f in app.pure_lambda_functions)


def any_method_fallbacks(paths):
    # API Gateway answers a known path with an unknown method as it answers an
    # unknown path (403, "Missing Authentication Token"). An ANY method on each
    # path (explicit methods take precedence) sends the rest to the function,
    # whose router answers 405 with an Allow header and a problem body.
    integration = {
        'type': 'aws_proxy',
        'httpMethod': 'POST',
        'passthroughBehavior': 'when_no_match',
        'contentHandling': 'CONVERT_TO_TEXT',
        # Through the live alias, as every route (release_template.py).
        'uri': _sub('arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/'
                    '2015-03-31/functions/%s/invocations'
                    % release_template.alias_sub(API_HANDLER)),
    }
    method = {
        'responses': {'405': {'description': 'method not allowed'}},
        'x-amazon-apigateway-integration': integration,
    }
    return {path: {'x-amazon-apigateway-any-method': method} for path in paths}


# One JSON object a line. $context.error.messageString is API Gateway's
# message already quoted and escaped for JSON, so it goes in unquoted
# ($context.error.message in quotes breaks the line on a message with a quote).
ACCESS_LOG_FORMAT = json.dumps({
    'requestId': '$context.requestId', 'ip': '$context.identity.sourceIp',
    'time': '$context.requestTime', 'method': '$context.httpMethod',
    'path': '$context.path', 'status': '$context.status',
    'length': '$context.responseLength', 'latencyMs': '$context.responseLatency',
    'integrationLatencyMs': '$context.integrationLatency',
}, separators=(',', ':'))[:-1] + ',"error":$context.error.messageString}'


def _deny_plain_http(action, resource):
    """The statement refusing requests not made over TLS (as the bucket's policy)."""
    return {'Sid': 'DenyPlainHttp', 'Effect': 'Deny', 'Principal': '*',
            'Action': action, 'Resource': resource,
            'Condition': {'Bool': {'aws:SecureTransport': 'false'}}}


def _queue_policy(queue, *statements):
    # A queue has one policy: a second QueuePolicy on it would replace the first.
    return {'Type': 'AWS::SQS::QueuePolicy', 'Properties': {
        'Queues': [{'Ref': queue}],
        'PolicyDocument': {'Version': '2012-10-17', 'Statement': [
            _deny_plain_http('sqs:*', _arn(queue))] + list(statements)},
    }}


def _topic_policy(topic, *statements):
    # SNS documents the Deny on sns:Publish ("Enforce encryption of data in
    # transit"). Within the account, roles need no Allow here: their own
    # policies grant what they do (PublishChanges's sns:Publish).
    return {'Type': 'AWS::SNS::TopicPolicy', 'Properties': {
        'Topics': [{'Ref': topic}],
        'PolicyDocument': {'Version': '2012-10-17', 'Statement': [
            _deny_plain_http('sns:Publish', {'Ref': topic})] + list(statements)},
    }}


def tls_only_policies():
    """Every queue and topic refuses requests not made over TLS; the events
    dead-letter queue's policy (dead_letter_queues) carries the same Deny."""
    return {
        'CarsIngestQueueTlsOnly': _queue_policy(QUEUE),
        'CarsIngestDeadLetterQueueTlsOnly': _queue_policy(DEAD_LETTERS),
        'CarsChangesDeadLetterQueueTlsOnly': _queue_policy(CHANGES_DEAD_LETTERS),
        'CarsChangesTopicTlsOnly': _topic_policy(TOPIC),
        'AlarmTopicTlsOnly': _topic_policy(
            monitoring.ALARM_TOPIC,
            # Replacing SNS's default topic policy takes away what let
            # CloudWatch publish: the alarms of this account may, and only they.
            {'Sid': 'AlarmsOfThisAccount', 'Effect': 'Allow',
             'Principal': {'Service': 'cloudwatch.amazonaws.com'},
             'Action': 'sns:Publish', 'Resource': {'Ref': monitoring.ALARM_TOPIC},
             'Condition': {
                 'ArnLike': {'aws:SourceArn': _sub(
                     'arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:'
                     'alarm:*')},
                 'StringEquals': {'aws:SourceAccount': {'Ref': 'AWS::AccountId'}}}}),
    }


def alarm_topic_key():
    """A customer managed KMS key for the alarm topic, which CloudWatch may use.

    CloudWatch cannot publish to a topic under the AWS managed SNS key
    (alias/aws/sns, the events topic's): that key's policy cannot be changed to
    let cloudwatch.amazonaws.com use it. AWS's answer is a customer managed key
    whose policy does; the account keeps administering it through IAM.
    """
    return {
        ALARM_KEY: {
            'Type': 'AWS::KMS::Key',
            'DeletionPolicy': 'Delete', 'UpdateReplacePolicy': 'Delete',
            'Properties': {
                'Description': _sub('${AWS::StackName}: encrypts the alarm topic'),
                'EnableKeyRotation': True,
                'PendingWindowInDays': 7,
                'KeyPolicy': {'Version': '2012-10-17', 'Statement': [
                    {'Sid': 'AccountAdministersThroughIam', 'Effect': 'Allow',
                     'Principal': {'AWS': _sub(
                         'arn:${AWS::Partition}:iam::${AWS::AccountId}:root')},
                     'Action': 'kms:*', 'Resource': '*'},
                    {'Sid': 'CloudWatchAlarmsPublish', 'Effect': 'Allow',
                     'Principal': {'Service': 'cloudwatch.amazonaws.com'},
                     'Action': ['kms:Decrypt', 'kms:GenerateDataKey*'], 'Resource': '*'},
                ]},
            },
        },
        ALARM_KEY_ALIAS: {
            'Type': 'AWS::KMS::Alias',
            'Properties': {'AliasName': _sub('alias/${AWS::StackName}-alarms'),
                           'TargetKeyId': {'Ref': ALARM_KEY}},
        },
    }


def _merge(into, extra):
    """Deep-merge dict `extra` into `into` (later overrides of one logical id)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def reserved_concurrency(settings):
    """Overrides of Chalice's functions: each one's reserved concurrency."""
    figures = settings['reserved_concurrency']
    assert sorted(figures) == sorted(FUNCTIONS), 'a figure for every function'
    out = {function: {'Properties': {'ReservedConcurrentExecutions': n}}
           for function, n in figures.items()}
    out[INGEST_QUEUE]['Properties']['Events'] = {INGEST_EVENT: {'Properties': {
        'ScalingConfig': {'MaximumConcurrency': max(2, figures[INGEST_QUEUE])}}}}
    return out


def _queue(**properties):
    return {'Type': 'AWS::SQS::Queue',
            'Properties': dict({'MessageRetentionPeriod': 14 * 24 * 3600,
                                'SqsManagedSseEnabled': True}, **properties)}


def dead_letter_queues():
    return {
        DEAD_LETTERS: _queue(),
        EVENTS_DEAD_LETTERS: _queue(),
        CHANGES_DEAD_LETTERS: _queue(),
        # EventBridge sends what it cannot deliver with the rule's own
        # identity, so the queue admits events.amazonaws.com for our two rules
        # only. (The functions' own sends are allowed by their roles.)
        'CarsEventsDeadLetterQueuePolicy': {
            'Type': 'AWS::SQS::QueuePolicy',
            'Properties': {
                'Queues': [{'Ref': EVENTS_DEAD_LETTERS}],
                'PolicyDocument': {'Version': '2012-10-17', 'Statement': [
                    # The queue's only policy, so the TLS-only Deny is here too.
                    _deny_plain_http('sqs:*', _arn(EVENTS_DEAD_LETTERS)),
                    {'Sid': 'UndeliveredRuleEvents', 'Effect': 'Allow',
                     'Principal': {'Service': 'events.amazonaws.com'},
                     'Action': 'sqs:SendMessage', 'Resource': _arn(EVENTS_DEAD_LETTERS),
                     'Condition': {'ArnEquals': {'aws:SourceArn': [
                         _arn(IMPORT_RULE), _arn(EXPORT_RULE)]}}},
                ]},
            },
        },
    }


def bucket(settings, retain):
    return dict(retain, Type='AWS::S3::Bucket', Properties={
        'PublicAccessBlockConfiguration': {
            'BlockPublicAcls': True, 'BlockPublicPolicy': True,
            'IgnorePublicAcls': True, 'RestrictPublicBuckets': True},
        'BucketEncryption': {'ServerSideEncryptionConfiguration': [
            {'ServerSideEncryptionByDefault': {'SSEAlgorithm': 'AES256'},
             'BucketKeyEnabled': True}]},
        'OwnershipControls': {'Rules': [{'ObjectOwnership': 'BucketOwnerEnforced'}]},
        'VersioningConfiguration': {'Status': 'Enabled'},
        'LifecycleConfiguration': {'Rules': [
            # Versioning is there to undo a mistake, not to keep every
            # export forever: an overwritten or deleted object's old version
            # goes after a while, then its delete marker.
            {'Id': 'ExpireOldVersions', 'Status': 'Enabled',
             'NoncurrentVersionExpiration': {
                 'NoncurrentDays': settings['noncurrent_version_days']},
             'ExpiredObjectDeleteMarker': True,
             'AbortIncompleteMultipartUpload': {'DaysAfterInitiation': 1}},
            {'Id': 'ExpireReports', 'Status': 'Enabled', 'Prefix': 'reports/',
             'ExpirationInDays': settings['report_days']},
            {'Id': 'ExpireExports', 'Status': 'Enabled', 'Prefix': 'exports/',
             'ExpirationInDays': settings['export_days']},
        ]},
        'NotificationConfiguration': {
            'EventBridgeConfiguration': {'EventBridgeEnabled': True}},
    })


def account_logging_role():
    """API Gateway's account-wide CloudWatch role, only where asked for.

    Access logging needs it set once per account and region; two stacks that
    both manage it would take it from each other. It is retained when the
    stack that made it goes, since other stacks' logging relies on it.
    """
    created = {'Condition': ACCOUNT_ROLE_CONDITION,
               'DeletionPolicy': 'Retain', 'UpdateReplacePolicy': 'Retain'}
    return {
        'ApiGatewayLoggingRole': dict(created, Type='AWS::IAM::Role', Properties={
            'AssumeRolePolicyDocument': {'Version': '2012-10-17', 'Statement': [{
                'Effect': 'Allow', 'Principal': {'Service': 'apigateway.amazonaws.com'},
                'Action': 'sts:AssumeRole'}]},
            'ManagedPolicyArns': [_sub(
                'arn:${AWS::Partition}:iam::aws:policy/service-role/'
                'AmazonAPIGatewayPushToCloudWatchLogs')],
        }),
        'ApiGatewayAccount': dict(created, Type='AWS::ApiGateway::Account', Properties={
            'CloudWatchRoleArn': _arn('ApiGatewayLoggingRole')}),
        # DependsOn cannot name a resource whose condition may be false; this
        # handle refers to the account setting when there is one, so the API
        # (and its access-logged stage) waits for it.
        'ApiGatewayAccountReady': {
            'Type': 'AWS::CloudFormation::WaitConditionHandle',
            'Metadata': {'AccountSetting': {'Fn::If': [
                ACCOUNT_ROLE_CONDITION, {'Ref': 'ApiGatewayAccount'}, 'managed elsewhere']}},
        },
    }


def function_log_groups(settings, functions=FUNCTIONS):
    # Lambda would create /aws/lambda/<name> itself, without a retention, if
    # the role allowed logs:CreateLogGroup (it does not, see policies.py).
    return {'%sLogGroup' % function: {
        'Type': 'AWS::Logs::LogGroup',
        'DeletionPolicy': 'Delete', 'UpdateReplacePolicy': 'Delete',
        'Properties': {'LogGroupName': _sub('/aws/lambda/${%s}' % function),
                       'RetentionInDays': settings['log_retention_days']},
    } for function in functions}


def _events(function, event, properties, **function_properties):
    return {function: {'Properties': dict(function_properties, Events={
        event: {'Properties': properties}})}}


def event_sources():
    """Overrides of Chalice's event sources: our resources instead of its
    placeholders, and somewhere for what keeps failing to go."""
    # A function invoked by a rule runs asynchronously: Lambda tries it three
    # times, then sends the event to the function's dead-letter queue.
    undelivered = {'DeadLetterConfig': {'Arn': _arn(EVENTS_DEAD_LETTERS)},
                   'RetryPolicy': RULE_RETRY_POLICY}
    failed = {'Type': 'SQS', 'TargetArn': _arn(EVENTS_DEAD_LETTERS)}
    out = {}
    out.update(_events(INGEST_QUEUE, INGEST_EVENT, {
        # Chalice writes the queue as a Fn::Sub; the merge is a deep merge
        # of dicts, so only the same intrinsic key replaces it.
        'Queue': _sub('${%s.Arn}' % QUEUE),
        # Only the failed messages of a batch are retried (the handler
        # returns batchItemFailures); Chalice does not set this itself.
        'FunctionResponseTypes': ['ReportBatchItemFailures'],
    }))
    out.update(_events(IMPORT_UPLOAD, IMPORT_EVENT, dict(undelivered, Pattern={
        'detail': {'bucket': {'name': [{'Ref': BUCKET}]}}}), DeadLetterQueue=failed))
    out.update(_events(SCHEDULED_EXPORT, EXPORT_EVENT, undelivered, DeadLetterQueue=failed))
    out.update(_events(PUBLISH_CHANGES, PUBLISH_EVENT, dict(
        STREAM_FAILURES, Stream={'Fn::GetAtt': [TABLE, 'StreamArn']},
        DestinationConfig={'OnFailure': {'Destination': _arn(CHANGES_DEAD_LETTERS)}})))
    return out


def rest_api(settings, paths):
    return {REST_API: {
        'DependsOn': ['ApiGatewayAccountReady'],
        'Properties': {
            # Without it, the SAM transform deploys a second stage named
            # "Stage", with no throttling and no access logs. The definition
            # stays Swagger 2.0: SAM changes only OpenAPI 3 bodies.
            'OpenApiVersion': '3.0.1',
            # `xray: true` in .chalice/config.json traces the functions; Chalice's
            # SAM output does not trace the stage, so it is turned on here.
            'TracingEnabled': True,
            'MethodSettings': [{
                'ResourcePath': '/*', 'HttpMethod': '*',
                'ThrottlingRateLimit': settings['rate_limit'],
                'ThrottlingBurstLimit': settings['burst_limit'],
                'MetricsEnabled': True,
            }],
            'AccessLogSetting': {'DestinationArn': _arn(ACCESS_LOGS),
                                 'Format': ACCESS_LOG_FORMAT},
            'DefinitionBody': {
                'x-amazon-apigateway-gateway-responses': gateway_responses(),
                'paths': any_method_fallbacks(api_paths() if paths is None else paths),
            },
        },
    }}


def build(stage, paths=None, hook=None):
    """The merge template for `stage` (`paths`: the API's routes, default app.py's;
    `hook`: whether app.py has the pre-traffic hook, default: look)."""
    settings = STAGES[stage]
    hook = has_pre_traffic_hook() if hook is None else hook
    deployed = FUNCTIONS + ([PRE_TRAFFIC_CHECK] if hook else [])
    keep = settings['protect_data']
    retain = {'DeletionPolicy': 'Retain', 'UpdateReplacePolicy': 'Retain'} if keep else {
        'DeletionPolicy': 'Delete', 'UpdateReplacePolicy': 'Delete'}
    table = dict(table_properties())
    table['DeletionProtectionEnabled'] = keep
    table['Tags'] = [{'Key': 'stage', 'Value': stage}]
    resources = {
        TABLE: dict(retain, Type='AWS::DynamoDB::Table', Properties=table),
        QUEUE: _queue(
            MessageRetentionPeriod=4 * 24 * 3600,
            VisibilityTimeout=INGEST_VISIBILITY_SECONDS,
            RedrivePolicy={'deadLetterTargetArn': _arn(DEAD_LETTERS),
                           'maxReceiveCount': MAX_RECEIVE_COUNT}),
        BUCKET: bucket(settings, retain),
        'CarsBucketTlsOnly': {
            'Type': 'AWS::S3::BucketPolicy',
            'Properties': {
                'Bucket': {'Ref': BUCKET},
                'PolicyDocument': {'Version': '2012-10-17', 'Statement': [{
                    'Sid': 'DenyPlainHttp', 'Effect': 'Deny', 'Principal': '*',
                    'Action': 's3:*',
                    'Resource': [_arn(BUCKET), _sub('${%s.Arn}/*' % BUCKET)],
                    'Condition': {'Bool': {'aws:SecureTransport': 'false'}},
                }]},
            },
        },
        TOPIC: {
            'Type': 'AWS::SNS::Topic',
            'Properties': {'KmsMasterKeyId': 'alias/aws/sns'},
        },
        ACCESS_LOGS: {
            'Type': 'AWS::Logs::LogGroup',
            'DeletionPolicy': 'Delete', 'UpdateReplacePolicy': 'Delete',
            'Properties': {'RetentionInDays': settings['log_retention_days']},
        },
    }
    resources.update(dead_letter_queues())
    resources.update(account_logging_role())
    resources.update(function_log_groups(settings, deployed))
    # --- overrides of Chalice's own resources (merged by logical id) ---
    resources.update(policies.role_overrides(stage, hook))
    resources.update(event_sources())
    _merge(resources, reserved_concurrency(settings))
    resources.update(rest_api(settings, paths))
    template = {
        'Parameters': {
            'CorsOrigins': {
                'Type': 'String', 'Default': '',
                'Description': 'Comma-separated origins allowed to call the API from a '
                               'browser (CARS_CORS_ORIGINS), written as browsers send '
                               'them (no trailing slash), or *; empty means none.',
            },
            ACCOUNT_ROLE_CONDITION: {
                'Type': 'String', 'Default': 'false', 'AllowedValues': ['true', 'false'],
                'Description': "true: this stack sets API Gateway's account-wide CloudWatch "
                               'logging role (needed once per account and region).',
            },
        },
        'Conditions': dict(cors_conditions(), **{
            ACCOUNT_ROLE_CONDITION: {'Fn::Equals': [{'Ref': ACCOUNT_ROLE_CONDITION}, 'true']},
        }),
        # Every function (the API, the authorizer, the event handlers) finds
        # the stack's resources here. They are not in .chalice/config.json
        # because `chalice local` applies a stage's variables to the local
        # process, and local development must stay on sqlite with open writes.
        'Globals': {'Function': {'Environment': {'Variables': {
            'CARS_TABLE': {'Ref': TABLE},
            'CARS_BUCKET': {'Ref': BUCKET},
            'CARS_EVENTS_TOPIC_ARN': {'Ref': TOPIC},
            'CARS_AUTH_SSM_PARAMETER': auth_parameter_name(stage),
            'CARS_CORS_ORIGINS': {'Ref': 'CorsOrigins'},
        }}}},
        'Resources': resources,
        'Outputs': {
            'CarsTableName': {'Value': {'Ref': TABLE}},
            'CarsBucketName': {'Value': {'Ref': BUCKET}},
            'CarsIngestQueueUrl': {'Value': {'Ref': QUEUE}},
            'CarsIngestDeadLetterQueueUrl': {'Value': {'Ref': DEAD_LETTERS}},
            'CarsEventsDeadLetterQueueUrl': {'Value': {'Ref': EVENTS_DEAD_LETTERS}},
            'CarsChangesDeadLetterQueueUrl': {'Value': {'Ref': CHANGES_DEAD_LETTERS}},
            'CarsChangesTopicArn': {'Value': {'Ref': TOPIC}},
            'AuthTokensParameter': {'Value': auth_parameter_name(stage)},
        },
    }
    template = monitoring.add(template, stage, functions=deployed, released=FUNCTIONS)
    # Versions, the live alias and CodeDeploy's canary on every function that
    # serves traffic; SnapStart in prod (release_template.py).
    resources = template['Resources']
    _merge(resources, release_template.function_overrides(
        stage, monitoring.release_alarms(FUNCTIONS)[1], hook))
    resources.update(release_template.codedeploy_role(hook))
    # The alarm topic (deploy/monitoring.py) under its own key, and every
    # queue and topic TLS-only.
    resources = template['Resources']
    resources[monitoring.ALARM_TOPIC]['Properties']['KmsMasterKeyId'] = {'Ref': ALARM_KEY}
    resources.update(alarm_topic_key())
    resources.update(tls_only_policies())
    return template


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stage', required=True, choices=sorted(STAGES))
    parser.add_argument('--output', '-o', help='file to write (default: stdout)')
    args = parser.parse_args(argv)
    text = json.dumps(build(args.stage), indent=2, sort_keys=True) + '\n'
    if args.output:
        with open(args.output, 'w') as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == '__main__':
    main()
