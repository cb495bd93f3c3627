"""Write protection: bearer tokens, checked in constant time, never logged.

Tokens come from `CARS_AUTH_TOKENS` (local runs, tests) or the SSM SecureString
named by `CARS_AUTH_SSM_PARAMETER` (deployed stages). `middleware` checks every
protected request; `authorize` is API Gateway's authorizer where tokens are in SSM.
"""
import threading
import time

from chalicelib import config
from chalicelib.http import paths
from chalicelib.http.problems import problem_response
from chalicelib.http.request import header_value

# A rotated token takes effect within this many seconds.
SSM_CACHE_SECONDS = 60
PRINCIPAL = 'cars-writer'
WRITE_METHODS = frozenset(('POST', 'PUT', 'PATCH', 'DELETE'))
PROTECTED_PREFIX = paths.CARS
_TRUE = ('1', 'true', 'yes', 'on')


class AuthError(Exception):
    def __init__(self, status, detail, slug):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = {'WWW-Authenticate': 'Bearer realm="cars"'} if status == 401 else {}


def _flag(name):
    return config.env(name, '').strip().lower() in _TRUE


def ssm_parameter():
    return config.env('CARS_AUTH_SSM_PARAMETER', '').strip() or None


def reads_protected():
    return _flag('CARS_AUTH_PROTECT_READS')


def gateway_enforced():
    """True when the stage keeps its tokens in SSM: attach the built-in authorizer."""
    # Not for CARS_AUTH_TOKENS alone: API Gateway, and `chalice local` imitating
    # it, answer a request without an Authorization header with a JSON 401 of
    # their own before any code runs, which would break "unset means open" and
    # the problem+json promise.
    return ssm_parameter() is not None


def enabled():
    """Cheap: is any write protection configured (or required) here?"""
    return bool(config.env('CARS_AUTH_TOKENS') or ssm_parameter()
                or (config.env('AWS_LAMBDA_FUNCTION_NAME') and not _flag('CARS_AUTH_DISABLED')))


def _split(raw):
    return [t.strip() for t in raw.replace('\n', ',').split(',') if t.strip()]


_ssm_lock = threading.Lock()
_ssm_cache = {}  # parameter name -> (fetched_at, tokens)


def _ssm_client():
    import boto3
    from botocore.config import Config
    return boto3.client('ssm', config=Config(connect_timeout=2, read_timeout=3,
                                             retries={'mode': 'standard', 'max_attempts': 2}))


def _fetch_ssm(name):
    response = _ssm_client().get_parameter(Name=name, WithDecryption=True)
    return _split(response['Parameter']['Value'])


def _ssm_tokens(name):
    now = time.monotonic()
    cached = _ssm_cache.get(name)
    if cached and now - cached[0] < SSM_CACHE_SECONDS:
        return cached[1]
    with _ssm_lock:
        cached = _ssm_cache.get(name)
        if cached and now - cached[0] < SSM_CACHE_SECONDS:
            return cached[1]
        try:
            tokens = _fetch_ssm(name)
        except Exception as e:  # noqa: BLE001 - any failure: fail closed
            # The parameter's value never appears here; its name and the error class do.
            import logging
            logging.getLogger('cars.auth').error('cannot read the tokens parameter %s: %s',
                                                 name, type(e).__name__)
            raise AuthError(503, 'write protection is configured but its tokens cannot be '
                            'read; try again later', 'auth-unavailable')
        _ssm_cache[name] = (now, tokens)
        return tokens


def clear_cache():
    _ssm_cache.clear()


def tokens():
    """The accepted tokens, or None when protection is off. Raises AuthError(503).

    Neither setting means open writes, except inside Lambda, where a stage
    without tokens refuses writes unless CARS_AUTH_DISABLED=true says open on
    purpose.
    """
    raw = config.env('CARS_AUTH_TOKENS')
    if raw is not None and raw.strip():
        return _split(raw)
    name = ssm_parameter()
    if name:
        return _ssm_tokens(name)
    if config.env('AWS_LAMBDA_FUNCTION_NAME') and not _flag('CARS_AUTH_DISABLED'):
        raise AuthError(503, 'this stage has no write protection configured; writes are '
                        'refused until it has', 'auth-unavailable')
    return None


