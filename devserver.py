"""`make run`'s server: the app as `chalice local` serves it, under uvicorn.

    python -m devserver [--host 127.0.0.1] [--port 8000] [--stage dev] [--threads 8]
                        [--timeout-keep-alive 5] [--timeout-head 10] [--timeout-body 30]
                        [--limit-concurrency N] [--no-access-log]

Development only: it lives outside chalicelib/, so it is not in the Lambda
package (app.py and chalicelib/), and Lambda never imports it.

The project is loaded as `chalice local --stage` loads it (Chalice's CLI
factory reads .chalice/config.json and applies the stage's environment
variables before app.py is imported), and every request goes through
Chalice's own LocalGateway, which turns it into the Lambda event the app
receives when deployed. HTTP/1.1 itself (parsing, keep-alive, pipelining,
`Expect: 100-continue`, chunked bodies, malformed requests) is uvicorn's, with
the httptools parser; this module only maps one ASGI request to
`LocalGateway.handle_request(method, path, headers, body)` and its answer back.

What it adds on top, and why:
- App calls run on a bounded pool of worker threads, with `current_request`
  per thread as `chalice local` arranges it, so a slow request (a page of
  1,000 cars) runs beside quick ones instead of holding up the event loop.
- Repeated request header lines reach the app as one comma-joined value (RFC
  9110 5.3); the app decides what a list means (If-Match, Authorization).
- A path no route matches gets a 404 problem+json, as every other error does
  (stock `chalice local` mimics API Gateway's 403 "Missing Authentication Token").
- Bodies over 64 KiB get the API's 413 problem without being read (a declared
  Content-Length) or as soon as the 64 KiB are passed (a chunked body), and
  the connection closes; a body must arrive within --timeout-body (408 problem).
- A request head must arrive within --timeout-head: uvicorn times out only an
  idle keep-alive connection, not one that never finishes a head (DevProtocol).
- An HTTP/1.1 request with no Host, or any request with two, is a 400 problem
  (RFC 9112 3.2); httptools passes both through.
- 204 and 304 answers carry no Content-Length (RFC 9110 8.6).
- One access-log line per request on stderr, the format `chalice local` writes.
"""
import argparse
import asyncio
import base64
import concurrent.futures
import logging
import os
import resource
import sys
import time

import uvicorn
from chalice.local import (LambdaContext, LambdaEventConverter, LocalGateway,
                           LocalGatewayException, MatchResult, RouteMatcher)
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from chalicelib import observability
# The app's own limit, checked here too so that a larger body is refused
# before it is read, not after it is buffered whole.
from chalicelib.http import MAX_BODY

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
# File descriptors kept free for the app (sqlite files, logs) when connections
# use up the rest: past that many connections, uvicorn answers 503 at once.
FD_HEADROOM = 128
NO_BODY_STATUSES = (204, 304)
# Framing is the server's business; the app's values would contradict uvicorn's.
HOP_BY_HOP = frozenset(('content-length', 'connection', 'transfer-encoding', 'keep-alive'))

log = logging.getLogger('devserver')


def load_app(stage, project_dir=PROJECT_DIR):
    """The Chalice app and its config, loaded as `chalice local --stage` loads them."""
    from chalice.cli.factory import CLIFactory
    from chalice.deploy.validate import validate_routes
    factory = CLIFactory(project_dir=project_dir, environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage)
    app_obj = config.chalice_app
    validate_routes(app_obj.routes)
    return app_obj, config


def current_request_per_thread(app_obj):
    """What chalice.local.create_local_server does to the app for its threads.

    Chalice keeps `app.current_request` on the app object; LocalChalice makes it
    a thread-local, so requests on different worker threads each see their own.
    """
    from chalice.local import CustomLocalChalice, LocalChalice
    CustomLocalChalice.__bases__ = (LocalChalice, app_obj.__class__)
    app_obj.__class__ = CustomLocalChalice
    return app_obj


def problem(status, detail, slug=None, title=None):
    """(status, headers, body) of the API's problem+json answer."""
    from chalicelib.http import problem_response
    response = problem_response(status, detail, slug, title=title).to_dict()
    return status, response['headers'], response['body']


class RouteNotFound(LocalGatewayException):
    CODE = 404


class CachingRouteMatcher(RouteMatcher):
    """Chalice's RouteMatcher, remembering which route each path matched.

    The stock matcher splits every route template on every request; a client
    (a browser, a benchmark) asks for the same few paths again and again.
    """

    MAX_PATHS = 4096

    def __init__(self, route_urls):
        super().__init__(route_urls)
        self._matched = {}

    def match_route(self, url):
        path, _, query = url.partition('?')
        hit = self._matched.get(path)
        if hit is None:
            found = super().match_route(path)  # ValueError when nothing matches
            if len(self._matched) >= self.MAX_PATHS:
                self._matched.clear()
            hit = self._matched[path] = (found.route, found.captured)
        route, captured = hit
        from urllib.parse import parse_qs
        params = parse_qs(query, keep_blank_values=True) if query else {}
        return MatchResult(route, dict(captured), params)


