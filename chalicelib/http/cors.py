"""CORS, decided per request: `CARS_CORS_ORIGINS` lists the origins that may
call the API from a browser (or `*`); unset means none. The app answers its
own preflights (`preflight`) and `middleware` adds the response headers.
"""
from chalicelib import config

ALLOW_METHODS = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS'
ALLOW_HEADERS = ('Authorization, Content-Type, If-Match, If-None-Match, Idempotency-Key')
EXPOSE_HEADERS = 'ETag, Location, Link, Idempotent-Replayed, Retry-After'
MAX_AGE = '600'


def allowed_origins():
    raw = config.env('CARS_CORS_ORIGINS', '')
    return [o.strip().rstrip('/') for o in raw.split(',') if o.strip()]


def allowed_origin(origin):
    """The value for Access-Control-Allow-Origin, or None if `origin` may not call."""
    if not origin:
        return None
    allowed = allowed_origins()
    if not allowed:
        return None
    if '*' in allowed:
        return '*'
    return origin if origin.rstrip('/') in allowed else None


def preflight(request, allow=ALLOW_METHODS):
    """The answer to an OPTIONS request: 204, with CORS headers when the origin may call.

    `allow`: the methods of the requested path (its `Allow` header must list
    exactly those).
    """
    from chalice import Response
    headers = {'Allow': allow, 'Vary': 'Origin'}
    origin = allowed_origin(request.headers.get('origin'))
    if origin:
        headers.update({'Access-Control-Allow-Origin': origin,
                        'Access-Control-Allow-Methods': allow,
                        'Access-Control-Allow-Headers': ALLOW_HEADERS,
                        'Access-Control-Max-Age': MAX_AGE})
    return Response(body='', status_code=204, headers=headers)


def middleware(event, get_response):
    response = get_response(event)
    if not allowed_origins():
        # CORS off (the default): every request pays one environment read, no more.
        return response
    origin = allowed_origin(event.headers.get('origin'))
    if origin and 'Access-Control-Allow-Origin' not in response.headers:
        response.headers['Access-Control-Allow-Origin'] = origin
        response.headers['Access-Control-Expose-Headers'] = EXPOSE_HEADERS
        response.headers['Vary'] = 'Origin'
    elif 'Vary' not in response.headers:
        response.headers['Vary'] = 'Origin'
    return response
