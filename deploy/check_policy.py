"""Check each function's IAM policy against the AWS calls its code made, both ways.

    python deploy/check_policy.py out/aws-calls.jsonl

Per stage and function, the policy (deploy/policies.py) must allow every call
the function made and the platform makes with its role, and nothing else.
Exit status 1 lists what is missing or extra.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import ids  # noqa: E402 - deploy/ is not a package
import policies  # noqa: E402

# Operations whose IAM action has another name than the operation.
ACTIONS = {
    ('sns', 'PublishBatch'): ['sns:Publish'],
    ('s3', 'HeadObject'): ['s3:GetObject'],
    ('s3', 'ListObjectsV2'): ['s3:ListBucket'],
    ('s3', 'ListObjects'): ['s3:ListBucket'],
    ('s3', 'CreateMultipartUpload'): ['s3:PutObject'],
    ('s3', 'UploadPart'): ['s3:PutObject'],
    ('s3', 'CompleteMultipartUpload'): ['s3:PutObject'],
    ('s3', 'CopyObject'): ['s3:GetObject', 's3:PutObject'],
    ('s3', 'DeleteObjects'): ['s3:DeleteObject'],
    ('sqs', 'SendMessageBatch'): ['sqs:SendMessage'],
    ('sqs', 'DeleteMessageBatch'): ['sqs:DeleteMessage'],
    ('sqs', 'ChangeMessageVisibilityBatch'): ['sqs:ChangeMessageVisibility'],
    ('dynamodb', 'TransactGetItems'): ['dynamodb:GetItem'],
    ('lambda', 'Invoke'): ['lambda:InvokeFunction'],
}
# KMS actions the stack's encryption adds to a call: the change topic uses the
# SNS key, the token parameter is a SecureString.
KMS = {
    ('sns', 'Publish'): ['kms:Decrypt', 'kms:GenerateDataKey'],
    ('sns', 'PublishBatch'): ['kms:Decrypt', 'kms:GenerateDataKey'],
    ('ssm', 'GetParameter'): ['kms:Decrypt'],
}

# What the platform does with a function's role, which no test can record:
# every function writes logs and (active tracing) trace segments; Lambda's
# event source mappings poll the queue and read the stream; failures go to
# the stream's OnFailure queue and the rule-invoked functions' dead-letter queue.
PLATFORM = ['logs:CreateLogStream', 'logs:PutLogEvents',
            'xray:PutTelemetryRecords', 'xray:PutTraceSegments']
PLATFORM_BY_FUNCTION = {
    ids.INGEST_QUEUE: ['sqs:DeleteMessage', 'sqs:GetQueueAttributes',
                       'sqs:ReceiveMessage'],
    ids.PUBLISH_CHANGES: ['dynamodb:DescribeStream', 'dynamodb:GetRecords',
                          'dynamodb:GetShardIterator', 'dynamodb:ListStreams',
                          'sqs:SendMessage'],
    ids.IMPORT_UPLOAD: ['sqs:SendMessage'],
    ids.SCHEDULED_EXPORT: ['sqs:SendMessage'],
}

# Object keys in a bucket policy resource: "${CarsBucket.Arn}/imports/*".
OBJECT_RESOURCE = re.compile(r'^\$\{%s\.Arn\}/(.*)$' % ids.BUCKET)


def iam_actions(call):
    """The IAM actions one recorded call needs."""
    key = (call['service'], call['operation'])
    if call.get('actions'):  # TransactWriteItems: recorded per item kind
        actions = list(call['actions'])
    else:
        actions = list(ACTIONS.get(key, ['%s:%s' % key]))
    return actions + KMS.get(key, [])


def platform_actions(function):
    return sorted(PLATFORM + PLATFORM_BY_FUNCTION.get(function, []))


def _as_list(value):
    return value if isinstance(value, list) else [value]


def allowed(policy):
    """{action: [object key patterns, or None for "not an object resource"]}."""
    out = {}
    for statement in policy['Statement']:
        if statement.get('Effect') != 'Allow':
            continue
        patterns = []
        for resource in _as_list(statement['Resource']):
            text = resource.get('Fn::Sub') if isinstance(resource, dict) else None
            match = OBJECT_RESOURCE.match(text) if isinstance(text, str) else None
            patterns.append(match.group(1) if match else None)
        for action in _as_list(statement['Action']):
            out.setdefault(action, []).extend(patterns)
    return out


def _key_matches(pattern, key):
    if pattern is None:
        return True
    regex = '^' + '.*'.join(re.escape(p) for p in pattern.split('*')) + '$'
    return re.match(regex, key) is not None


def problems(calls, policy):
    """What `policy` does not allow of `calls`, as sentences."""
    grants = allowed(policy)
    out = []
    for call in calls:
        for action in iam_actions(call):
            if action not in grants:
                out.append('%s (for %s.%s)' % (action, call['service'], call['operation']))
            elif call.get('key') is not None and not any(
                    _key_matches(p, call['key']) for p in grants[action]):
                out.append('%s on key %r' % (action, call['key']))
    return sorted(set(out))


def extras(calls, policy, platform=()):
    """What `policy` allows that neither `calls` nor `platform` (actions) need."""
    needed = set(platform)
    keys = {}
    for call in calls:
        for action in iam_actions(call):
            needed.add(action)
            if call.get('key') is not None:
                keys.setdefault(action, []).append(call['key'])
    out = []
    for action, patterns in allowed(policy).items():
        if action not in needed:
            out.append(action)
            continue
        for pattern in patterns:
            if pattern is not None and not any(_key_matches(pattern, k)
                                               for k in keys.get(action, [])):
                out.append('%s on %r' % (action, pattern))
    return sorted(set(out))


def check(calls, stage):
    """Sentences: what a `stage` policy lacks or has too much of, per function."""
    documents = policies.build(stage)
    out = []
    for function, document in sorted(documents.items()):
        own = [c for c in calls if c.get('function') == function]
        for item in problems(own, document):
            out.append('%s %s does not allow %s' % (stage, function, item))
        for item in extras(own, document, platform_actions(function)):
            out.append('%s %s allows %s, which nothing it runs needs' % (stage, function, item))
    # A test called chalicelib directly: some function must be allowed it.
    for call in calls:
        if call.get('function') is None and all(problems([call], d)
                                                for d in documents.values()):
            out.append('%s: no function may %s.%s%s' % (
                stage, call['service'], call['operation'],
                ' on key %r' % call['key'] if call.get('key') else ''))
    unknown = {c['function'] for c in calls if c.get('function') not in documents} - {None}
    out.extend('%s: calls recorded for %s, which has no policy' % (stage, f)
               for f in sorted(unknown))
    return sorted(set(out))


def read_calls(path):
    """The calls tests/conftest.py recorded, once each.

    One JSON object a line: {"service", "operation", "function", "key"?,
    "actions"?}, "function" being the logical id of the deployed function whose
    handler made the call, or null when a test called chalicelib directly (some
    function's policy must allow those).
    """
    calls, seen = [], set()
    with open(path) as f:
        for line in f:
            if line.strip():
                call = json.loads(line)
                marker = json.dumps(call, sort_keys=True)
                if marker not in seen:
                    seen.add(marker)
                    calls.append(call)
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('calls', help='the JSON Lines file the test suite wrote')
    parser.add_argument('--stage', action='append', choices=['dev', 'prod'],
                        help='check only this stage (repeatable; default: both)')
    args = parser.parse_args(argv)
    if not os.path.exists(args.calls):
        print('check_policy: %s is missing; was the suite run with '
              'CARS_RECORD_AWS_CALLS set?' % args.calls, file=sys.stderr)
        return 1
    calls = read_calls(args.calls)
    found = []
    for stage in args.stage or ['dev', 'prod']:
        found.extend(check(calls, stage))
    for item in found:
        print(item, file=sys.stderr)
    by_function = {}
    for c in calls:
        by_function.setdefault(c.get('function') or '(a test, directly)', set()).add(
            '%s.%s' % (c['service'], c['operation']))
    print('check_policy: %s' % ('policies DO NOT match the recorded calls' if found else
                                'every role allows exactly what its function calls'))
    for function, ops in sorted(by_function.items()):
        print('  %s: %s' % (function, ', '.join(sorted(ops))))
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main())
