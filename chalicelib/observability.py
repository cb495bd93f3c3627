"""Operations: the ids that tie each log line to its request or event, and business metrics.

`middleware` (on every handler, see app.py) makes the invocation current; a
LogRecord factory copies its ids, and those given to `bind`, onto every record
made meanwhile. Metrics are one CloudWatch Embedded Metric Format line on
stdout per invocation that counted something: no client, no API call.
"""
import json
import logging
import os
import sys
import threading
import time

from chalicelib import config
from chalicelib.http import paths

# The metrics' CloudWatch namespace (their one dimension is `stage`).
NAMESPACE = 'CarsApi'
# The fields `bind` accepts, in the order the local text format shows them:
#   apiRequestId     API Gateway's requestContext.requestId, the access log's
#                    `requestId` (the runtime's own `requestId` key is the
#                    Lambda invocation's, and cannot be overridden)
#   carId            the car a request names or creates
#   messageId        the SQS message being ingested
#   s3Bucket, s3Key  the object an import reads
#   eventId          the DynamoDB stream record being turned into a change event
# The Lambda runtime's JSON handler writes every record attribute it does not
# know as a key of its own. None of these may also be passed in `extra=`
# (logging raises rather than overwrite a record attribute).
FIELDS = ('apiRequestId', 'carId', 'messageId', 's3Bucket', 's3Key', 'eventId')

log = logging.getLogger('cars.ops')

# The AWS SDK's and its HTTP stack's loggers stay at WARNING whatever the
# application's level: Lambda's ApplicationLogLevel=DEBUG sets the root
# logger to DEBUG, and botocore then logs every response body, the SSM
# parameter's decrypted write tokens included (the authorizer reads them).
# Set here, at import (the runtime configures logging before it imports the
# handler); getLogger only names them, nothing of the SDK is imported. A
# level set higher than WARNING is kept.
SDK_LOGGERS = ('botocore', 'boto3', 'urllib3', 's3transfer')
for _name in SDK_LOGGERS:
    _sdk_log = logging.getLogger(_name)
    if _sdk_log.level < logging.WARNING:
        _sdk_log.setLevel(logging.WARNING)
del _name, _sdk_log

_WRITE_METHODS = frozenset(('POST', 'PUT', 'PATCH', 'DELETE'))


class _Invocation(object):
    """What one invocation's log lines and metrics need.

    The ids are read from the event only when a record is made: most
    requests log nothing, and a request's budget is a few microseconds.
    """
    __slots__ = ('event', 'kind', 'bound', 'counts', '_fields')

    def __init__(self, event=None):
        self.event = event
        self.kind = type(event).__name__
        self.bound = None  # fields given to bind(): name -> value, None = removed
        self.counts = None
        self._fields = None

    def fields(self):
        if self._fields is None:
            fields = _fields_of(self.event, self.kind) if self.event is not None else {}
            if self.bound:
                fields.update(self.bound)
                fields = {k: v for k, v in fields.items() if v is not None}
            self._fields = fields
        return self._fields


# Per thread: every handler is synchronous, so an invocation runs from start to
# end on one thread (Lambda's, or a local server's).
class _Local(threading.local):
    current = None  # None, the chalice Request being served, or an _Invocation


_local = _Local()


def _current():
    return _local.current


def _invocation():
    """The current _Invocation, made on first need (a request's first bind or count;
    outside any handler, as in the CLI, one for the rest of the thread)."""
    current = _local.current
    if current.__class__ is not _Invocation:
        current = _local.current = _Invocation(current)
    return current


def _fields(current):
    if current.__class__ is _Invocation:
        return current.fields()
    return _fields_of(current, 'Request')


def bind(**fields):
    """Put `fields` on every log record made from here to the end of the invocation.

    A value of None removes the field (the next record is no longer about it).
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError('unknown log fields: %s' % ', '.join(sorted(unknown)))
    inv = _invocation()
    inv.bound = dict(inv.bound or (), **fields)
    inv._fields = None


def bound():
    """The fields bound now (a copy)."""
    current = _current()
    return dict(_fields(current)) if current is not None else {}


_make_record = logging.getLogRecordFactory()


def _record_with_fields(*args, **kwargs):
    record = _make_record(*args, **kwargs)
    current = _local.current
    if current is not None:
        record.__dict__.update(_fields(current))
    return record


# A factory, not a filter: a filter sees only its own logger's records, not
# its children's.
logging.setLogRecordFactory(_record_with_fields)


# --- metrics --------------------------------------------------------------------------

def count(name, value=1):
    """Add `value` to the metric `name` of this invocation (no-op outside one)."""
    if _current() is None:
        return
    inv = _invocation()
    if inv.counts is None:
        inv.counts = {}
    inv.counts[name] = inv.counts.get(name, 0) + value


def metrics_enabled():
    setting = config.env('CARS_METRICS', '').strip().lower()
    if setting:
        return setting == 'emf'
    # Locally the lines would only clutter the console; CloudWatch reads them.
    return bool(config.env('AWS_LAMBDA_FUNCTION_NAME'))


# Written here, not with Powertools Metrics, whose import alone costs more than
# the cold start budget allows (docs/design.md, cold-start choices).
def emf_line(counts, fields=None, now=None):
    """One EMF document: the counts as metrics, the bound ids as searchable properties."""
    stage = config.env('CARS_STAGE', 'local')
    doc = dict(fields or ())
    doc['_aws'] = {
        'Timestamp': int((now or time.time()) * 1000),
        'CloudWatchMetrics': [{
            'Namespace': NAMESPACE,
            'Dimensions': [['stage']],
            'Metrics': [{'Name': name, 'Unit': 'Count'} for name in counts],
        }],
    }
    doc['stage'] = stage
    doc.update(counts)
    return json.dumps(doc, separators=(',', ':'))


def flush():
    """Write this invocation's counts as one EMF line, then start counting afresh."""
    inv = _current()
    if inv.__class__ is not _Invocation or not inv.counts:
        return
    counts, inv.counts = inv.counts, None
    if metrics_enabled():
        # stdout, not a logger: the runtime would wrap a log record in its own
        # JSON, and CloudWatch reads EMF only from a top-level object.
        sys.stdout.write(emf_line(counts, inv.fields()) + '\n')
        sys.stdout.flush()


