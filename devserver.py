"""`make run`'s server: the app as `chalice local` serves it, under uvicorn.

    python -m devserver [--host 127.0.0.1] [--port 8000] [--stage dev] [--project-dir DIR]
                        [--threads 8] [--timeout-keep-alive 5] [--timeout-body 30]
                        [--limit-concurrency N] [--backlog 128] [--no-access-log]

Development only: it lives outside chalicelib/, so it is not in the Lambda
package. The project is loaded as `chalice local --stage` loads it, and each
request goes to Chalice's LocalGateway.handle_request; HTTP/1.1 is uvicorn's
(httptools parser). In between is the ASGI app below. Only the public
interfaces of uvicorn and Chalice are used, so uvicorn need not be pinned.
"""
import argparse
import asyncio
import base64
import concurrent.futures
import logging
import os
import resource
import sys
import threading
import time

import uvicorn
from chalice.local import LocalChalice, LocalGateway, LocalGatewayException, RouteMatcher

from chalicelib import observability
from chalicelib.http.problems import problem_response
# The app's own limit, checked here too so that a larger body is refused
# before it is read, not after it is buffered whole.
from chalicelib.http.request import MAX_BODY

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
# File descriptors kept free for the app (sqlite files, logs) when connections
# use up the rest: past that many connections, uvicorn answers 503 at once.
FD_HEADROOM = 128
# RFC 9110 8.6: these carry no body, so no Content-Length either.
NO_BODY_STATUSES = (204, 304)
# Framing is the server's business; the app's values would contradict uvicorn's.
HOP_BY_HOP = frozenset(('content-length', 'connection', 'transfer-encoding', 'keep-alive'))

log = logging.getLogger('devserver')


def load_app(stage, project_dir=PROJECT_DIR):
    """The Chalice app and its config, loaded as `chalice local --stage` loads them.

    Chalice's CLI factory reads .chalice/config.json and applies the stage's
    environment variables before app.py is imported.
    """
    from chalice.cli.factory import CLIFactory
    from chalice.deploy.validate import validate_routes
    factory = CLIFactory(project_dir=project_dir, environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage)
    app_obj = config.chalice_app
    validate_routes(app_obj.routes)
    return app_obj, config


def current_request_per_thread(app_obj):
    """The app, with `app.current_request` kept per thread.

    Chalice stores the request being handled on the app object, so requests
    on several worker threads would read each other's. chalice.local's
    LocalChalice is Chalice with that attribute thread-local; as `chalice
    local` does, the app object becomes an instance of a class deriving from
    both (a class of our own: Chalice's classes are left as they are).
    """
    if not isinstance(app_obj, LocalChalice):
        cls = type(app_obj)
        app_obj.__class__ = type('Local' + cls.__name__, (LocalChalice, cls), {})
    return app_obj


def problem(status, detail, slug=None, title=None):
    """(status, headers, body) of the API's problem+json answer."""
    response = problem_response(status, detail, slug, title=title).to_dict()
    return status, response['headers'], response['body']


# Threads share the GIL, and each request pays for handing it over: with all
# eight threads busy, GETs under wrk were answered at 0.65x the rate of two
# (make bench, serve, 2 cores). So two threads take requests in turn, and the
# other six only those that have waited 10 ms (behind slow or held requests).
STEADY_THREADS = 2
PATIENCE = 0.010


class Workers:
    """Runs each request on a steady thread, or on a spare one once it has waited.

    A request queues for the steady threads; after `patience` seconds still
    queued, it is offered to the spare threads too, and whichever thread
    reaches it first runs it (the other passes over it).
    """

    def __init__(self, threads, steady=STEADY_THREADS, patience=PATIENCE):
        steady = min(steady, threads)
        self.steady = concurrent.futures.ThreadPoolExecutor(steady, thread_name_prefix='app')
        self.spare = (concurrent.futures.ThreadPoolExecutor(threads - steady,
                                                            thread_name_prefix='app-spare')
                      if threads > steady else None)
        self.patience = patience

    async def run(self, fn, *args):
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        taken = threading.Lock()

        def once():
            if not taken.acquire(blocking=False):
                return  # a thread of the other pool reached it first
            try:
                result = fn(*args)
            except BaseException as error:
                loop.call_soon_threadsafe(_settle, answer, None, error)
            else:
                loop.call_soon_threadsafe(_settle, answer, result, None)

        def offer_to_spare():
            if not taken.locked():
                self.spare.submit(once)

        self.steady.submit(once)
        overdue = self.spare and loop.call_later(self.patience, offer_to_spare)
        try:
            return await answer
        finally:
            if overdue:
                overdue.cancel()


