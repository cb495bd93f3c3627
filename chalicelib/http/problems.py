"""Problem responses (RFC 9457) and the catalogue of every problem type.

Views raise `Problem` or a domain error; `handles_errors` answers either, and
any unexpected failure, with an `application/problem+json` body.
"""
import functools
import logging

from chalice import Response

from chalicelib.domain import cars
from chalicelib.http import paths

log = logging.getLogger('cars.http')

PROBLEM = 'application/problem+json'
# Problem titles by status: the app's, and API Gateway's own (429, 502, 504; deploy/resources.py).
REASONS = {400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
           405: 'Method Not Allowed', 409: 'Conflict', 412: 'Precondition Failed',
           413: 'Content Too Large', 415: 'Unsupported Media Type',
           422: 'Unprocessable Content', 428: 'Precondition Required',
           429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway',
           503: 'Service Unavailable', 504: 'Gateway Timeout'}

# The catalogue: every problem type the API emits, by status. Each status has
# the sentence the OpenAPI document gives its error responses; each type, its
# slug and what it means. The OpenAPI document lists the types and the docs
# page gives each an anchor, which its `type` (type_uri) links to.
CATALOGUE = {
    400: (
        'Malformed syntax: bad JSON or form, a bad or repeated query parameter, an '
        'altered cursor, a bad `Idempotency-Key`, `If-None-Match` other than `*` '
        'on a write, or more than one `Authorization` credential',
        {
            'malformed-body':
                'The body is not valid JSON (a key given twice included), not valid UTF-8, '
                'or a malformed form. Nothing was changed.',
            'invalid-query':
                'A query parameter is unknown, given more than once, or breaks its rule; '
                '`errors` lists each one.',
            'invalid-cursor':
                'The `cursor` was altered, or is used with other filters than the page it '
                'came from. Start the listing again without it.',
            'invalid-precondition':
                'On writes `If-None-Match` may only be `*` (write only where no car exists); '
                '`*` may not stand beside entity tags; a conditional header holds at most '
                '50 entity tags.',
            'invalid-authorization':
                'The request carries more than one `Authorization` header, or more than one '
                'credential in it (a bearer token has no commas). Send exactly one '
                '`Authorization: Bearer <token>`; nothing was changed.',
            'invalid-idempotency-key':
                'The `Idempotency-Key` header must be 1-255 printable ASCII characters.',
        },
    ),
    401: (
        'Protection is on and no bearer token was sent',
        {
            'unauthorized':
                'Write protection is on and the request carries no `Authorization: Bearer` '
                'token.',
        },
    ),
    403: (
        'The bearer token is not accepted',
        {
            'forbidden': 'The bearer token is not one of the tokens this deployment accepts.',
        },
    ),
    404: (
        'No car with this id (or the id is not exactly 4 digits)',
        {
            'car-not-found':
                'There is no car with this id, or the id in the path is not exactly 4 digits.',
        },
    ),
    409: (
        'Conflict: the id exists, no id is free, or an identical `Idempotency-Key` '
        'request is still in flight',
        {
            'car-exists':
                'A car with the `id` given on create already exists; replace it with PUT '
                'instead.',
            'id-space-exhausted':
                'All 6,561 assignable ids (digits 1-9) are taken. Delete a car, or create '
                'with a free id of your choice.',
            'idempotency-key-in-flight':
                'A request with the same `Idempotency-Key` is still being processed; retry '
                'shortly.',
        },
    ),
    412: (
        '`If-Match` did not match the car\'s current `ETag`, or `If-None-Match: *` '
        'found a car; nothing was written',
        {
            'version-mismatch':
                'The `If-Match` tag is not the car\'s current `ETag` (or `If-None-Match: *` '
                'found a car): someone else changed it first. Nothing was written; read the '
                'car again and retry.',
        },
    ),
    413: (
        'The body is over 64 KiB',
        {
            'body-too-large': 'The body is over 64 KiB.',
        },
    ),
    415: (
        'Not JSON, not a form, or not UTF-8',
        {
            'unsupported-media-type':
                'Bodies must be `application/json` or `application/x-www-form-urlencoded`, '
                'in UTF-8.',
        },
    ),
    422: (
        'Well-formed input that breaks the rules; `errors` lists every bad field',
        {
            'invalid-car':
                'The body is well formed but breaks the car rules: `errors` lists every bad '
                'field with its rule, and nothing was changed.',
            'idempotency-key-reused':
                'The `Idempotency-Key` was already used with another body within the last '
                '24 hours; use a new key for a new request.',
        },
    ),
    503: (
        'The store is busy or unreachable, or write protection cannot read its tokens',
        {
            'store-unavailable':
                'The car store is busy or unreachable; retry after the `Retry-After` seconds.',
            'auth-unavailable':
                'Write protection is configured but its tokens cannot be read (or a '
                'deployed stage has none configured): writes are refused, never let through.',
        },
    ),
}

# (slug, status, meaning) of every type, in the catalogue's order.
PROBLEM_TYPES = [(slug, status, meaning) for status, (_, types) in CATALOGUE.items()
                 for slug, meaning in types.items()]


def type_uri(slug):
    """The `type` of a problem: its entry on the docs page, or about:blank without one."""
    return '%s#problem-%s' % (paths.DOCS, slug) if slug else 'about:blank'


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
        'type': type_uri(slug),
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
    # By name, so that neither sqlite3 nor botocore is imported to recognise them.
    name = type(error).__name__
    if name == 'OperationalError':  # sqlite: locked or busy past the timeout
        return True
    if name in ('EndpointConnectionError', 'ConnectTimeoutError', 'ReadTimeoutError'):
        return True
    code = getattr(error, 'response', {}).get('Error', {}).get('Code', '')
    return code in ('ProvisionedThroughputExceededException', 'ThrottlingException',
                    'RequestLimitExceeded', 'InternalServerError',
                    'ServiceUnavailable', 'ResourceNotFoundException')


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
