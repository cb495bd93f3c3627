"""API Gateway REST API proxy events, as the gateway hands them to the Lambda entry point.

A header sent on several lines is in `multiValueHeaders` once per line, and in
`headers` with its last line only; names keep the client's spelling. (The AWS
guide's "Input format of a Lambda function for proxy integration".)
"""
import json


def rest_event(method, path, headers=(), body=None, car_id=None, authorizer=None):
    """An event for `path` (the route's pattern when `car_id` is given).

    `headers` is a list of (name, value) lines, in the order the client sent them.
    """
    single, multi = {}, {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    sent = path.replace('{car_id}', car_id) if car_id else path
    context = {'resourcePath': path, 'httpMethod': method, 'path': sent, 'stage': 'api',
               'identity': {'sourceIp': '127.0.0.1'}}
    if authorizer is not None:
        context['authorizer'] = authorizer
    return {'resource': path, 'path': sent, 'httpMethod': method,
            'headers': single, 'multiValueHeaders': multi,
            'queryStringParameters': None, 'multiValueQueryStringParameters': None,
            'pathParameters': {'car_id': car_id} if car_id else None, 'stageVariables': None,
            'requestContext': context,
            'body': json.dumps(body) if body is not None else None, 'isBase64Encoded': False}


def invoke(event):
    """Run `event` through the app's Lambda entry point.

    Returns (status, headers, parsed body or None, body text).
    """
    from app import app
    out = app(event, None)
    headers = dict(out.get('headers') or {})
    for name, values in (out.get('multiValueHeaders') or {}).items():
        headers[name] = ', '.join(values)
    text = out.get('body') or ''
    return out['statusCode'], headers, json.loads(text) if text else None, text