def _settle(future, result, error):
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ChaliceASGI:
    """An ASGI application that hands each request to Chalice's LocalGateway.

    The app is synchronous: each call runs on a worker thread (`Workers`), so
    a slow request (a page of 1,000 cars) runs beside quick ones instead of
    holding up the event loop.
    """

    def __init__(self, app_obj, config, threads=8, timeout_body=30.0, access_log=True,
                 log_stream=None):
        app_obj = current_request_per_thread(app_obj)
        self.gateway = LocalGateway(app_obj, config)
        # LocalGateway answers a path no route matches as API Gateway does, with
        # a 403 "Missing Authentication Token"; this API answers every error
        # with a problem, so the path is matched first, with the same matcher.
        self.routes = RouteMatcher(list(app_obj.routes))
        self.workers = Workers(threads)
        self.timeout_body = timeout_body
        self.access_log = access_log
        self.log_stream = log_stream if log_stream is not None else sys.stderr

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return  # lifespan is off; websockets are not served
        # The path as sent (as http.server gives it to `chalice local`); ASGI
        # makes raw_path optional, so the decoded path stands in without it.
        raw_path = scope.get('raw_path') or scope['path'].encode('utf-8')
        target = raw_path.decode('latin-1')
        if target.startswith('//'):
            # As http.server does: '//host/x' would read as a network path.
            target = '/' + target.lstrip('/')
        if scope['query_string']:
            target += '?' + scope['query_string'].decode('latin-1')
        status = await self._serve(scope, target, receive, send)
        if self.access_log and status is not None:
            # The line `chalice local` (http.server) writes.
            client = scope.get('client')
            self.log_stream.write('%s - - [%s] "%s %s HTTP/%s" %d -\n' % (
                client[0] if client else '-', time.strftime('%d/%b/%Y %H:%M:%S'),
                scope['method'], target, scope['http_version'], status))

    async def _serve(self, scope, target, receive, send):
        """Answer one request; its status, or None when the client went away first."""
        headers = {}
        hosts = 0
        for name, value in scope['headers']:
            name, value = name.decode('latin-1'), value.decode('latin-1')
            if name == 'host':
                hosts += 1
            # RFC 9110 5.3: repeated lines are one comma-separated list, which is
            # how API Gateway hands them to a Lambda in `headers`; the app
            # decides what a list means (If-Match, Authorization).
            headers[name] = headers[name] + ', ' + value if name in headers else value
        version = scope['http_version']
        if version not in ('1.0', '1.1'):
            return await self._answer(send, *problem(
                505, 'HTTP/%s is not supported' % version, title='HTTP Version Not Supported'),
                close=True)
        # RFC 9112 3.2; httptools lets both through.
        if hosts > 1 or (hosts == 0 and version == '1.1'):
            return await self._answer(send, *problem(
                400, 'an HTTP/1.1 request carries exactly one Host header; this one has %d'
                % hosts), close=True)
        declared = headers.get('content-length')
        if declared is not None and _too_long(declared):
            # Refused from the head: not one byte of the body is read.
            return await self._answer(send, *problem(
                413, 'the body is %s bytes; at most %d are accepted' % (declared.lstrip('0'),
                                                                        MAX_BODY),
                'body-too-large'), close=True)
        if declared is None and 'transfer-encoding' not in headers:
            body = None  # no body (RFC 9112 6.3): nothing to wait for
        else:
            body = await self._read_body(receive)
        if isinstance(body, tuple):
            return await self._answer(send, *body, close=True)
        if body is False:
            return None
        try:
            answer = await self.workers.run(self._call_app, scope['method'], target, headers,
                                            body)
        except Exception:
            log.exception('unhandled error serving %s %s', scope['method'], target)
            return await self._answer(send, *problem(
                500, 'the server failed to answer this request'), close=True)
        return await self._answer(send, *answer, head=scope['method'] == 'HEAD')

    async def _read_body(self, receive):
        """The body (None when empty), False if the client left, or a problem to answer.

        One deadline covers the whole body, so a body that stops arriving (or
        trickles) does not hold the request open; reading stops past 64 KiB,
        so a large body is never buffered.
        """
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout_body):
                while True:
                    message = await receive()
                    if message['type'] == 'http.disconnect':
                        return False
                    body += message.get('body', b'')
                    if len(body) > MAX_BODY:
                        return problem(413, 'the body is over %d bytes; at most %d are '
                                       'accepted' % (MAX_BODY, MAX_BODY), 'body-too-large')
                    if not message.get('more_body', False):
                        return bytes(body) if body else None
        except TimeoutError:
            return problem(408, 'the request body did not arrive within %g s'
                           % self.timeout_body, title='Request Timeout')

    def _call_app(self, method, target, headers, body):
        """(status, headers, body) from LocalGateway; runs on a worker thread."""
        try:
            self.routes.match_route(target)
        except ValueError:  # Chalice's matcher's "no route here"
            # No slug: this problem means no more than its status ("about:blank").
            return problem(404, 'no resource at %s' % target.split('?', 1)[0])
        try:
            response = self.gateway.handle_request(method=method, path=target,
                                                   headers=headers, body=body)
        except LocalGatewayException as e:  # an authorizer's 401/403
            return e.CODE, dict(e.headers), e.body
        out_headers = dict(response['headers'])
        out_headers.update(response.get('multiValueHeaders') or {})
        body = response['body']
        if body is not None and response.get('isBase64Encoded'):
            body = base64.b64decode(body)
        return response['statusCode'], out_headers, body

    async def _answer(self, send, status, headers, body, close=False, head=False):
        if body is None:
            body = b''
        elif isinstance(body, str):
            body = body.encode('utf-8')
        raw = []
        content_type = False
        for name, value in headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue
            content_type = content_type or lower == 'content-type'
            name = lower.encode('latin-1')
            # HTTP/1.1 header values are ISO-8859-1, as http.server writes them.
            if isinstance(value, list):
                raw.extend((name, str(v).encode('latin-1', 'replace')) for v in value)
            else:
                raw.append((name, str(value).encode('latin-1', 'replace')))
        if status in NO_BODY_STATUSES or head:
            # uvicorn then adds neither Content-Length nor chunking: a HEAD's
            # length would have to be GET's (RFC 9110 8.6), which the app's
            # empty HEAD body does not tell.
            body = b''
        else:
            if body and not content_type:
                raw.append((b'content-type', b'application/json'))  # as `chalice local`
            raw.append((b'content-length', b'%d' % len(body)))
        if close:
            # uvicorn closes the connection after an answer that says so; the
            # unread rest of a refused body would otherwise be read as a request.
            raw.append((b'connection', b'close'))
        await send({'type': 'http.response.start', 'status': status, 'headers': raw})
        await send({'type': 'http.response.body', 'body': body})
        return status


