"""Local stand-ins for Lambda's Invoke and CodeDeploy's PutLifecycleEventHookExecutionStatus.

boto3 reaches them through AWS_ENDPOINT_URL_LAMBDA / AWS_ENDPOINT_URL_CODEDEPLOY, so the
pre-traffic hook runs unchanged. `invoke(arn, event)` answers an Invoke: (payload,
None) for a result, (payload, 'Unhandled') for a function error, or None for a
function that does not exist. CodeDeploy's calls are recorded in `statuses`.
"""
import http.server
import json
import re
import threading
from urllib.parse import unquote


class LocalAws(object):
    def __init__(self, invoke):
        self.invoked, self.statuses = [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get('Content-Length') or 0)))
                match = re.match(r'^/2015-03-31/functions/([^/]+)/invocations', self.path)
                target = self.headers.get('X-Amz-Target', '')
                if match:
                    arn = unquote(match.group(1))
                    outer.invoked.append((arn, body))
                    answer = invoke(arn, body)
                    if answer is None:
                        return self.answer(404, {'Type': 'User', 'message': 'no ' + arn},
                                           {'x-amzn-ErrorType': 'ResourceNotFoundException'})
                    payload, error = answer
                    return self.answer(200, payload,
                                       {'X-Amz-Function-Error': error} if error else None)
                if target == 'CodeDeploy_20141006.PutLifecycleEventHookExecutionStatus':
                    outer.statuses.append(body)
                    return self.answer(200, {'lifecycleEventHookExecutionId':
                                             body['lifecycleEventHookExecutionId']},
                                       {'Content-Type': 'application/x-amz-json-1.1'})
                self.answer(400, {'message': 'not implemented here: %s %s' % (self.path, target)})

            def answer(self, status, payload, headers=None):
                data = json.dumps(payload).encode('utf-8')
                self.send_response(status)
                for name, value in dict({'Content-Type': 'application/json'},
                                        **(headers or {})).items():
                    self.send_header(name, value)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.endpoint = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
