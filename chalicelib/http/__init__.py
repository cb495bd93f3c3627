"""HTTP concerns in one place: problem responses, body parsing, ETags, cursors.

Modules only some requests need (hashing for cursors) are imported where used:
a cold start pays for what its request uses.

Routes in app.py translate requests into domain calls through these helpers;
the domain (chalicelib.domain.cars) and the stores know nothing of HTTP.
"""
import functools
import json
import logging
import urllib.parse

from chalice import Response

from chalicelib.domain import cars

log = logging.getLogger('cars.http')

MAX_BODY = 64 * 1024
JSON = 'application/json'
FORM = 'application/x-www-form-urlencoded'
PROBLEM = 'application/problem+json'
BODY_TYPES = (JSON, FORM)
REASONS = {400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
           405: 'Method Not Allowed', 409: 'Conflict', 412: 'Precondition Failed',
           413: 'Content Too Large', 415: 'Unsupported Media Type',
           422: 'Unprocessable Content', 428: 'Precondition Required',
           500: 'Internal Server Error', 503: 'Service Unavailable'}


class Problem(Exception):
    """An error to answer with an RFC 9457 problem body."""

    def __init__(self, status, detail, slug=None, errors=None, headers=None, title=None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.errors = errors
        self.headers = headers or {}
        self.title = title


def problem_response(status, detail, slug=None, errors=None, headers=None, title=None):
    body = {
        # Typed problems link to their explanation in the docs page; the rest
        # mean no more than their status code (RFC 9457 "about:blank").
        'type': '/api/v1/docs#problem-%s' % slug if slug else 'about:blank',
        'title': title or REASONS.get(status, 'Error'),
        'status': status,
        'detail': detail,
    }
    if errors is not None:
        body['errors'] = errors
    out_headers = {'Content-Type': PROBLEM}
    out_headers.update(headers or {})
    return Response(body=body, status_code=status, headers=out_headers)


def from_domain_error(error):
    """Map a domain error to its problem response."""
    if isinstance(error, cars.InvalidQuery):
        return problem_response(400, 'invalid query parameters; see errors',
                                'invalid-query', errors=error.errors)
    if isinstance(error, cars.InvalidCar):
        return problem_response(422, 'the request breaks the car rules; see errors',
                                'invalid-car', errors=error.errors)
    if isinstance(error, cars.CarNotFound):
        return problem_response(404, str(error), 'car-not-found')
    if isinstance(error, cars.CarExists):
        return problem_response(409, str(error), 'car-exists')
    if isinstance(error, cars.IdSpaceExhausted):
        return problem_response(409, str(error), 'id-space-exhausted',
                                title='No free car id')
    if isinstance(error, cars.VersionMismatch):
        return problem_response(412, str(error), 'version-mismatch')
    raise error


def handles_errors(view):
    """Turn domain errors, Problems and unexpected failures into problem responses.

    Chalice catches view exceptions before middleware sees them, so this wraps
    each view; unexpected failures are logged with their trace and answered
    with a bare 500 that reveals nothing.
    """
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except Problem as p:
            return problem_response(p.status, p.detail, p.slug, p.errors, p.headers, p.title)
        except cars.CarError as e:
            return from_domain_error(e)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if _is_store_unavailable(e):
                log.warning('store unavailable: %s', e)
                return problem_response(503, 'the car store is busy or unreachable; '
                                        'retry shortly', 'store-unavailable',
                                        headers={'Retry-After': '1'})
            log.exception('unhandled error')
            return problem_response(500, 'an internal error occurred; it has been logged')
    return wrapper


def _is_store_unavailable(error):
    name = type(error).__name__
    if name == 'OperationalError':  # sqlite: locked or busy past the timeout
        return True
    if name in ('EndpointConnectionError', 'ConnectTimeoutError', 'ReadTimeoutError'):
        return True
    code = getattr(error, 'response', {}).get('Error', {}).get('Code', '')
    return code in ('ProvisionedThroughputExceededException', 'ThrottlingException',
                    'RequestLimitExceeded', 'InternalServerError',
                    'ServiceUnavailable', 'ResourceNotFoundException')


# --- the middleware: route ids and Chalice's own errors ------------------------

def middleware(event, get_response):
    """Every request passes here: the id rule, and problem bodies for all errors.

    The seed routed ids with [0-9]{4}; Chalice captures any segment, so the rule
    is enforced here, once, for every method.
    """
    params = getattr(event, 'uri_params', None) or {}
    if 'car_id' in params and not cars.is_route_id(params['car_id']):
        return problem_response(404, 'no such resource: a car id is exactly 4 digits',
                                'car-not-found')
    response = get_response(event)
    return as_problem(response)


def as_problem(response):
    """Re-shape Chalice's own error bodies ({"Code", "Message"}) as problems."""
    if response.status_code < 400:
        return response
    headers = {k.lower(): v for k, v in response.headers.items()}
    if headers.get('content-type', '').startswith(PROBLEM):
        return response
    status = response.status_code
    message = REASONS.get(status, 'error')
    if isinstance(response.body, dict):
        message = response.body.get('Message') or response.body.get('message') or message
    if status >= 500:
        message = 'an internal error occurred; it has been logged'
    elif status == 415:
        message = 'send application/json or application/x-www-form-urlencoded'
    keep = {k: v for k, v in response.headers.items()
            if k.lower() not in ('content-type', 'content-length')}
    return problem_response(status, message, headers=keep)


# --- request bodies ---------------------------------------------------------------

def media_type(request):
    raw = request.headers.get('content-type') or ''
    parts = raw.split(';')
    mime = parts[0].strip().lower()
    params = {}
    for p in parts[1:]:
        if '=' in p:
            k, v = p.split('=', 1)
            params[k.strip().lower()] = v.strip().strip('"').lower()
    return mime, params


def read_body(request):
    """Parse a JSON or form body into a dict (or whatever JSON value was sent).

    400 for bytes that are not the declared format, 413 over 64 KiB, 415 for
    other media types.
    """
    raw = request.raw_body or b''
    if len(raw) > MAX_BODY:
        raise Problem(413, 'the body is %d bytes; at most %d are accepted'
                      % (len(raw), MAX_BODY), 'body-too-large')
    mime, params = media_type(request)
    if mime and mime not in BODY_TYPES and not (mime.startswith('application/')
                                                 and mime.endswith('+json')):
        raise Problem(415, 'send %s or %s, not %s' % (JSON, FORM, mime), 'unsupported-media-type')
    charset = params.get('charset', 'utf-8')
    if charset not in ('utf-8', 'utf8'):
        raise Problem(415, 'bodies must be UTF-8, not %s' % charset, 'unsupported-media-type')
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise Problem(400, 'the body is not valid UTF-8 (byte %d)' % e.start, 'malformed-body')
    if mime == FORM and not text.lstrip().startswith('{'):
        return parse_form(text)
    # JSON, or a form post whose body is JSON (curl -d '{...}' sends it that way).
    if not text.strip():
        raise Problem(400, 'the body is empty; send a JSON object', 'malformed-body')
    return parse_json(text)


def _reject_constant(name):
    raise ValueError('%s is not valid JSON' % name)


def parse_json(text):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Problem(400, 'the JSON body is nested too deeply', 'malformed-body')
    except ValueError as e:
        raise Problem(400, 'the body is not valid JSON: %s' % e, 'malformed-body')


def parse_form(text):
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                       encoding='utf-8', errors='strict', max_num_fields=64)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem(400, 'the form body is malformed: %s' % e, 'malformed-body')
    data = {}
    errors = []
    for key, value in pairs:
        if key in data:
            errors.append({'field': key, 'message': 'given more than once'})
        data[key] = value
    if errors:
        raise cars.InvalidCar(errors)
    return data


