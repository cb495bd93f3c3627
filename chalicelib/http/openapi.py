"""The OpenAPI 3.1 document of the API, built from the car rules in cars.py.

The JSON Schemas of bodies and query parameters come from the same msgspec
types that validate requests (`cars._field_types`, `cars.list_param_types`),
so the document cannot say something the server does not do. Which requests
need a bearer token comes from the running server's own settings
(`auth.enabled()`, `auth.reads_protected()`), so the document tells a client
what this server asks of it. The document is built on first request and
cached per year and per those settings: other routes never pay for it.
"""
import json

from chalicelib import http
from chalicelib.domain import cars
from chalicelib.http import auth

TITLE = 'Car inventory API'
VERSION = '1.0.0'
DOCS_PATH = '/api/v1/docs'
CARS = '/api/v1/cars'
CAR = '/api/v1/cars/{car_id}'

# Every problem type the API emits, by slug: its `type` URI is
# /api/v1/docs#problem-<slug>, and the docs page has an anchor for each.
PROBLEM_TYPES = [
    ('malformed-body', 400,
     'The body is not valid JSON, not valid UTF-8, or a malformed form. Nothing was changed.'),
    ('invalid-query', 400,
     'A query parameter is unknown, given more than once, or breaks its rule; `errors` '
     'lists each one.'),
    ('invalid-cursor', 400,
     'The `cursor` was altered, or is used with other filters than the page it came from. '
     'Start the listing again without it.'),
    ('invalid-precondition', 400,
     'On writes `If-None-Match` may only be `*` (write only where no car exists).'),
    ('invalid-authorization', 400,
     'The request carries more than one `Authorization` header, or more than one '
     'credential in it (a bearer token has no commas). Send exactly one '
     '`Authorization: Bearer <token>`; nothing was changed.'),
    ('invalid-idempotency-key', 400,
     'The `Idempotency-Key` header must be 1-255 printable ASCII characters.'),
    ('unauthorized', 401,
     'Write protection is on and the request carries no `Authorization: Bearer` token.'),
    ('forbidden', 403,
     'The bearer token is not one of the tokens this deployment accepts.'),
    ('car-not-found', 404,
     'There is no car with this id, or the id in the path is not exactly 4 digits.'),
    ('car-exists', 409,
     'A car with the `id` given on create already exists; replace it with PUT instead.'),
    ('id-space-exhausted', 409,
     'All 6,561 assignable ids (digits 1-9) are taken. Delete a car, or create with a free '
     'id of your choice.'),
    ('idempotency-key-in-flight', 409,
     'A request with the same `Idempotency-Key` is still being processed; retry shortly.'),
    ('version-mismatch', 412,
     'The `If-Match` tag is not the car\'s current `ETag` (or `If-None-Match: *` found a car): '
     'someone else changed it first. Nothing was written; read the car again and retry.'),
    ('body-too-large', 413, 'The body is over 64 KiB.'),
    ('unsupported-media-type', 415,
     'Bodies must be `application/json` or `application/x-www-form-urlencoded`, in UTF-8.'),
    ('invalid-car', 422,
     'The body is well formed but breaks the car rules: `errors` lists every bad field with '
     'its rule, and nothing was changed.'),
    ('idempotency-key-reused', 422,
     'The `Idempotency-Key` was already used with another body within the last 24 hours; '
     'use a new key for a new request.'),
    ('store-unavailable', 503,
     'The car store is busy or unreachable; retry after the `Retry-After` seconds.'),
    ('auth-unavailable', 503,
     'Write protection is configured but its tokens cannot be read (or a deployed stage has '
     'none configured): writes are refused, never let through.'),
]

_cache = {}


def _settings():
    """What the document depends on besides the code: the year, and who needs a token.

    Read through chalicelib.config, so a settings reload (or the test suite's
    REMEMBER = False) gives the next request the document of the new settings.
    """
    writes = auth.enabled()
    return cars.year_max(), writes, writes and auth.reads_protected()


def document():
    """The OpenAPI document as a dict, built once per year and protection settings."""
    key = _settings()
    doc = _cache.get(key)
    if doc is None:
        _cache.clear()
        doc = _cache[key] = _build(*key[1:])
    return doc


def document_json():
    key = ('json',) + _settings()
    text = _cache.get(key)
    if text is None:
        text = json.dumps(document(), separators=(',', ':'), ensure_ascii=False)
        _cache[key] = text
    return text


# --- schemas from the car rules ------------------------------------------------