# --- the middleware ---------------------------------------------------------------

def middleware(event, get_response):
    """For every handler: its ids for the log lines, one line per write, the metrics."""
    previous = _local.current
    if event.__class__.__name__ == 'Request':
        # The hot path: a read adds two stores and a set lookup. Chalice turns
        # a view's exception into a 500 itself (problems.handles_errors logs it).
        _local.current = event
        try:
            response = get_response(event)
            if event.method in _WRITE_METHODS:
                _record_write(event, response)
                flush()
            return response
        finally:
            _local.current = previous
    inv = _local.current = _Invocation(event)
    try:
        try:
            response = get_response(event)
        except Exception:
            # The runtime reports it too, but without the ids bound here (the
            # record or message being handled); Lambda still sees it raised.
            log.exception('%s handler failed', inv.kind)
            raise
        return response
    finally:
        try:
            flush()
        finally:
            _local.current = previous


def _fields_of(event, kind):
    if kind == 'Request':
        fields = {}
        request_id = (event.context or {}).get('requestId')
        if request_id:
            fields['apiRequestId'] = request_id
        car_id = (event.uri_params or {}).get('car_id')
        # Four ASCII digits or nothing: the segment is whatever the client
        # sent (http/middleware.py applies the full id rule, and 404s the rest).
        if car_id and len(car_id) == 4 and car_id.isascii() and car_id.isdigit():
            fields['carId'] = car_id
        return fields
    # S3 objects (bound with their decoded key), SQS messages and stream
    # records are bound where they are handled.
    return {}


# method, item route? -> the write it is
_WRITES = {('POST', False): 'create', ('POST', True): 'update', ('PATCH', True): 'update',
           ('PUT', True): 'replace', ('DELETE', True): 'delete'}
_DONE = {('create', 201): ('created', 'CarsCreated'),
         ('update', 200): ('updated', 'CarsUpdated'),
         ('replace', 200): ('replaced', 'CarsUpdated'),
         ('replace', 201): ('created', 'CarsCreated'),
         ('delete', 204): ('deleted', 'CarsDeleted')}


def _record_write(request, response):
    """One line per write to a car: which, on what car, and how it ended."""
    if not (request.path or '').startswith(paths.CARS):
        return
    action = _WRITES.get((request.method, 'car_id' in (request.uri_params or {})))
    if action is None:
        return
    status = getattr(response, 'status_code', None)
    headers = {k.lower(): v for k, v in (getattr(response, 'headers', None) or {}).items()}
    body = getattr(response, 'body', None)
    car_id = bound().get('carId')
    if car_id is None and isinstance(body, dict) and isinstance(body.get('id'), str):
        car_id = body['id']
        bind(carId=car_id)
    done = _DONE.get((action, status))
    if done and headers.get('idempotent-replayed') == 'true':
        outcome = 'replayed'
    elif done:
        outcome = done[0]
        count(done[1])
    else:
        # Only the problem's type: its detail may quote what the client sent.
        problem = body.get('type') if isinstance(body, dict) else None
        outcome = 'refused' if status is not None and status < 500 else 'failed'
        log.info('%s car %s: %s (%s %s)', action, car_id or '-', outcome, status,
                 problem or '', extra={'write': action, 'outcome': outcome, 'status': status})
        return
    log.info('%s car %s: %s', action, car_id, outcome,
             extra={'write': action, 'outcome': outcome, 'status': status})


# --- outside Lambda ---------------------------------------------------------------

class _TextFormatter(logging.Formatter):
    """Plain text for a terminal, with the bound ids at the end of the line."""

    def format(self, record):
        text = super().format(record)
        ids = ' '.join('%s=%s' % (name, getattr(record, name)) for name in FIELDS
                       if getattr(record, name, None) is not None)
        return '%s [%s]' % (text, ids) if ids else text


def configure_local_logging(level=logging.INFO, stream=None):
    """Readable text logs for the CLI and the dev server: a handler on `cars`.

    Does nothing inside Lambda (the runtime's JSON handler is there) or when
    logging is configured already.
    """
    if os.environ.get('AWS_LAMBDA_FUNCTION_NAME'):
        return None
    cars_log = logging.getLogger('cars')
    if logging.getLogger().handlers or cars_log.handlers:
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_TextFormatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    cars_log.addHandler(handler)
    cars_log.setLevel(level)
    # The host program may log through the root logger too (the dev server's
    # own lines): the app's lines are written here, once.
    cars_log.propagate = False
    return handler
