"""Reading a request: its body (JSON or form), query parameters, headers, and
the path the client used."""
import json
import urllib.parse

from chalicelib.domain import cars
from chalicelib.http.problems import Problem

MAX_BODY = 64 * 1024
JSON = 'application/json'
FORM = 'application/x-www-form-urlencoded'
BODY_TYPES = (JSON, FORM)


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


class _DuplicateKey(Exception):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs):
    """An object's members as a dict, refusing a name given twice.

    json.loads keeps the last of repeated names, so `{"make": "a", ..., "make":
    "b"}` would silently store b, and a body carrying two ids would create the
    second. Which one the client meant is a guess, as for a repeated form field.
    """
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text):
    try:
        # object_pairs_hook sees every object, at every nesting level.
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise Problem(400, 'the JSON body is nested too deeply', 'malformed-body')
    except ValueError as e:
        raise Problem(400, 'the body is not valid JSON: %s' % e, 'malformed-body')
    except _DuplicateKey as e:
        raise Problem(400, 'the JSON body gives the key %s more than once'
                      % json.dumps(e.key[:100]), 'malformed-body',
                      errors=[{'field': e.key, 'message': 'given more than once'}])


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
