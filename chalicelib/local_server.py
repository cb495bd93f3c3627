"""The local development server `make run` starts: `chalice local`, without its stalls.

    python -m chalicelib.local_server [--host 127.0.0.1] [--port 8000] [--stage dev]

It is `chalice local` built around Chalice's own LocalGateway (the project
config and stage environment variables loaded as `chalice local` loads them;
the same gateway turns each request into a Lambda event and calls the app),
with a different HTTP layer:

- One thread serves every connection from a selector loop, with a small
  HTTP/1.1 parser (keep-alive, pipelining, `Connection: close`, `Expect:
  100-continue`, Content-Length bodies; 400 problem for a malformed request).
  Stock `chalice local` runs a thread per connection on http.server, whose
  header parsing (the `email` package) and GIL hand-offs between threads at
  every recv/send cost far more than the app's own ~60 µs per request.
- Each response leaves in one send() with TCP_NODELAY set: no Nagle wait for
  the ACK of the headers before the body (~40 ms on a keep-alive connection).
- A path no route matches gets a 404 application/problem+json, as every other
  error does (stock `chalice local` mimics API Gateway's 403 "Missing
  Authentication Token").
- Deployed or local, the app is the same object; nothing here changes routing
  or the app, so `chalice local` keeps working as before.

`--threads` serves with Chalice's own threaded server instead (a thread per
connection, as stock `chalice local`), with a deep listen backlog and no Nagle
stall. The event loop runs one request at a time; the concurrency tests use
`--threads` so that their requests really do reach the app and the store at
the same time.

This module is for local serving only; Lambda never imports it.
"""
import argparse
import base64
import email.utils
import http
import logging
import os
import selectors
import socket
import sys
import time
from urllib.parse import parse_qs

from chalice.local import (LambdaContext, LambdaEventConverter, LocalGateway,
                           LocalGatewayException, MatchResult, RouteMatcher)

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RouteNotFound(LocalGatewayException):
    CODE = 404


def _not_found_error(path):
    from chalicelib.http import problem_response
    # No slug: this problem means no more than its status ("about:blank").
    response = problem_response(404, 'no resource at %s' % path.split('?', 1)[0]).to_dict()
    return RouteNotFound(response['headers'], response['body'].encode('utf-8'))


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
            raise _not_found_error(path)


# --- The HTTP/1.1 layer ------------------------------------------------------
#
# One thread serves every connection from a selector loop. Thread-per-connection
# (Chalice's ThreadedHTTPServer) spends most of a request's CPU in http.server
# (header parsing through the `email` package) and in sixteen threads handing
# the GIL to each other at every recv and send; the app itself is ~60 µs.

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# The app refuses bodies over 64 KiB with its own 413 problem; this bound only
# stops a client from making the server buffer without limit.
MAX_BODY_BYTES = 1024 * 1024
RECV_BYTES = 256 * 1024

_SERVER_HEADER = 'Server: chalicelib.local_server Python/%s\r\n' % sys.version.split()[0]
_CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'


class BadRequest(Exception):
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Headers(dict):
    """Request headers as sent (first value of a repeated name), looked up case-insensitively."""

    __slots__ = ('_lower',)

    def __init__(self):
        super().__init__()
        self._lower = {}

    def add(self, name, value):
        """Add a header; False (and nothing changes) when the name was already sent."""
        key = name.lower()
        if key in self._lower:
            return False
        self._lower[key] = value
        self[name] = value
        return True

    def fold(self, name, more):
        self[name] = self._lower[name.lower()] = self[name] + ' ' + more

    def get(self, name, default=None):
        return self._lower.get(name.lower(), default)


