"""The OpenAPI 3.1 document, built from the msgspec types that validate requests
(chalicelib/domain/cars.py), the problem catalogue (problems.py) and this
server's settings: which requests need a bearer token.
"""
import json

from chalicelib.domain import cars
from chalicelib.http import auth, paths
from chalicelib.http.problems import CATALOGUE, PROBLEM, PROBLEM_TYPES, type_uri
from chalicelib.http.request import FORM, JSON

TITLE = 'Car inventory API'
VERSION = '1.0.0'

_cache = {}  # settings -> (document, its JSON text)


def _settings():
    """What the document depends on besides the code: the year, and who needs a token."""
    writes = auth.enabled()
    return cars.year_max(), writes, writes and auth.reads_protected()


def _current():
    key = _settings()
    built = _cache.get(key)
    if built is None:
        # Settings change rarely (a new year, another stage): keep only the current ones.
        _cache.clear()
        doc = _build(*key[1:])
        built = _cache[key] = (doc, json.dumps(doc, separators=(',', ':'), ensure_ascii=False))
    return built


def document():
    """The OpenAPI document as a dict."""
    return _current()[0]


def document_json():
    return _current()[1]


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
    components['IfNoneMatchStar'] = {
        'type': 'string', 'enum': ['*'],
        # The member's name in generated clients (openapi-python-client and others).
        'x-enum-varnames': ['STAR'],
        'description': 'The one value `If-None-Match` may have on a write: `*`, "only '
                       'where no car exists"'}
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
                     'description': '`about:blank` or `%s`, slug one of %s'
                                    % (type_uri('<slug>'), slugs)},
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
LOCATION = _header('The URL of the car: `%s`' % paths.car('{id}'))
LINK = _header('`<...>; rel="next"` when there is a next page (the same URL as `next`)')
RETRY_AFTER = _header('Seconds to wait before retrying', {'type': 'string'})
WWW_AUTHENTICATE = _header('`Bearer realm="cars"`')
REPLAYED = _header('`true` when this is the recorded response to an earlier request with '
                   'the same `Idempotency-Key`; absent otherwise', {'const': 'true'})
ALLOW = _header('The methods this path supports')


def _problem(status, description):
    return {'description': description,
            'content': {PROBLEM: {'schema': {'$ref': '#/components/schemas/Problem'}}}}


def _problems(*statuses):
    out = {}
    for status in statuses:
        out[str(status)] = _problem(status, CATALOGUE[status][0])
    if '401' in out:
        out['401']['headers'] = {'WWW-Authenticate': WWW_AUTHENTICATE}
    return out


def _car_response(description, *headers):
    out = {'description': description,
           'headers': {'ETag': ETAG},
           'content': {JSON: {'schema': {'$ref': '#/components/schemas/Car'}}}}
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
            JSON: {'schema': {'$ref': ref}},
            FORM: {'schema': {'$ref': ref + 'Form'}},
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
                   'is one list; `*` beside tags is refused (400), and so are more than 50 tags.',
    'schema': {'type': 'string'},
}
IF_NONE_MATCH_READ = {
    'name': 'If-None-Match', 'in': 'header', 'required': False,
    'description': '304 Not Modified when the car\'s current `ETag` is one of these (at most 50)',
    'schema': {'type': 'string'},
}


IF_NONE_MATCH_STAR = '#/components/schemas/IfNoneMatchStar'


def _if_none_match_star(description):
    """`If-None-Match` on a write, where only `*` is accepted.

    A string enum rather than `{"const": "*"}`: openapi-python-client refuses a
    literal type in a header and skips the whole operation. Not a `pattern`
    either: Schemathesis's coverage phase cannot build a header value holding
    `*` from a pattern and sends `0` as "schema-valid" instead.
    """
    return {'name': 'If-None-Match', 'in': 'header', 'required': False,
            'description': description, 'schema': {'$ref': IF_NONE_MATCH_STAR}}


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