def _structs():
    """msgspec Structs of the request and response bodies, from the field types."""
    import msgspec
    types, _ = cars._field_types()
    unset = msgspec.UNSET
    required = [(k, types[k]) for k in ('make', 'model', 'year')]
    optional = [(k, types[k], unset) for k in cars.OPTIONAL_FIELDS]
    options = dict(forbid_unknown_fields=True, kw_only=True)
    new = msgspec.defstruct('CarNew', [('id', types['id'], unset)] + required + optional,
                            **options)
    replace = msgspec.defstruct('CarReplace', [('id', types['id'], unset)] + required
                                + optional, **options)
    patch = msgspec.defstruct('CarPatch', [(k, types[k], unset) for k in cars.FIELDS],
                              **options)
    return new, replace, patch


def _schemas():
    import msgspec
    new, replace, patch = _structs()
    _, components = msgspec.json.schema_components(
        [new, replace, patch], ref_template='#/components/schemas/{name}')
    components['CarNew']['description'] = (
        'A new car. `id` is optional: the server assigns one (digits 1-9) when absent. '
        'Unknown fields are an error.')
    # The id of a PUT is the one in the path. The server tolerates a body `id`
    # equal to it (a car read and sent back as is), but no schema can say
    # "equal to the path", so the document leaves `id` out of the body.
    del components['CarReplace']['properties']['id']
    components['CarReplace']['description'] = (
        'A whole car for PUT; its id is the one in the path. (A car as read, with its '
        '`id`, is accepted too when that `id` equals the path\'s; any other is a 422.)')
    components['CarPatch']['description'] = (
        'A partial update: only the fields given change; `null` clears `trans` or `color`.')
    for name in ('CarNew', 'CarReplace', 'CarPatch'):
        components[name + 'Form'] = _form_schema(components[name])
    components['Car'] = _car_schema()
    components['CarList'] = {
        'type': 'object',
        'required': ['cars', 'next'],
        'properties': {
            'cars': {'type': 'array', 'items': {'$ref': '#/components/schemas/Car'},
                     'description': 'At most `limit` cars, in ascending `id` order'},
            'next': {'type': ['string', 'null'],
                     'description': 'The cursor of the next page, or null on the last page'},
        },
    }
    components['Problem'] = _problem_schema()
    components['Health'] = {
        'type': 'object',
        'required': ['status', 'store'],
        'properties': {'status': {'const': 'ok'},
                       'store': {'enum': ['sqlite', 'dynamodb']}},
    }
    return components


def _form_schema(schema):
    """The same rules for a form body, where every value arrives as a string."""
    out = {'type': 'object', 'properties': {},
           'additionalProperties': False,
           'description': schema.get('description', '') + ' Sent as a form, every value '
           'is a string; a blank `trans` or `color` reads as null.'}
    if 'required' in schema:
        out['required'] = list(schema['required'])
    for name, prop in schema['properties'].items():
        strings = [p for p in prop.get('anyOf', [prop]) if p.get('type') == 'string']
        out['properties'][name] = dict(strings[0])
    return out


def _car_schema():
    hi = cars.year_max()
    return {
        'type': 'object',
        'description': 'A car as the server returns it: always all six fields; text is '
                       'trimmed and NFC-normalized.',
        'required': ['id', 'make', 'model', 'year', 'trans', 'color'],
        'properties': {
            'id': {'type': 'string', 'pattern': '^[0-9]{4}$',
                   'description': 'Four digits; assigned ids use 1-9 only'},
            'make': {'type': 'string', 'minLength': 1},
            'model': {'type': 'string', 'minLength': 1},
            'year': {'type': 'integer', 'minimum': cars.YEAR_MIN, 'maximum': hi},
            'trans': {'type': ['string', 'null'], 'minLength': 1},
            'color': {'type': ['string', 'null'], 'minLength': 1},
        },
        'example': {'id': '8273', 'make': 'Toyota', 'model': 'Corolla', 'year': 2015,
                    'trans': 'automatic', 'color': 'blue'},
    }


def _problem_schema():
    slugs = ', '.join('`%s`' % slug for slug, _, _ in PROBLEM_TYPES)
    return {
        'type': 'object',
        'description': 'An RFC 9457 problem. Every error response has this shape.',
        'required': ['type', 'title', 'status', 'detail'],
        'properties': {
            'type': {'type': 'string',
                     'description': '`about:blank` or `%s#problem-<slug>`, slug one of %s'
                                    % (DOCS_PATH, slugs)},
            'title': {'type': 'string'},
            'status': {'type': 'integer', 'minimum': 400, 'maximum': 599},
            'detail': {'type': 'string'},
            'errors': {
                'type': 'array',
                'description': 'For invalid input: one entry per bad field',
                'items': {'type': 'object', 'required': ['field', 'message'],
                          'properties': {'field': {'type': 'string'},
                                         'message': {'type': 'string'}}},
            },
        },
    }