def parse_head(head):
    """(method, target, version, headers) from a request line and header lines.

    `head` is the bytes before the blank line, without it. Raises BadRequest.
    """
    lines = head.decode('iso-8859-1').split('\n')
    request_line = lines[0].rstrip('\r')
    words = request_line.split()
    if len(words) != 3:
        raise BadRequest(400, 'bad request line %r' % request_line[:200])
    method, target, version = words
    if not version.startswith('HTTP/'):
        raise BadRequest(400, 'bad request version %r' % version[:50])
    try:
        major, minor = version[5:].split('.')
        number = (int(major), int(minor))
    except ValueError:
        raise BadRequest(400, 'bad request version %r' % version[:50])
    if number >= (2, 0):
        raise BadRequest(505, 'HTTP version %s is not supported' % version[5:])
    if len(lines) > MAX_HEADERS + 1:
        raise BadRequest(431, 'more than %d header lines' % MAX_HEADERS)
    headers = Headers()
    last = None  # the header a folded line continues; '' when that one was a repeat
    for line in lines[1:]:
        line = line.rstrip('\r')
        if line[:1] in (' ', '\t'):
            # An obsolete folded continuation of the previous header line.
            if last is None:
                raise BadRequest(400, 'a header line starts with whitespace')
            if last:
                headers.fold(last, line.strip())
            continue
        name, sep, value = line.partition(':')
        if not sep or not name or name != name.strip():
            raise BadRequest(400, 'bad header line %r' % line[:200])
        last = name if headers.add(name, value.strip()) else ''
    if target.startswith('//'):
        # As http.server does: '//host/x' would read as a network path.
        target = '/' + target.lstrip('/')
    return method, target, number, headers


def _find_head_end(buf):
    """(end of the head, start of the body) in buf, or None while incomplete."""
    crlf = buf.find(b'\r\n\r\n')
    lf = buf.find(b'\n\n')
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return None


_date_cache = [0, '']


def _http_date():
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True)
    return _date_cache[1]


def _response_bytes(status, headers, body, head_only, close):
    """The whole response, one bytes object (one send, no Nagle wait between parts)."""
    if body is None:
        body = b''
    elif not isinstance(body, bytes):
        body = body.encode('utf-8')
    reason = _REASONS.get(status, '')
    out = ['HTTP/1.1 %d %s\r\n' % (status, reason), _SERVER_HEADER,
           'Date: %s\r\n' % _http_date(), 'Content-Length: %d\r\n' % len(body)]
    for name, value in headers.items():
        if name.lower() in ('content-length', 'connection'):
            continue
        if isinstance(value, list):
            out.extend('%s: %s\r\n' % (name, v) for v in value)
        else:
            out.append('%s: %s\r\n' % (name, value))
    if close:
        out.append('Connection: close\r\n')
    out.append('\r\n')
    data = ''.join(out).encode('latin-1', 'replace')
    return data if head_only else data + body


def _problem_bytes(status, detail, close=True):
    from chalicelib.http import problem_response
    response = problem_response(status, detail).to_dict()
    return _response_bytes(status, response['headers'], response['body'], False, close)


_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


class Connection:
    __slots__ = ('sock', 'address', 'inbuf', 'outbuf', 'continued', 'closing', 'reading')

    def __init__(self, sock, address):
        self.sock = sock
        self.address = address[0] if isinstance(address, tuple) else str(address)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.continued = False  # sent "100 Continue" for the request being read
        self.closing = False    # close once outbuf is sent
        self.reading = True


