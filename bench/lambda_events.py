"""API Gateway proxy events and a Lambda context, for calling app.app(event, context).

Kept apart from bench/run.py, with nothing but json to import, because the
cold-start scripts import it too: what they measure must be the app's imports,
not the benchmark's.
"""
import json


def proxy_event(method, path, resource, params=None, body=None, query=None, headers=None):
    """An API Gateway REST proxy event, as Lambda hands it to app.app."""
    headers = dict({'host': 'bench.example', 'accept': '*/*'}, **(headers or {}))
    if body is not None:
        headers['content-type'] = 'application/json'
        body = json.dumps(body)
    return {
        'resource': resource, 'path': path, 'httpMethod': method,
        'headers': headers, 'multiValueHeaders': {k: [v] for k, v in headers.items()},
        'queryStringParameters': query,
        'multiValueQueryStringParameters': {k: [v] for k, v in query.items()} if query else None,
        'pathParameters': params, 'stageVariables': None,
        'requestContext': {'resourcePath': resource, 'httpMethod': method, 'path': path,
                           'stage': 'api', 'requestId': 'bench', 'identity': {}},
        'body': body, 'isBase64Encoded': False,
    }


class Context(object):
    function_name = 'bench'
    memory_limit_in_mb = 512
    aws_request_id = 'bench'
    invoked_function_arn = 'arn:aws:lambda:us-east-1:000000000000:function:bench'

    def get_remaining_time_in_millis(self):
        return 30000