# --- parameters and responses ---------------------------------------------------------

def _list_parameters():
    import msgspec
    params = []
    for name, (typ, description) in cars.list_param_types().items():
        schema = msgspec.json.schema(typ)
        schema.pop('$defs', None)
        params.append({'name': name, 'in': 'query', 'required': False,
                       'description': description, 'schema': schema})
    return params


def _header(description, schema=None):
    return {'description': description, 'schema': schema or {'type': 'string'}}


ETAG = _header('Strong validator of the car\'s current version, e.g. `"3-9f2c4e1ab0d37c55"`; '
               'send it back in `If-Match`')
LOCATION = _header('The URL of the car: `/api/v1/cars/{id}`')
LINK = _header('`<...>; rel="next"` when there is a next page (the same URL as `next`)')
RETRY_AFTER = _header('Seconds to wait before retrying', {'type': 'string'})
WWW_AUTHENTICATE = _header('`Bearer realm="cars"`')
REPLAYED = _header('`true` when this is the recorded response to an earlier request with '
                   'the same `Idempotency-Key`; absent otherwise', {'const': 'true'})
ALLOW = _header('The methods this path supports')


def _problem(status, description):
    return {'description': description,
            'content': {http.PROBLEM: {'schema': {'$ref': '#/components/schemas/Problem'}}}}


def _problems(*statuses):
    texts = {
        400: 'Malformed syntax: bad JSON or form, a bad or repeated query parameter, an '
             'altered cursor, a bad `Idempotency-Key`, `If-None-Match` other than `*` '
             'on a write, or more than one `Authorization` credential',
        401: 'Protection is on and no bearer token was sent',
        403: 'The bearer token is not accepted',
        404: 'No car with this id (or the id is not exactly 4 digits)',
        409: 'Conflict: the id exists, no id is free, or an identical `Idempotency-Key` '
             'request is still in flight',
        412: '`If-Match` did not match the car\'s current `ETag`, or `If-None-Match: *` '
             'found a car; nothing was written',
        413: 'The body is over 64 KiB',
        415: 'Not JSON, not a form, or not UTF-8',
        422: 'Well-formed input that breaks the rules; `errors` lists every bad field',
        503: 'The store is busy or unreachable, or write protection cannot read its tokens',
    }
    out = {}
    for status in statuses:
        out[str(status)] = _problem(status, texts[status])
    if '401' in out:
        out['401']['headers'] = {'WWW-Authenticate': WWW_AUTHENTICATE}
    return out


def _car_response(description, *headers):
    out = {'description': description,
           'headers': {'ETag': ETAG},
           'content': {http.JSON: {'schema': {'$ref': '#/components/schemas/Car'}}}}
    if 'Location' in headers:
        out['headers']['Location'] = LOCATION
    if 'Idempotent-Replayed' in headers:
        out['headers']['Idempotent-Replayed'] = REPLAYED
    return out


def _body(name, description):
    ref = '#/components/schemas/%s' % name
    return {
        'required': True,
        'description': description,
        'content': {
            http.JSON: {'schema': {'$ref': ref}},
            http.FORM: {'schema': {'$ref': ref + 'Form'}},
        },
    }


CAR_ID = {
    'name': 'car_id', 'in': 'path', 'required': True,
    'description': 'Exactly 4 ASCII digits; anything else is a 404',
    'schema': {'type': 'string', 'pattern': '^[0-9]{4}$'},
}
# PUT may replace a car whose id has a 0 (carried over from the seed) but
# never create one, so only ids of digits 1-9 are always valid here.
CAR_ID_PUT = dict(CAR_ID, schema={'type': 'string', 'pattern': cars.ID_PATTERN},
                  description='Four digits 1-9 (a car carried over from the seed with a 0 '
                              'in its id may be replaced, never created: 422)')
IF_MATCH = {
    'name': 'If-Match', 'in': 'header', 'required': False,
    'description': 'Write only if the car\'s current `ETag` is one of these (or `*`: if it '
                   'exists); otherwise 412 and nothing changes. Sent on several lines, it '
                   'is one list; `*` beside tags is refused (400).',
    'schema': {'type': 'string'},
}
IF_NONE_MATCH_READ = {
    'name': 'If-None-Match', 'in': 'header', 'required': False,
    'description': '304 Not Modified when the car\'s current `ETag` is one of these',
    'schema': {'type': 'string'},
}


