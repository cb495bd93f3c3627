"""A smoke test of a running API: one car's whole life, and the errors a client meets first.

    python deploy/smoke.py https://abc123.execute-api.us-east-1.amazonaws.com/api
    SMOKE_TOKEN=... python deploy/smoke.py URL      (or --token T)
    TOKEN=... make smoke URL=...      (the token stays off command lines)

Each step is printed, the first failure ends the run (exit status 1), and the car is
deleted whatever happened. Standard library only, so it runs anywhere Python does.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

TIMEOUT = 15


class StepFailed(Exception):
    pass


class Smoke(object):
    def __init__(self, url, token=None, out=sys.stdout):
        self.base = url.rstrip('/')
        self.token = token
        self.out = out

    def request(self, method, path, body=None, headers=None, auth=True):
        """(status, headers, parsed body or text) of one request; never raises for a status."""
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = 'application/json'
        if auth and self.token:
            headers['Authorization'] = 'Bearer ' + self.token
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                status, resp_headers, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, resp_headers, raw = e.code, e.headers, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise StepFailed('%s %s: no answer (%s)' % (method, path, getattr(e, 'reason', e)))
        text = raw.decode('utf-8', 'replace')
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return status, resp_headers, parsed

    def step(self, name, check):
        started = time.monotonic()
        try:
            try:
                detail = check()
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                # A 2xx whose body is not the API's (a proxy's HTML page, say).
                raise StepFailed('unexpected answer: %s: %s' % (type(e).__name__, e)) from e
        except StepFailed as e:
            self.out.write('FAIL  %-18s %s\n' % (name, e))
            self.out.flush()
            raise
        self.out.write('ok    %-18s %s (%.0f ms)\n' % (name, detail or '',
                                                      (time.monotonic() - started) * 1000))
        self.out.flush()

    def expect(self, method, path, status, **kwargs):
        got, headers, body = self.request(method, path, **kwargs)
        if got != status:
            raise StepFailed('%s %s: expected %d, got %d: %s' % (
                method, path, status, got, json.dumps(body)[:300]))
        return headers, body

    def run(self):
        marker = 'smoke-%s' % uuid.uuid4().hex[:12]
        car = {'make': marker, 'model': 'Smoke Test', 'year': 2020, 'trans': 'manual',
               'color': 'grey'}
        state = {}

        def health():
            _, body = self.expect('GET', '/api/v1/health', 200)
            if not isinstance(body, dict) or body.get('status') != 'ok':
                raise StepFailed('GET /api/v1/health: body %r' % (body,))
            return 'store %s' % body.get('store')

        def unauthorized():
            headers, body = self.expect('POST', '/api/v1/cars', 401, body=car, auth=False)
            if not headers.get('Content-Type', '').startswith('application/problem+json'):
                raise StepFailed('the 401 is not a problem body: %r' % (body,))
            return 'a write without a token is refused'

        def create():
            headers, body = self.expect('POST', '/api/v1/cars', 201, body=car)
            state['id'] = body['id']
            if not headers.get('ETag') or not headers.get('Location'):
                raise StepFailed('201 without ETag or Location')
            return 'car %s' % state['id']

        def read():
            headers, body = self.expect('GET', '/api/v1/cars/%s' % state['id'], 200)
            if {k: body.get(k) for k in car} != car:
                raise StepFailed('read back %r, sent %r' % (body, car))
            state['etag'] = headers['ETag']
            return 'ETag %s' % state['etag']

        def update():
            headers, body = self.expect('PATCH', '/api/v1/cars/%s' % state['id'], 200,
                                        body={'color': 'green'},
                                        headers={'If-Match': state['etag']})
            if body.get('color') != 'green' or headers.get('ETag') == state['etag']:
                raise StepFailed('the update did not take: %r' % (body,))
            return 'If-Match accepted, new ETag %s' % headers.get('ETag')

        def listing():
            query = urllib.parse.urlencode({'make': marker})
            _, body = self.expect('GET', '/api/v1/cars?' + query, 200)
            ids = [c['id'] for c in body.get('cars', [])]
            if ids != [state['id']]:
                raise StepFailed('listing make=%s gave %r' % (marker, ids))
            return 'found by make'

        def delete():
            car_id = state['id']
            self.expect('DELETE', '/api/v1/cars/%s' % car_id, 204)
            del state['id']
            return 'car %s' % car_id

        def gone():
            _, body = self.expect('GET', '/api/v1/cars/%s' % state['deleted_id'], 404)
            return body.get('type') if isinstance(body, dict) else None

        steps = [('health', health)]
        if self.token:
            steps.append(('401 without token', unauthorized))
        steps += [('create', create), ('read', read), ('conditional update', update),
                  ('list', listing)]
        try:
            for name, check in steps:
                self.step(name, check)
            state['deleted_id'] = state['id']
            self.step('delete', delete)
            self.step('404 after delete', gone)
        finally:
            if 'id' in state:
                self._clean_up(state['id'])
        return 0

    def _clean_up(self, car_id):
        try:
            status, _, _ = self.request('DELETE', '/api/v1/cars/%s' % car_id)
        except StepFailed as e:
            status = e
        self.out.write('clean-up: DELETE car %s -> %s\n' % (car_id, status))
        self.out.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('url', help='the API root, e.g. the stack output EndpointURL')
    parser.add_argument('--token', default=os.environ.get('SMOKE_TOKEN'),
                        help='a write token (Authorization: Bearer); enables the 401 step '
                             '(default: $SMOKE_TOKEN, which keeps it off command lines)')
    args = parser.parse_args(argv)
    try:
        return Smoke(args.url, args.token or None).run()
    except StepFailed:
        return 1


if __name__ == '__main__':
    sys.exit(main())