def bearer(header):
    """The token of an `Authorization: Bearer <token>` value, or None.

    Raises AuthError(400) for a value that carries more than one credential.
    """
    if not header:
        return None
    if ',' in header:
        # A bearer token has no commas (RFC 6750 b64token), and Authorization
        # is no list field: a comma means the header came on several lines
        # (joined by the server or read from multiValueHeaders) or holds
        # several credentials. Guessing which one counts would let a proxy
        # and this API disagree about who is asking; the value is never echoed.
        raise AuthError(400, 'send exactly one "Authorization: Bearer <token>" header, '
                        'holding one token', 'invalid-authorization')
    scheme, _, value = header.strip().partition(' ')
    value = value.strip()
    if scheme.lower() != 'bearer' or not value:
        return None
    return value


def is_valid(token, accepted):
    import hmac  # only writes under protection need it (cold start)
    given = token.encode('utf-8', 'surrogatepass')
    # Compare with every token, without stopping early, so the time taken
    # says nothing about which token came close.
    ok = False
    for candidate in accepted:
        ok |= hmac.compare_digest(given, candidate.encode('utf-8'))
    return ok


def check(authorization):
    """Raise AuthError unless `authorization` (the header value) carries a valid token."""
    accepted = tokens()
    if accepted is None:
        return
    token = bearer(authorization)
    if token is None:
        raise AuthError(401, 'this request needs an "Authorization: Bearer <token>" header',
                        'unauthorized')
    if not is_valid(token, accepted):
        raise AuthError(403, 'the bearer token is not valid here', 'forbidden')


# Methods the collection route does not have: those answer 405 to everyone,
# token or not (a 401 first would hide that the method does not exist).
_NOT_ON_COLLECTION = frozenset(('PUT', 'PATCH', 'DELETE'))


def is_protected(method, path):
    if not path.startswith(PROTECTED_PREFIX):
        return False
    if path.rstrip('/') == PROTECTED_PREFIX and method in _NOT_ON_COLLECTION:
        return False
    if method in WRITE_METHODS:
        return True
    return method in ('GET', 'HEAD') and reads_protected()


# --- enforcement -------------------------------------------------------------------

def middleware(event, get_response):
    """Check the bearer token of protected requests; a no-op when protection is off."""
    # The route first: a read asks one setting, not every one enabled() reads.
    path = (event.context or {}).get('resourcePath') or event.path or ''
    if not is_protected(event.method, path) or not enabled():
        return get_response(event)
    authorization = header_value(event, 'authorization')
    try:
        authorizer = (event.context or {}).get('authorizer') or {}
        if authorizer.get('principalId') == PRINCIPAL:
            # API Gateway ran `authorize` for this request already, on one
            # string it chose; every line the client sent is checked here.
            bearer(authorization)
        else:
            check(authorization)
    except AuthError as e:
        return problem_response(e.status, e.detail, e.slug, headers=e.headers)
    return get_response(event)


def authorize(auth_request):
    """The built-in authorizer's body: allow a valid token, turn away the rest.

    API Gateway maps a raised "Unauthorized" to 401 and a deny to 403; a TOKEN
    authorizer has no way to answer 400. It gets the Authorization header as
    one string: one holding several credentials (a comma) is turned away as
    "Unauthorized", like any value that is not one bearer token. Which line
    API Gateway hands it when the header is repeated is not documented, so
    the middleware checks every line again behind the authorizer (400).
    """
    from chalice import AuthResponse
    try:
        check(auth_request.token)
    except AuthError as e:
        if e.status in (400, 401) and config.env('AWS_LAMBDA_FUNCTION_NAME'):
            raise Exception('Unauthorized')  # the exact text API Gateway maps to 401
        if e.status == 503:
            raise Exception('Unavailable')  # API Gateway: 500 AUTHORIZER_FAILURE, never open
        return AuthResponse(routes=[], principal_id='denied')
    return AuthResponse(routes=['*'], principal_id=PRINCIPAL)