# --- query parameters ---------------------------------------------------------------

def query_params(request):
    """Single-valued query parameters; a repeated one is an error, not a guess."""
    multi = (request.to_original_event() or {}).get('multiValueQueryStringParameters') or {}
    params, errors = {}, []
    for name, values in multi.items():
        if len(values) != 1:
            errors.append({'field': name, 'message': 'given more than once'})
        else:
            params[name] = values[0]
    if errors:
        raise Problem(400, 'invalid query parameters', 'invalid-query', errors=errors)
    return params


# --- ETags and preconditions -------------------------------------------------------------

def header_value(request, name):
    """The whole value of header `name`, or None when it was not sent.

    A field sent on several lines is one comma-joined list (RFC 9110 5.3).
    API Gateway's REST proxy event keeps only the last line in `headers` and
    every line in `multiValueHeaders` (names as the client spelled them), so
    the lines are read from there when the event has them; servers that join
    repeated lines themselves pass the joined value in `headers`.
    """
    value = request.headers.get(name)
    if value is None:
        # API Gateway puts every header it got in `headers` too (its last line),
        # so most requests, which send no such header, stop here.
        return None
    multi = (request.to_original_event() or {}).get('multiValueHeaders')
    if multi:
        wanted = name.lower()
        lines = [line for key, values in multi.items() if key.lower() == wanted
                 for line in (values or ())]
        if lines:
            return ', '.join(lines)
    return value