def _too_long(declared):
    # httptools has checked it is digits; a value of thousands of digits (or
    # of leading zeros) would still trip int()'s digit limit.
    digits = declared.strip().lstrip('0')
    return len(digits) > len(str(MAX_BODY)) or int(digits or '0') > MAX_BODY


class OutOfDescriptorsOncePerSecond(logging.Filter):
    """Let asyncio's "socket.accept() out of system resource" through once a second.

    With no descriptor left, asyncio stops accepting and retries a second
    later, as it should; but Python 3.13.0 does not stop its accept loop at
    the error (python/cpython#151615): it logs a traceback for each of the
    backlog's slots on every retry, thousands a second.
    """

    def __init__(self):
        super().__init__()
        self._last = float('-inf')

    def filter(self, record):
        if not str(record.msg).startswith('socket.accept() out of system resource'):
            return True
        now = time.monotonic()
        if now - self._last < 1.0:
            return False
        self._last = now
        record.exc_info = record.exc_text = None
        return True


def default_limit_concurrency():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(16, soft - FD_HEADROOM)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m devserver',
        description='Serve the API locally as `chalice local` does (Chalice\'s config '
                    'loading and LocalGateway), under uvicorn with httptools.')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--stage', default='dev', help='the Chalice stage whose config applies')
    parser.add_argument('--project-dir', default=PROJECT_DIR,
                        help='the Chalice project to serve, as `chalice --project-dir` '
                             '(default: this repository)')
    parser.add_argument('--threads', type=int, default=8,
                        help='worker threads running the app (default 8): %d take '
                             'requests in turn, the rest those that waited %g ms for them'
                             % (STEADY_THREADS, PATIENCE * 1000))
    parser.add_argument('--timeout-keep-alive', type=float, default=5.0, metavar='SECONDS',
                        help='close a keep-alive connection idle this long after an '
                             'answer (default 5)')
    parser.add_argument('--timeout-body', type=float, default=30.0, metavar='SECONDS',
                        help='answer 408 when a request body is not complete this long '
                             'after its head (default 30)')
    parser.add_argument('--limit-concurrency', type=int, default=None, metavar='N',
                        help='answer 503 past N connections or requests at once '
                             '(default: the file descriptor limit less %d)' % FD_HEADROOM)
    # asyncio's accept loop makes up to `backlog` attempts per wake-up, and out
    # of descriptors each failed one schedules a retry of its own: with 2048,
    # 1,100 held connections under ulimit -n 1024 kept 0.7 of a core busy
    # (and climbing); with 128, 0.05. 128 queued connections is plenty here.
    parser.add_argument('--backlog', type=int, default=128,
                        help='listen backlog: connections the kernel queues while none '
                             'can be accepted (default 128)')
    parser.add_argument('--no-access-log', dest='access_log', action='store_false',
                        help='no access-log line per request')
    args = parser.parse_args(argv)
    # The app's lines as readable text with their ids (as the CLI shows them);
    # the server's own lines plain, on the same stdout.
    observability.configure_local_logging(stream=sys.stdout)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')
    logging.getLogger('asyncio').addFilter(OutOfDescriptorsOncePerSecond())
    app_obj, config = load_app(args.stage, args.project_dir)
    app = ChaliceASGI(app_obj, config, threads=args.threads, timeout_body=args.timeout_body,
                      access_log=args.access_log)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, http='httptools', loop='asyncio',
        lifespan='off', interface='asgi3', log_config=None, log_level='warning',
        # The app writes the access log (the line `chalice local` writes).
        access_log=False, timeout_keep_alive=args.timeout_keep_alive,
        limit_concurrency=args.limit_concurrency or default_limit_concurrency(),
        backlog=args.backlog, timeout_graceful_shutdown=5))
    print('Serving on http://%s:%d' % (args.host, args.port), flush=True)
    server.run()
    return 0


if __name__ == '__main__':
    sys.exit(main())
