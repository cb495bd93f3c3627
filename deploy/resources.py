"""The merge template for `chalice package`: every AWS resource the app needs
besides its functions and REST API, per stage.

Chalice writes the functions, their event sources and the REST API; this
module adds the table, queues, bucket, topic, logging and gateway responses,
and points Chalice's placeholders (queue name, stream ARN, bucket name in the
EventBridge pattern) at them. `chalice package --merge-template` deep-merges
this over its own template by logical id.

The table's properties come from chalicelib/table.json, the file `cli init`
and the tests create the table from, so the deployed table cannot drift from
the one the code is tested against.

    python deploy/resources.py --stage prod > resources.json
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Settings that differ between stages. Throttling: requests per second
# (steady) and burst, for the whole stage.
STAGES = {
    'dev': {'rate_limit': 50, 'burst_limit': 100, 'log_retention_days': 14,
            'protect_data': False},
    'prod': {'rate_limit': 500, 'burst_limit': 1000, 'log_retention_days': 365,
             'protect_data': True},
}

# Logical ids Chalice gives the functions of app.py (to_cfn_resource_name of
# the handler's name) and their event sources.
API_HANDLER = 'APIHandler'
REST_API = 'RestAPI'
INGEST_FUNCTION = 'IngestQueue'
INGEST_EVENT = 'IngestQueueSqsEventSource'
IMPORT_FUNCTION = 'ImportUpload'
IMPORT_EVENT = 'ImportUploadEvent'
PUBLISH_FUNCTION = 'PublishChanges'
PUBLISH_EVENT = 'PublishChangesDynamodbEventSource'

# Our own resources (named so they cannot collide with Chalice's ids above).
TABLE = 'CarsTable'
QUEUE = 'CarsIngestQueue'
DEAD_LETTERS = 'CarsIngestDeadLetterQueue'
BUCKET = 'CarsBucket'
TOPIC = 'CarsChangesTopic'
ACCESS_LOGS = 'ApiAccessLogs'

# How often a message is tried before it moves to the dead-letter queue.
MAX_RECEIVE_COUNT = 5
# AWS advises a queue visibility timeout of six times the consumer's timeout,
# so a batch that is retried inside Lambda does not reappear meanwhile.
INGEST_VISIBILITY_SECONDS = 6 * 29


def auth_parameter_name(stage):
    """The SSM SecureString holding the stage's write tokens (created by hand:
    CloudFormation cannot create SecureString parameters)."""
    return '/cars/%s/auth-tokens' % stage


def table_properties():
    with open(os.path.join(ROOT, 'chalicelib', 'table.json')) as f:
        return json.load(f)


def _sub(text):
    return {'Fn::Sub': text}


def _arn(name):
    return {'Fn::GetAtt': [name, 'Arn']}


# --- problem+json bodies for API Gateway's own errors --------------------------

# API Gateway answers some requests before any function runs: an unknown path
# (MISSING_AUTHENTICATION_TOKEN, a 403 by default), a refused token, throttling.
# These templates give them the contract's problem shape. Only $context values
# that API Gateway escapes for JSON ($context.error.messageString is quoted and
# escaped) are interpolated, so no request text can break the JSON.
GATEWAY_PROBLEMS = {
    # type: (status, slug or None, title, detail or None for API Gateway's message)
    'MISSING_AUTHENTICATION_TOKEN': (404, 'not-found', 'Not Found',
                                     'no resource at this path'),
    'RESOURCE_NOT_FOUND': (404, 'not-found', 'Not Found', 'no resource at this path'),
    'UNAUTHORIZED': (401, 'unauthorized', 'Unauthorized',
                     'send Authorization: Bearer <token> to write'),
    'ACCESS_DENIED': (403, 'forbidden', 'Forbidden', 'this token may not write'),
    'AUTHORIZER_FAILURE': (503, 'auth-unavailable', 'Service Unavailable',
                           'write protection is unavailable; retry shortly'),
    'AUTHORIZER_CONFIGURATION_ERROR': (503, 'auth-unavailable', 'Service Unavailable',
                                       'write protection is unavailable; retry shortly'),
    'THROTTLED': (429, None, 'Too Many Requests', 'too many requests; retry shortly'),
    'QUOTA_EXCEEDED': (429, None, 'Too Many Requests', 'request quota exceeded'),
    'REQUEST_TOO_LARGE': (413, None, 'Content Too Large', 'the request is too large'),
    'UNSUPPORTED_MEDIA_TYPE': (415, 'unsupported-media-type', 'Unsupported Media Type',
                               'send application/json or application/x-www-form-urlencoded'),
    'BAD_REQUEST_BODY': (400, None, 'Bad Request', None),
    'BAD_REQUEST_PARAMETERS': (400, None, 'Bad Request', None),
    'INVALID_API_KEY': (403, 'forbidden', 'Forbidden', None),
    'INVALID_SIGNATURE': (403, 'forbidden', 'Forbidden', None),
    'EXPIRED_TOKEN': (403, 'forbidden', 'Forbidden', None),
    'WAF_FILTERED': (403, 'forbidden', 'Forbidden', None),
    'INTEGRATION_TIMEOUT': (504, None, 'Gateway Timeout', 'the request took too long'),
    'INTEGRATION_FAILURE': (502, None, 'Bad Gateway', 'an internal error occurred'),
    'API_CONFIGURATION_ERROR': (500, None, 'Internal Server Error',
                                'an internal error occurred'),
    'DEFAULT_4XX': (400, None, 'Bad Request', None),
    'DEFAULT_5XX': (500, None, 'Internal Server Error', 'an internal error occurred'),
}


def problem_template(status, slug, title, detail):
    body = ('{"type": %s, "title": %s, "status": %d, "detail": %s}' % (
        json.dumps('/api/v1/docs#problem-%s' % slug if slug else 'about:blank'),
        json.dumps(title), status,
        json.dumps(detail) if detail else '$context.error.messageString'))
    return body


def gateway_responses():
    out = {}
    for kind, (status, slug, title, detail) in GATEWAY_PROBLEMS.items():
        out[kind] = {
            'statusCode': str(status),
            'responseParameters': {
                'gatewayresponse.header.Content-Type': "'application/problem+json'",
            },
            'responseTemplates': {
                'application/json': problem_template(status, slug, title, detail),
            },
        }
    return out


def api_paths():
    """The app's route paths, so each can send unknown methods to the function."""
    sys.path.insert(0, ROOT)
    try:
        from app import app
    finally:
        sys.path.remove(ROOT)
    return sorted(app.routes)


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
        'uri': _sub('arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/'
                    '2015-03-31/functions/${%s.Arn}/invocations' % API_HANDLER),
    }
    method = {
        'responses': {'405': {'description': 'method not allowed'}},
        'x-amazon-apigateway-integration': integration,
    }
    return {path: {'x-amazon-apigateway-any-method': method} for path in paths}


