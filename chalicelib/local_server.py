"""The local development server `make run` starts: `chalice local`, without its stalls.

    python -m chalicelib.local_server [--host 127.0.0.1] [--port 8000] [--stage dev]

It is `chalice local` built from Chalice's own parts (the project config and
stage environment variables loaded as `chalice local` loads them, the same
LocalGateway, LocalDevServer and ThreadedHTTPServer), with a request handler
that differs in three ways:

- Each response leaves in one write. The stock handler writes the headers and
  then the body with two send() calls on an unbuffered socket; with Nagle's
  algorithm the body waits for the ACK of the headers, which the client delays
  (~40 ms on Linux) on a keep-alive connection. Here the socket file is
  buffered (flushed once per request by http.server) and TCP_NODELAY is set.
- A path no route matches gets a 404 application/problem+json, as every other
  error does (stock `chalice local` mimics API Gateway's 403 "Missing
  Authentication Token").
- Deployed or local, the app is the same object; nothing here changes routing
  or the app, so `chalice local` keeps working as before.

This module is for local serving only; Lambda never imports it.
"""
import argparse
import logging
import os
import queue
import sys
import threading
from urllib.parse import parse_qs

from chalice.local import (ChaliceRequestHandler, CustomLocalChalice, LambdaContext,
                           LambdaEventConverter, LocalChalice, LocalDevServer, LocalGateway,
                           LocalGatewayException, MatchResult, RouteMatcher,
                           ThreadedHTTPServer)

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


class FastRequestHandler(ChaliceRequestHandler):
    """ChaliceRequestHandler that sends each response in one write, without Nagle."""

    # A buffered socket file: status line, headers and body collect in one
    # buffer that http.server flushes once after each request.
    wbufsize = -1
    # socketserver sets TCP_NODELAY on the connection in setup().
    disable_nagle_algorithm = True

    def __init__(self, request, client_address, server, app_object, config):
        # Built here, not per request: one gateway serves the whole connection.
        self._gateway = ProblemGateway(app_object, config)
        super().__init__(request, client_address, server, app_object, config)

    def __getattr__(self, name):
        # Stock http.server answers a method it has no do_* for (TRACE, QUERY,
        # ...) with an HTML 501; routed like the rest, it gets the app's 405
        # problem with `Allow`, as every unsupported method does.
        if name.startswith('do_'):
            return self._generic_handle
        raise AttributeError(name)

    def log_message(self, format, *args):
        # http.server writes each access line to stderr from the request's
        # thread: a system call that hands the GIL to another thread and then
        # waits its turn to get it back, on every request. The same lines go
        # through a queue to one writer thread instead.
        _access_log.put('%s - - [%s] %s\n' % (self.address_string(),
                                               self.log_date_time_string(), format % args))

    @property
    def local_gateway(self):
        return self._gateway

    @local_gateway.setter
    def local_gateway(self, value):
        # The base class assigns a stock LocalGateway; keep ours.
        pass


_access_log = queue.SimpleQueue()
_writer = None


def _write_access_log(stream=None):
    while True:
        lines = [_access_log.get()]
        while not _access_log.empty():
            lines.append(_access_log.get_nowait())
        out = stream or sys.stderr
        out.write(''.join(lines))
        out.flush()


class DevServer(ThreadedHTTPServer):
    # Many keep-alive clients (browsers, wrk) connect at once.
    request_queue_size = 128


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
    # What chalice.local.create_local_server does before it builds a server
    # with the stock handler: make app.current_request thread-local, since
    # every connection is served on its own thread.
    CustomLocalChalice.__bases__ = (LocalChalice, app_obj.__class__)
    app_obj.__class__ = CustomLocalChalice
    global _writer
    if _writer is None:
        _writer = threading.Thread(target=_write_access_log, name='access-log', daemon=True)
        _writer.start()
    return LocalDevServer(app_obj, config, host, port, handler_cls=FastRequestHandler,
                          server_cls=DevServer)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m chalicelib.local_server',
        description='Serve the API locally, as `chalice local` does, without its '
                    'keep-alive stalls.')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--stage', default='dev', help='the Chalice stage whose config applies')
    args = parser.parse_args(argv)
    # The same stdout logging `chalice local` sets up (the app's log lines show).
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')
    server = make_server(args.host, args.port, args.stage)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
