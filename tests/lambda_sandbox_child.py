"""Runs inside the sandbox: import one function's Handler and call it, as Lambda does.

    python -I lambda_sandbox_child.py REQUEST RESULT     (started by test_lambda_sandbox.py)

Isolated mode keeps PYTHONPATH, the user site and this folder off sys.path: only the
package (the working directory, LAMBDA_TASK_ROOT) and the runtime's SDK can be imported.
REQUEST names the handler and the events; RESULT, not stdout (the app's logs), receives
what each call returned or raised.
"""
import importlib
import json
import os
import sys
import time
import traceback
import uuid


class LambdaContext(object):
    """The context object's documented attributes (Lambda Python "context" page)."""

    def __init__(self, function_name, memory_mb, timeout_s, region, account):
        self.function_name = function_name
        self.function_version = '$LATEST'
        self.invoked_function_arn = 'arn:aws:lambda:%s:%s:function:%s' % (
            region, account, function_name)
        self.memory_limit_in_mb = int(memory_mb)
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = '/aws/lambda/' + function_name
        self.log_stream_name = time.strftime('%Y/%m/%d/[$LATEST]') + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + float(timeout_s)

    def get_remaining_time_in_millis(self):
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


def main(request_path, result_path):
    with open(request_path) as f:
        request = json.load(f)
    task = os.environ['LAMBDA_TASK_ROOT']
    sys.path.insert(0, task)
    module_name, _, attr = request['handler'].rpartition('.')
    handler = getattr(importlib.import_module(module_name), attr)
    results = []
    for event in request['events']:
        context = LambdaContext(os.environ['AWS_LAMBDA_FUNCTION_NAME'], request['memory'],
                                request['timeout'], os.environ['AWS_REGION'], '123456789012')
        try:
            results.append({'returned': handler(event, context)})
        except Exception as e:  # noqa: BLE001 - reported to the test, as Lambda reports it
            results.append({'errorType': type(e).__name__, 'errorMessage': str(e),
                            'stackTrace': traceback.format_exc()})
    modules = {name: getattr(sys.modules.get(name), '__file__', None)
               for name in ('app', 'chalicelib', 'chalice', 'boto3', 'botocore', 'msgspec')}
    boto3 = sys.modules.get('boto3')
    with open(result_path, 'w') as f:
        json.dump({'results': results, 'sys_path': sys.path, 'modules': modules,
                   'boto3_version': getattr(boto3, '__version__', None)}, f, default=str)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