class ProblemGateway(LocalGateway):
    """LocalGateway that answers unrouted paths with a 404 problem."""

    _context_args = None

    def __init__(self, app_object, config):
        super().__init__(app_object, config)
        self.event_converter = LambdaEventConverter(
            CachingRouteMatcher(list(app_object.routes)), app_object.api.binary_types)

    def _generate_lambda_context(self):
        # Chalice's Config resolves each of these through its chain of stage
        # and global settings on every request; they cannot change while serving.
        if self._context_args is None:
            timeout = self._config.lambda_timeout
            if timeout is None:
                timeout = self.MAX_LAMBDA_EXECUTION_TIME
            self._context_args = (self._config.function_name,
                                  self._config.lambda_memory_size, timeout * 1000)
        name, memory, max_runtime_ms = self._context_args
        return LambdaContext(function_name=name, memory_size=memory,
                             max_runtime_ms=max_runtime_ms)

    def _generate_lambda_event(self, method, path, headers, body):
        try:
            return super()._generate_lambda_event(method, path, headers, body)
        except ValueError:
            # Chalice's route matcher raises ValueError for "no route here".
            # No slug: this problem means no more than its status ("about:blank").
            status, headers, body = problem(404, 'no resource at %s' % path.split('?', 1)[0])
            raise RouteNotFound(headers, body.encode('utf-8'))