def _if_none_match_star(description):
    """`If-None-Match` on a write, where only `*` is accepted."""
    return {'name': 'If-None-Match', 'in': 'header', 'required': False,
            'description': description, 'schema': {'const': '*'}}


IF_NONE_MATCH_PUT = _if_none_match_star(
    '`*`: create only, never replace (412 if the car exists)')
IF_NONE_MATCH_WRITE = _if_none_match_star(
    '`*`: write only where no car exists, which this method, needing a car, never does: '
    '412 if the car exists, 404 if not; nothing changes')
IF_NONE_MATCH_CREATE = _if_none_match_star(
    '`*`: create only where no car exists, as a create always does; a body `id` that '
    'exists is then a 412 rather than a 409. (`If-Match` on a create is always a 412: '
    'there is no current car to match.)')
IDEMPOTENCY_KEY = {
    'name': 'Idempotency-Key', 'in': 'header', 'required': False,
    'description': 'Any string of your choice (1-255 printable ASCII characters). A retry with '
                   'the same key and body within 24 hours replays the first response and '
                   'creates nothing; the same key with another body is a 422; a retry while '
                   'the first is still in flight is a 409.',
    'schema': {'type': 'string', 'minLength': 1, 'maxLength': 255,
               'pattern': '^[\\x20-\\x7e]+$'},
}

WRITE = [{'bearer': []}]


def _op(op_id, summary, responses, description=None, parameters=None, body=None,
        security=None, tags=('cars',)):
    op = {'operationId': op_id, 'summary': summary, 'tags': list(tags),
          'responses': responses}
    if description:
        op['description'] = description
    if parameters:
        op['parameters'] = parameters
    if body:
        op['requestBody'] = body
    if security is not None:
        op['security'] = security
    return op


def _preflight(name, *statuses):
    return _op(name, 'CORS preflight', dict({
        '204': {'description': 'The methods allowed, and CORS headers when the `Origin` may '
                               'call (`CARS_CORS_ORIGINS`)',
                'headers': {'Allow': ALLOW}}}, **_problems(*statuses)), tags=['service'])


