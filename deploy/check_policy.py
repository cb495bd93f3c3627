"""Check that each stage's IAM policy allows every AWS call the app's code made.

    python deploy/check_policy.py out/aws-calls.jsonl

The test suite records the calls (tests/conftest.py, when CARS_RECORD_AWS_CALLS
names a file): one JSON object a line, {"service", "operation", "key"?, "actions"?}.
Chalice's own policy generator misses calls; this does not guess, it looks at
what the code really did. Exit status 1 lists the calls a policy does not allow.
"""
import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
}
# Object keys in a bucket policy resource: "${CarsBucket.Arn}/imports/*".
OBJECT_RESOURCE = re.compile(r'^\$\{\w+\.Arn\}/(.*)$')


def iam_actions(call):
    """The IAM actions one recorded call needs."""
    if call.get('actions'):  # TransactWriteItems: recorded per item kind
        return call['actions']
    key = (call['service'], call['operation'])
    return ACTIONS.get(key, ['%s:%s' % key])


def _as_list(value):
    return value if isinstance(value, list) else [value]


def allowed(policy):
    """{action: [object key patterns or None for "not an object resource"]}."""
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


def read_calls(path):
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


def policy_files():
    return sorted(glob.glob(os.path.join(ROOT, '.chalice', 'policy-*.json')))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('calls', help='the JSON Lines file the test suite wrote')
    args = parser.parse_args(argv)
    if not os.path.exists(args.calls):
        print('check_policy: %s is missing; was the suite run with '
              'CARS_RECORD_AWS_CALLS set?' % args.calls, file=sys.stderr)
        return 1
    calls = read_calls(args.calls)
    failed = False
    for path in policy_files():
        with open(path) as f:
            missing = problems(calls, json.load(f))
        for item in missing:
            print('%s does not allow %s' % (os.path.relpath(path, ROOT), item), file=sys.stderr)
        failed = failed or bool(missing)
    ops = sorted({'%s.%s' % (c['service'], c['operation']) for c in calls})
    print('check_policy: %d kinds of AWS call by the app, %s' % (
        len(ops), 'NOT all allowed' if failed else 'all allowed by every stage policy'))
    print('  ' + ', '.join(ops))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