def etag(record):
    return '"%d-%s"' % (record['version'], record['rev'])


def _tags(header):
    """Split an If-Match / If-None-Match value into (weak, opaque) pairs."""
    out = []
    for part in header.split(','):
        part = part.strip()
        if not part:
            continue
        weak = part.startswith('W/')
        if weak:
            part = part[2:]
        out.append((weak, part))
    return out


def _conditional(request, name):
    """The members of an If-Match / If-None-Match field: None when it was not
    sent, '*' for `*`, else a list of (weak, tag).

    The grammar is `"*" / #entity-tag`: `*` and tags never share one field.
    They do when the field comes on several lines (`If-Match: *` and then
    `If-Match: "1-stale"`), and then which one the client meant is a guess,
    so the request is refused (400) before anything is read or written.
    """
    header = header_value(request, name)
    if header is None:
        return None
    tags = _tags(header)
    stars = sum(1 for weak, tag in tags if tag == '*' and not weak)
    if not stars:
        return tags
    if stars == len(tags):
        return '*'
    raise Problem(400, '%s holds "*" and entity tags (sent on several lines?); send "*" '
                  'alone or tags alone' % name, 'invalid-precondition',
                  errors=[{'field': name, 'message': '"*" cannot be combined with tags'}])


def _rev_of(opaque):
    if len(opaque) >= 2 and opaque[0] == '"' and opaque[-1] == '"' and '-' in opaque:
        return opaque[1:-1].rsplit('-', 1)[1]
    return None


def write_precondition(request):
    """The store's `expect` from If-Match: None, '*', or a tuple of revisions."""
    tags = _conditional(request, 'If-Match')
    if tags is None or tags == '*':
        return tags
    # If-Match uses the strong comparison: weak tags never match.
    revs = tuple(r for weak, tag in tags if not weak
                 for r in [_rev_of(tag)] if r)
    return revs or ('\x00no-match',)


def only_if_absent(request):
    """True for `If-None-Match: *` on a write: write only where no car exists.

    PUT then creates and never replaces; PATCH, POST and DELETE, which need a
    car, can never pass it (412 on a car, 404 where there is none).
    """
    tags = _conditional(request, 'If-None-Match')
    if tags is None:
        return False
    if tags == '*':
        return True
    raise Problem(400, 'on writes If-None-Match may only be "*"', 'invalid-precondition')