def _build(writes_protected, reads_protected):
    write_problems = (401, 403) if writes_protected else ()
    read_problems = (401, 403) if reads_protected else ()
    write_security = WRITE if writes_protected else None
    read_security = WRITE if reads_protected else None
    hi = cars.year_max()
    paths = {
        '/': {'get': _op(
            'hello', 'The seed\'s greeting', {
                '200': {'description': '`Hello, world`',
                        'content': {'text/plain': {'schema': {'const': 'Hello, world'}}}}},
            tags=['service'])},
        '/api/v1/health': {'get': _op(
            'health', 'Liveness and store reachability', dict({
                '200': {'description': 'The store answered',
                        'content': {http.JSON: {
                            'schema': {'$ref': '#/components/schemas/Health'}}}}},
                **_problems(503)), tags=['service'])},
        CARS: {
            'get': _op(
                'listCars', 'List cars, one page at a time', dict({
                    '200': {
                        'description': 'One page, in ascending `id` order',
                        'headers': {'Link': LINK},
                        'content': {http.JSON: {
                            'schema': {'$ref': '#/components/schemas/CarList'}}}}},
                    **_problems(400, *read_problems, 503)),
                description='Filters combine with AND; text filters are exact and '
                            'case-insensitive (a blank one matches cars without that field). '
                            'Follow `next` (or the `Link` header) until it is null to see '
                            'every matching car exactly once, in `id` order. '
                            'Unknown query parameters are an error (400).',
                parameters=_list_parameters(),
                security=read_security),
            'post': _op(
                'createCar', 'Add a car', dict({
                    '201': _car_response('Created (or its replay)', 'Location',
                                         'Idempotent-Replayed')},
                    **_problems(400, *write_problems, 409, 412, 413, 415, 422, 503)),
                description='The server assigns an `id` (4 digits 1-9) unless the body '
                            'has one. Creating with an `id` that exists is a 409.',
                parameters=[IDEMPOTENCY_KEY, IF_NONE_MATCH_CREATE],
                body=_body('CarNew', 'The new car, as JSON or as a form'),
                security=write_security),
            'options': _preflight('carsPreflight'),
        },
        CAR: {
            'parameters': [CAR_ID],
            'get': _op(
                'getCar', 'Read one car', dict({
                    '200': _car_response('The car'),
                    '304': {'description': 'Not modified: `If-None-Match` matched',
                            'headers': {'ETag': ETAG}}},
                    **_problems(*read_problems, 404, 503)),
                parameters=[IF_NONE_MATCH_READ],
                security=read_security),
            'post': _op(
                'updateCarPost', 'Partially update a car (the seed\'s update)', dict({
                    '200': _car_response('The updated car')},
                    **_problems(400, *write_problems, 404, 412, 413, 415, 422, 503)),
                description='The same as PATCH.',
                parameters=[IF_MATCH, IF_NONE_MATCH_WRITE],
                body=_body('CarPatch', 'The fields to change'),
                security=write_security),
            'patch': _op(
                'updateCar', 'Partially update a car', dict({
                    '200': _car_response('The updated car')},
                    **_problems(400, *write_problems, 404, 412, 413, 415, 422, 503)),
                description='Only the fields given change; `null` clears `trans` or `color`.',
                parameters=[IF_MATCH, IF_NONE_MATCH_WRITE],
                body=_body('CarPatch', 'The fields to change'),
                security=write_security),
            'put': _op(
                'putCar', 'Create or replace the car with this id', dict({
                    '200': _car_response('Replaced'),
                    '201': _car_response('Created', 'Location')},
                    **_problems(400, *write_problems, 404, 412, 413, 415, 422, 503)),
                description='A new car\'s id must use the digits 1-9 (ids with a 0 exist '
                            'only in data carried over from the seed and may only be '
                            'replaced). Absent optional fields become null.',
                parameters=[CAR_ID_PUT, IF_MATCH, IF_NONE_MATCH_PUT],
                body=_body('CarReplace', 'The whole car'),
                security=write_security),
            'delete': _op(
                'deleteCar', 'Delete a car', dict({
                    '204': {'description': 'Deleted'}},
                    **_problems(400, *write_problems, 404, 412, 503)),
                parameters=[IF_MATCH, IF_NONE_MATCH_WRITE],
                security=write_security),
            'options': _preflight('carPreflight', 404),
        },
        '/api/v1/openapi.json': {'get': _op(
            'openapi', 'This document', {
                '200': {'description': 'The OpenAPI 3.1 document',
                        'content': {http.JSON: {'schema': {'type': 'object'}}}}},
            tags=['service'])},
        DOCS_PATH: {'get': _op(
            'docs', 'This document as a page for people', {
                '200': {'description': 'An HTML page that works offline',
                        'content': {'text/html': {'schema': {'type': 'string'}}}}},
            tags=['service'])},
    }
    components = {'schemas': _schemas()}
    if writes_protected:
        components['securitySchemes'] = {
            'bearer': {'type': 'http', 'scheme': 'bearer',
                       'description': 'One of the tokens this server accepts '
                                      '(`CARS_AUTH_TOKENS`, or the stage\'s SSM parameter); '
                                      'exactly one `Authorization` header'}}
    return {
        'openapi': '3.1.0',
        'info': {
            'title': TITLE,
            'version': VERSION,
            'description': (
                'A car inventory. Every route answers with and without a trailing `/`. '
                'Bodies are `application/json` or `application/x-www-form-urlencoded`, '
                'at most 64 KiB; every error is an `application/problem+json` problem '
                '(RFC 9457). `year` is %d to next year (%d now). %s'
                % (cars.YEAR_MIN, hi, _protection_text(writes_protected, reads_protected))),
        },
        'tags': [{'name': 'cars', 'description': 'The inventory'},
                 {'name': 'service', 'description': 'Health and documentation'}],
        'paths': paths,
        'components': components,
        'x-problem-types': [
            {'slug': slug, 'type': '%s#problem-%s' % (DOCS_PATH, slug), 'status': status,
             'description': text}
            for slug, status, text in PROBLEM_TYPES],
    }


def _protection_text(writes_protected, reads_protected):
    if not writes_protected:
        return ('This server has no write protection configured: writes need no token. '
                '(Where a deployment sets `CARS_AUTH_TOKENS` or its SSM parameter, writes '
                'need `Authorization: Bearer <token>`, and its document says so.)')
    if reads_protected:
        return ('Every request to `/api/v1/cars...` on this server needs '
                '`Authorization: Bearer <token>`.')
    return 'Writes on this server need `Authorization: Bearer <token>`; reads are open.'