class ChaliceASGI:
    """An ASGI application that hands each request to Chalice's LocalGateway."""

    def __init__(self, gateway, threads=8, timeout_body=30.0, access_log=True,
                 log_stream=None):
        self.gateway = gateway
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='app')
        self.timeout_body = timeout_body
        self.access_log = access_log
        self.log_stream = log_stream if log_stream is not None else sys.stderr

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return  # lifespan is off; websockets are not served
        target = scope['raw_path'].decode('latin-1')
        if target.startswith('//'):
            # As http.server does: '//host/x' would read as a network path.
            target = '/' + target.lstrip('/')
        if scope['query_string']:
            target += '?' + scope['query_string'].decode('latin-1')
        status = await self._serve(scope, target, receive, send)
        if self.access_log and status is not None:
            client = scope.get('client')
            self.log_stream.write('%s - - [%s] "%s %s HTTP/%s" %d -\n' % (
                client[0] if client else '-', _log_time(), scope['method'], target,
                scope['http_version'], status))

    async def _serve(self, scope, target, receive, send):
        """Answer one request; its status, or None when the client went away first."""
        headers = {}
        hosts = 0
        for name, value in scope['headers']:
            name, value = name.decode('latin-1'), value.decode('latin-1')
            if name == 'host':
                hosts += 1
            # RFC 9110 5.3: repeated lines are one comma-separated list.
            headers[name] = headers[name] + ', ' + value if name in headers else value
        version = scope['http_version']
        if version not in ('1.0', '1.1'):
            return await self._answer(send, *problem(
                505, 'HTTP/%s is not supported' % version, title='HTTP Version Not Supported'),
                close=True)
        if hosts > 1 or (hosts == 0 and version == '1.1'):
            return await self._answer(send, *problem(
                400, 'an HTTP/1.1 request carries exactly one Host header; this one has %d'
                % hosts), close=True)
        declared = headers.get('content-length')
        if declared is not None and _too_long(declared):
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
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.pool, self._call_app, scope['method'],
                                                target, headers, body)
        except Exception:
            log.exception('unhandled error serving %s %s', scope['method'], target)
            return await self._answer(send, *problem(
                500, 'the server failed to answer this request'), close=True)
        return await self._answer(send, *answer)

    async def _read_body(self, receive):
        """The body (None when empty), False if the client left, or a problem to answer.

        Reads stop at a deadline, so a body that stops arriving does not hold
        the request open, and past 64 KiB, so a large body is never buffered.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_body
        body = bytearray()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return problem(408, 'the request body did not arrive within %g s'
                               % self.timeout_body, title='Request Timeout')
            if message['type'] == 'http.disconnect':
                return False
            body += message.get('body', b'')
            if len(body) > MAX_BODY:
                return problem(413, 'the body is over %d bytes; at most %d are accepted'
                               % (MAX_BODY, MAX_BODY), 'body-too-large')
            if not message.get('more_body', False):
                return bytes(body) if body else None

    def _call_app(self, method, target, headers, body):
        """(status, headers, body) from LocalGateway; runs on a worker thread."""
        try:
            response = self.gateway.handle_request(method=method, path=target,
                                                   headers=headers, body=body)
        except LocalGatewayException as e:
            return e.CODE, dict(e.headers), e.body
        out_headers = dict(response['headers'])
        out_headers.update(response['multiValueHeaders'])
        body = response['body']
        if body is not None and response.get('isBase64Encoded'):
            body = base64.b64decode(body)
        return response['statusCode'], out_headers, body

    async def _answer(self, send, status, headers, body, close=False):
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
        if status in NO_BODY_STATUSES:
            body = b''
        else:
            if body and not content_type:
                raw.append((b'content-type', b'application/json'))  # as `chalice local`
            raw.append((b'content-length', b'%d' % len(body)))
        if close:
            raw.append((b'connection', b'close'))
        await send({'type': 'http.response.start', 'status': status, 'headers': raw})
        await send({'type': 'http.response.body', 'body': body})
        return status


_clock = [0, '']


def _log_time():
    now = int(time.time())
    if now != _clock[0]:
        _clock[:] = now, time.strftime('%d/%b/%Y %H:%M:%S', time.localtime(now))
    return _clock[1]


def _too_long(declared):
    # httptools has checked it is digits; a value of thousands of digits (or
    # of leading zeros) would still trip int()'s digit limit.
    digits = declared.strip().lstrip('0')
    return len(digits) > len(str(MAX_BODY)) or int(digits or '0') > MAX_BODY


class DevProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request head.

    uvicorn closes a keep-alive connection that stays idle after a response,
    but not one that never sends a head, nor one that stops in the middle of
    one: either would hold a file descriptor for good.
    """

    timeout_head = 10.0
    _head_timer = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self):
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self):
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc):
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg):
        # uvicorn's answer to bytes httptools cannot parse, with the API's
        # problem body rather than plain text; uvicorn writes it the same way.
        _, _, body = problem(400, 'the request is not valid HTTP/1.1')
        body = body.encode('utf-8')
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b': ', value, b'\r\n'])
        content.extend([b'content-type: application/problem+json\r\n',
                        b'content-length: %d\r\n' % len(body), b'connection: close\r\n\r\n',
                        body])
        self.transport.write(b''.join(content))
        self.transport.close()

    def _arm_head_timer(self):
        self._head_timer = self.loop.call_later(self.timeout_head, self._head_timed_out)

    def _cancel_head_timer(self):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self):
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # Still answering this connection's earlier requests (uvicorn does not
            # read on while pipelined ones wait): the client is not the slow one.
            self._arm_head_timer()
            return
        self.transport.close()


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
    parser.add_argument('--threads', type=int, default=8,
                        help='worker threads running the app (default 8)')
    parser.add_argument('--timeout-keep-alive', type=float, default=5.0, metavar='SECONDS',
                        help='close a keep-alive connection idle this long (default 5)')
    parser.add_argument('--timeout-head', type=float, default=10.0, metavar='SECONDS',
                        help='close a connection whose request head is not complete '
                             'this long after it began (default 10)')
    parser.add_argument('--timeout-body', type=float, default=30.0, metavar='SECONDS',
                        help='answer 408 when a request body is not complete this long '
                             'after its head (default 30)')
    parser.add_argument('--limit-concurrency', type=int, default=None, metavar='N',
                        help='answer 503 past N connections or requests at once '
                             '(default: the file descriptor limit less %d)' % FD_HEADROOM)
    parser.add_argument('--backlog', type=int, default=2048,
                        help='listen backlog: connections the kernel queues while none '
                             'can be accepted (default 2048)')
    parser.add_argument('--no-access-log', dest='access_log', action='store_false',
                        help='no access-log line per request')
    args = parser.parse_args(argv)
    # The app's lines as readable text with their ids (as the CLI shows them);
    # the server's own lines plain, on the same stdout.
    observability.configure_local_logging(stream=sys.stdout)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')
    logging.getLogger('asyncio').addFilter(OutOfDescriptorsOncePerSecond())
    app_obj, config = load_app(args.stage)
    app = ChaliceASGI(ProblemGateway(current_request_per_thread(app_obj), config),
                      threads=args.threads, timeout_body=args.timeout_body,
                      access_log=args.access_log)
    DevProtocol.timeout_head = args.timeout_head
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, http=DevProtocol, loop='asyncio',
        lifespan='off', interface='asgi3', log_config=None, log_level='warning',
        access_log=False, timeout_keep_alive=args.timeout_keep_alive,
        limit_concurrency=args.limit_concurrency or default_limit_concurrency(),
        backlog=args.backlog, timeout_graceful_shutdown=5))
    print('Serving on http://%s:%d' % (args.host, args.port), flush=True)
    server.run()
    return 0


if __name__ == '__main__':
    sys.exit(main())