class EventLoopServer:
    """Chalice's LocalGateway behind a single-threaded HTTP/1.1 keep-alive server."""

    def __init__(self, app_object, config, host, port, log=None):
        self.gateway = ProblemGateway(app_object, config)
        self.host = host
        self.port = port
        self.log = log if log is not None else sys.stderr
        self._log_lines = []
        self._selector = selectors.DefaultSelector()
        self.socket = socket.create_server((host, port), backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._running = False

    # -- loop -----------------------------------------------------------------

    def serve_forever(self):
        self._running = True
        select = self._selector.select
        while self._running:
            for key, events in select(0.5):
                conn = key.data
                if conn is None:
                    self._accept()
                    continue
                try:
                    if events & selectors.EVENT_WRITE:
                        self._flush(conn)
                    if events & selectors.EVENT_READ and conn.reading:
                        self._read(conn)
                except OSError:
                    self._close(conn)
                except Exception:
                    # A bug here must cost one connection, never the server.
                    logging.getLogger(__name__).exception('dropping a connection')
                    self._close(conn)
            if self._log_lines:
                self._write_log()

    def shutdown(self):
        self._running = False

    def server_close(self):
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._close(key.data)
        self._selector.unregister(self.socket)
        self.socket.close()
        self._selector.close()

    def _accept(self):
        for _ in range(64):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: leave the rest queued in the backlog
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, address)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn):
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _read(self, conn):
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        self._serve_buffered(conn)

    def _serve_buffered(self, conn):
        """Answer every complete request in the input buffer (pipelining included)."""
        # Not while a response waits to be sent: a client that pipelines without
        # reading gets no more answered until it does.
        while conn.inbuf and not conn.closing and conn.reading:
            buf = conn.inbuf
            # Blank lines before a request line are allowed (RFC 9112 2.2).
            if buf[:1] in (b'\r', b'\n'):
                stripped = buf.lstrip(b'\r\n')
                del buf[:len(buf) - len(stripped)]
                continue
            found = _find_head_end(buf)
            if found is None:
                if len(buf) > MAX_HEADER_BYTES:
                    self._reject(conn, 431, 'the request head is over %d bytes' % MAX_HEADER_BYTES)
                break
            head_end, body_start = found
            if head_end > MAX_HEADER_BYTES:
                self._reject(conn, 431, 'the request head is over %d bytes' % MAX_HEADER_BYTES)
                break
            try:
                method, target, version, headers = parse_head(bytes(buf[:head_end]))
                length = self._content_length(headers)
            except BadRequest as e:
                self._reject(conn, e.status, e.detail)
                break
            if len(buf) - body_start < length:
                expect = headers.get('expect')
                if expect is not None and not conn.continued and version >= (1, 1):
                    if expect.lower() != '100-continue':
                        self._reject(conn, 417, 'only "Expect: 100-continue" is supported')
                        break
                    conn.continued = True
                    conn.outbuf += _CONTINUE
                    self._flush(conn)
                break
            body = bytes(buf[body_start:body_start + length]) if length else None
            del buf[:body_start + length]
            conn.continued = False
            connection = (headers.get('connection') or '').lower()
            if version >= (1, 1):
                close = 'close' in connection
            else:
                close = 'keep-alive' not in connection
            self._respond(conn, method, target, version, headers, body, close)
        if conn.outbuf:
            self._flush(conn)

    def _content_length(self, headers):
        if headers.get('transfer-encoding') is not None:
            raise BadRequest(501, 'Transfer-Encoding is not supported; send Content-Length')
        value = headers.get('content-length')
        if value is None:
            return 0
        if not value.isdigit() or not value.isascii():
            raise BadRequest(400, 'bad Content-Length %r' % value[:50])
        length = int(value)
        if length > MAX_BODY_BYTES:
            raise BadRequest(413, 'the body is %d bytes; at most %d are accepted'
                             % (length, MAX_BODY_BYTES))
        return length

    def _respond(self, conn, method, target, version, headers, body, close):
        try:
            try:
                response = self.gateway.handle_request(method=method, path=target,
                                                       headers=headers, body=body)
                status = response['statusCode']
                out_headers = response['headers'].copy()
                out_headers.update(response['multiValueHeaders'])
                out_headers.setdefault('Content-Type', 'application/json')
                body = response['body']
                if response.get('isBase64Encoded'):
                    body = base64.b64decode(body)
            except LocalGatewayException as e:
                status, out_headers, body = e.CODE, dict(e.headers), e.body
            data = _response_bytes(status, out_headers, body, method == 'HEAD', close)
        except Exception:
            logging.getLogger(__name__).exception('unhandled error serving %s %s', method, target)
            status, close = 500, True
            data = _problem_bytes(500, 'the server failed to answer this request')
        conn.outbuf += data
        if close:
            conn.closing = True
        self._log_lines.append('%s - - [%s] "%s %s HTTP/%d.%d" %d -\n' % (
            conn.address, time.strftime('%d/%b/%Y %H:%M:%S'), method, target,
            version[0], version[1], status))

    def _reject(self, conn, status, detail):
        conn.outbuf += _problem_bytes(status, detail)
        conn.closing = True
        conn.inbuf.clear()
        self._log_lines.append('%s - - [%s] "-" %d - %s\n' % (
            conn.address, time.strftime('%d/%b/%Y %H:%M:%S'), status, detail))

    def _flush(self, conn):
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            if conn.reading:
                # Stop reading until the client takes what it was sent.
                conn.reading = False
                self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        if conn.closing:
            self._close(conn)
            return
        if not conn.reading:
            conn.reading = True
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            self._serve_buffered(conn)

    def _write_log(self):
        lines, self._log_lines = self._log_lines, []
        try:
            self.log.write(''.join(lines))
            self.log.flush()
        except (OSError, ValueError):
            pass