ACCESS_LOG_FORMAT = json.dumps({
    'requestId': '$context.requestId', 'ip': '$context.identity.sourceIp',
    'time': '$context.requestTime', 'method': '$context.httpMethod',
    'path': '$context.path', 'status': '$context.status',
    'length': '$context.responseLength', 'latencyMs': '$context.responseLatency',
    'integrationLatencyMs': '$context.integrationLatency',
    'error': '$context.error.message',
}, separators=(',', ':'))


def build(stage, paths=None):
    settings = STAGES[stage]
    keep = settings['protect_data']
    retain = {'DeletionPolicy': 'Retain', 'UpdateReplacePolicy': 'Retain'} if keep else {
        'DeletionPolicy': 'Delete', 'UpdateReplacePolicy': 'Delete'}
    table = dict(table_properties())
    table['DeletionProtectionEnabled'] = keep
    table['Tags'] = [{'Key': 'stage', 'Value': stage}]
    resources = {
        TABLE: dict(retain, Type='AWS::DynamoDB::Table', Properties=table),
        DEAD_LETTERS: {
            'Type': 'AWS::SQS::Queue',
            'Properties': {'MessageRetentionPeriod': 14 * 24 * 3600,
                           'SqsManagedSseEnabled': True},
        },
        QUEUE: {
            'Type': 'AWS::SQS::Queue',
            'Properties': {
                'VisibilityTimeout': INGEST_VISIBILITY_SECONDS,
                'SqsManagedSseEnabled': True,
                'RedrivePolicy': {'deadLetterTargetArn': _arn(DEAD_LETTERS),
                                  'maxReceiveCount': MAX_RECEIVE_COUNT},
            },
        },
        BUCKET: dict(retain, Type='AWS::S3::Bucket', Properties={
            'PublicAccessBlockConfiguration': {
                'BlockPublicAcls': True, 'BlockPublicPolicy': True,
                'IgnorePublicAcls': True, 'RestrictPublicBuckets': True},
            'BucketEncryption': {'ServerSideEncryptionConfiguration': [
                {'ServerSideEncryptionByDefault': {'SSEAlgorithm': 'AES256'},
                 'BucketKeyEnabled': True}]},
            'OwnershipControls': {'Rules': [{'ObjectOwnership': 'BucketOwnerEnforced'}]},
            'VersioningConfiguration': {'Status': 'Enabled'},
            'NotificationConfiguration': {
                'EventBridgeConfiguration': {'EventBridgeEnabled': True}},
        }),
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
        # API Gateway writes access logs through an account-wide role. It is
        # retained when a stack is deleted, so deleting one stage's stack does
        # not break another's logging.
        'ApiGatewayLoggingRole': {
            'Type': 'AWS::IAM::Role',
            'DeletionPolicy': 'Retain', 'UpdateReplacePolicy': 'Retain',
            'Properties': {
                'AssumeRolePolicyDocument': {'Version': '2012-10-17', 'Statement': [{
                    'Effect': 'Allow', 'Principal': {'Service': 'apigateway.amazonaws.com'},
                    'Action': 'sts:AssumeRole'}]},
                'ManagedPolicyArns': [_sub(
                    'arn:${AWS::Partition}:iam::aws:policy/service-role/'
                    'AmazonAPIGatewayPushToCloudWatchLogs')],
            },
        },
        'ApiGatewayAccount': {
            'Type': 'AWS::ApiGateway::Account',
            'DeletionPolicy': 'Retain', 'UpdateReplacePolicy': 'Retain',
            'Properties': {'CloudWatchRoleArn': _arn('ApiGatewayLoggingRole')},
        },
        # --- overrides of Chalice's own resources (merged by logical id) ---
        REST_API: {
            'DependsOn': ['ApiGatewayAccount'],
            'Properties': {
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
        },
        INGEST_FUNCTION: {'Properties': {'Events': {INGEST_EVENT: {'Properties': {
            # Chalice writes the queue as a Fn::Sub; the merge is a deep merge
            # of dicts, so only the same intrinsic key replaces it.
            'Queue': _sub('${%s.Arn}' % QUEUE),
            # Only the failed messages of a batch are retried (the handler
            # returns batchItemFailures); Chalice does not set this itself.
            'FunctionResponseTypes': ['ReportBatchItemFailures'],
        }}}}},
        IMPORT_FUNCTION: {'Properties': {'Events': {IMPORT_EVENT: {'Properties': {
            'Pattern': {'detail': {'bucket': {'name': [{'Ref': BUCKET}]}}},
        }}}}},
        PUBLISH_FUNCTION: {'Properties': {'Events': {PUBLISH_EVENT: {'Properties': {
            'Stream': {'Fn::GetAtt': [TABLE, 'StreamArn']},
            # A record that keeps failing must not block the stream for 24 hours.
            'MaximumRetryAttempts': 10,
            'BisectBatchOnFunctionError': True,
        }}}}},
    }
    template = {
        'Parameters': {
            'CorsOrigins': {
                'Type': 'String', 'Default': '',
                'Description': 'Comma-separated origins allowed to call the API from a '
                               'browser (CARS_CORS_ORIGINS); empty means none.',
            },
        },
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
            'CarsChangesTopicArn': {'Value': {'Ref': TOPIC}},
            'AuthTokensParameter': {'Value': auth_parameter_name(stage)},
        },
    }
    import monitoring  # deploy/monitoring.py: log settings, alarms, the dashboard
    return monitoring.add(template, stage)


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