def _head(get):
    """The HEAD operation of a GET one: its parameters, security, statuses and
    headers, and no body. Each response keeps its media types (they are the
    `Content-Type` sent) without a schema, so clients read no body."""
    op = dict(get, operationId=get['operationId'] + 'Head',
              summary='%s: status and headers only' % get['summary'],
              description='The same as GET, without the body.')
    op['responses'] = {
        status: dict(response, content={media: {} for media in response['content']})
        if 'content' in response else response
        for status, response in get['responses'].items()}
    return op


def _with_head(path_items):
    """Every path that has GET has HEAD too (the app routes both to one view)."""
    for item in path_items.values():
        if 'get' in item:
            item['head'] = _head(item['get'])
    return path_items


def _build(writes_protected, reads_protected):
    write_problems = (401, 403) if writes_protected else ()
    read_problems = (401, 403) if reads_protected else ()
    write_security = WRITE if writes_protected else None
    read_security = WRITE if reads_protected else None
    hi = cars.year_max()

    def update(op_id, summary, description):
        # POST and PATCH on a car are the same partial update.
        return _op(op_id, summary, dict({'200': _car_response('The updated car')},
                                        **_problems(400, *write_problems, 404, 412, 413, 415,
                                                    422, 503)),
                   description=description, parameters=[IF_MATCH, IF_NONE_MATCH_WRITE],
                   body=_body('CarPatch', 'The fields to change'), security=write_security)
    path_items = {
        '/': {'get': _op(
            'hello', 'The seed\'s greeting', {
                '200': {'description': '`Hello, world`',
                        'content': {'text/plain': {'schema': {'const': 'Hello, world'}}}}},
            tags=['service'])},
        paths.HEALTH: {'get': _op(
            'health', 'Liveness and store reachability', dict({
                '200': {'description': 'The store answered',
                        'content': {JSON: {
                            'schema': {'$ref': '#/components/schemas/Health'}}}}},
                **_problems(503)), tags=['service'])},
        paths.CARS: {
            'get': _op(
                'listCars', 'List cars, one page at a time', dict({
                    '200': {
                        'description': 'One page, in ascending `id` order',
                        'headers': {'Link': LINK},
                        'content': {JSON: {
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
        paths.CAR: {
            'parameters': [CAR_ID],
            'get': _op(
                'getCar', 'Read one car', dict({
                    '200': _car_response('The car'),
                    '304': {'description': 'Not modified: `If-None-Match` matched',
                            'headers': {'ETag': ETAG}}},
                    **_problems(400, *read_problems, 404, 503)),
                parameters=[IF_NONE_MATCH_READ],
                security=read_security),
            'post': update('updateCarPost', 'Partially update a car (the seed\'s update)',
                           'The same as PATCH.'),
            'patch': update('updateCar', 'Partially update a car',
                            'Only the fields given change; `null` clears `trans` or `color`.'),
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
        paths.OPENAPI: {'get': _op(
            'openapi', 'This document', {
                '200': {'description': 'The OpenAPI 3.1 document',
                        'content': {JSON: {'schema': {'type': 'object'}}}}},
            tags=['service'])},
        paths.DOCS: {'get': _op(
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
        'paths': _with_head(path_items),
        'components': components,
        'x-problem-types': [
            {'slug': slug, 'type': type_uri(slug), 'status': status, 'description': text}
            for slug, status, text in PROBLEM_TYPES],
    }


def _protection_text(writes_protected, reads_protected):
    if not writes_protected:
        return ('This server has no write protection configured: writes need no token. '
                '(Where a deployment sets `CARS_AUTH_TOKENS` or its SSM parameter, writes '
                'need `Authorization: Bearer <token>`, and its document says so.)')
    if reads_protected:
        return ('Every request to `%s...` on this server needs '
                '`Authorization: Bearer <token>`.' % paths.CARS)
    return 'Writes on this server need `Authorization: Bearer <token>`; reads are open.'