def load_app(stage, project_dir=PROJECT_DIR):
    """The Chalice app and its config, loaded as `chalice local --stage` loads them.

    Chalice's CLI factory reads .chalice/config.json, applies the stage's
    environment_variables to os.environ, then imports app.py.
    """
    from chalice.cli.factory import CLIFactory
    from chalice.deploy.validate import validate_routes
    factory = CLIFactory(project_dir=project_dir, environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage)
    app_obj = config.chalice_app
    validate_routes(app_obj.routes)
    return app_obj, config


def make_server(host='127.0.0.1', port=8000, stage='dev', project_dir=PROJECT_DIR):
    app_obj, config = load_app(stage, project_dir)
    return EventLoopServer(app_obj, config, host, port)


def make_threaded_server(host='127.0.0.1', port=8000, stage='dev', project_dir=PROJECT_DIR):
    """Chalice's own thread-per-connection server (LocalDevServer), tuned for load."""
    from chalice.local import (ChaliceRequestHandler, CustomLocalChalice, LocalChalice,
                               LocalDevServer, ThreadedHTTPServer)

    class Handler(ChaliceRequestHandler):
        # Headers and body leave in one write (http.server flushes after each
        # request) with Nagle off: no ~40 ms wait on a keep-alive connection.
        disable_nagle_algorithm = True
        wbufsize = 64 * 1024

    class Server(ThreadedHTTPServer):
        # http.server listens with a backlog of 5: sixteen clients connecting
        # at once get resets from the kernel.
        request_queue_size = 128

    app_obj, config = load_app(stage, project_dir)
    # What chalice.local.create_local_server does: current_request per thread.
    CustomLocalChalice.__bases__ = (LocalChalice, app_obj.__class__)
    app_obj.__class__ = CustomLocalChalice
    return LocalDevServer(app_obj, config, host, port, handler_cls=Handler, server_cls=Server)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m chalicelib.local_server',
        description='Serve the API locally through Chalice\'s LocalGateway, as '
                    '`chalice local` does, from one keep-alive event loop.')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--stage', default='dev', help='the Chalice stage whose config applies')
    parser.add_argument('--threads', action='store_true',
                        help='a thread per connection (Chalice\'s own server), for load '
                             'that must reach the app concurrently')
    args = parser.parse_args(argv)
    # The same stdout logging `chalice local` sets up (the app's log lines show).
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')
    if args.threads:
        threaded = make_threaded_server(args.host, args.port, args.stage)
        try:
            threaded.serve_forever()  # prints "Serving on ..." itself
        except KeyboardInterrupt:
            pass
        return 0
    server = make_server(args.host, args.port, args.stage)
    print('Serving on http://%s:%d' % server.server_address[:2], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