def create_precondition(request):
    """For a create: True for `If-None-Match: *` (the new car's id must be free).

    `If-Match` can never hold there, as there is no current car to match
    (RFC 9110 13.1.1), so it is a 412 before anything is written.
    """
    if write_precondition(request) is not None:
        raise Problem(412, 'If-Match needs a current car, and a create makes a new one',
                      'version-mismatch')
    return only_if_absent(request)


def not_modified(request, record):
    """True when If-None-Match matches the car's current tag (weak comparison)."""
    tags = _conditional(request, 'If-None-Match')
    if tags is None:
        return False
    current = etag(record)
    return tags == '*' or any(tag == current for _, tag in tags)


def car_response(record, status=200, headers=None):
    out = {'ETag': etag(record), 'Content-Type': JSON}
    out.update(headers or {})
    return Response(body=cars.public(record), status_code=status, headers=out)


# --- cursors ------------------------------------------------------------------------

# A cursor is the page's last id and a digest of its filters, with a check
# value that catches accidents: a truncated or altered cursor, or one used
# with other filters, gets a 400 instead of a silently wrong page. The key is
# public (it is in this file), so the check proves nothing about who made a
# cursor, and needs not: a hand-made cursor can only choose where a listing
# starts, within the same filters, and shows nothing the client could not
# list anyway. A per-deployment secret would buy nothing but a setting to keep.
_CURSOR_KEY = b'cars-api-cursor-v1'
_CHECK_SIZE = 12


def _check_value(payload):
    import hashlib
    import hmac
    return hmac.new(_CURSOR_KEY, payload, hashlib.sha256).digest()[:_CHECK_SIZE]


def _filters_digest(filters):
    import hashlib
    return hashlib.sha256(filters.fingerprint().encode('utf-8')).hexdigest()[:16]


def make_cursor(after, filters):
    import base64
    payload = json.dumps([after, _filters_digest(filters)], separators=(',', ':')).encode()
    token = payload + _check_value(payload)
    return base64.urlsafe_b64encode(token).decode('ascii').rstrip('=')


def read_cursor(cursor, filters):
    """The id the cursor continues after; 400 if it was altered or mismatched."""
    import base64
    import hmac
    bad = Problem(400, 'the cursor is not one this API issued for these filters; '
                  'start again without it', 'invalid-cursor',
                  errors=[{'field': 'cursor', 'message': 'altered, or made with other filters'}])
    try:
        raw = base64.urlsafe_b64decode(cursor + '=' * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise bad
    payload, check = raw[:-_CHECK_SIZE], raw[-_CHECK_SIZE:]
    if len(raw) <= _CHECK_SIZE or not hmac.compare_digest(check, _check_value(payload)):
        raise bad
    try:
        # The key is public: a payload that passes the check may still be any
        # JSON, nested past the parser's recursion limit or of any shape.
        after, digest = json.loads(payload)
    except (ValueError, TypeError, RecursionError):
        raise bad
    if digest != _filters_digest(filters) or not cars.is_route_id(after):
        raise bad
    return after


def url_path(request, path):
    """`path` as the client must ask for it.

    Behind API Gateway's own domain every URL carries the stage first
    (`/api/api/v1/cars`); requestContext.path is what the client sent and the
    event's `path` is what the app routes on, so the difference is the prefix
    to keep in Location and Link. Locally and on a custom domain at the root
    the two are equal and nothing is added.
    """
    event = request.to_original_event() or {}
    sent = (event.get('requestContext') or {}).get('path') or ''
    routed = event.get('path') or ''
    if routed and sent != routed and sent.endswith(routed):
        return sent[:len(sent) - len(routed)] + path
    return path


def next_link(path, params, cursor):
    query = {k: v for k, v in params.items() if k != 'cursor'}
    query['cursor'] = cursor
    return '<%s?%s>; rel="next"' % (path, urllib.parse.urlencode(query))
