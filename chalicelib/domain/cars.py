"""The car rules: fields, validation, id rules, versions and listing filters.

No framework and no store: every entry point validates a car through
`validate_new` or `validate_patch`, and a listing through `validate_list_params`.
The field types are msgspec types, which also give the OpenAPI document its
schemas (chalicelib/http/openapi.py).
"""
import os
import re
import time
import unicodedata

FIELDS = ('make', 'model', 'year', 'trans', 'color')
OPTIONAL_FIELDS = ('trans', 'color')
TEXT_FILTERS = ('make', 'model', 'trans', 'color')
YEAR_MIN = 1886
ID_DIGITS = '123456789'
ID_SPACE = len(ID_DIGITS) ** 4  # 6,561 assignable ids

# Route ids: exactly four ASCII digits (the seed's [0-9][0-9][0-9][0-9]).
_ROUTE_ID = re.compile(r'[0-9]{4}', re.ASCII)
# Ids a client may choose, and the only ones the server assigns.
_ASSIGNABLE_ID = re.compile(r'[1-9]{4}', re.ASCII)

# Characters no car field may hold: C0/C1 controls (category Cc) and the
# invisible format characters (category Cf, Unicode 15.1): zero-width spaces
# and joiners, the byte order mark, bidirectional overrides that make
# "a\u202egnp.exe" display as "aexe.png", tag characters. A make that looks
# blank, or unlike what it holds, is refused rather than stored.
# Lone surrogates (which cannot be encoded as UTF-8, so cannot be stored or
# returned) are refused by `_is_text` instead of the patterns: they are not
# Unicode scalar values, and standard JSON Schema regex engines reject a
# pattern that names them.
_CC = ((0x00, 0x1f), (0x7f, 0x9f))
_CF = ((0xad, 0xad), (0x600, 0x605), (0x61c, 0x61c), (0x6dd, 0x6dd), (0x70f, 0x70f),
       (0x890, 0x891), (0x8e2, 0x8e2), (0x180e, 0x180e), (0x200b, 0x200f),
       (0x202a, 0x202e), (0x2060, 0x2064), (0x2066, 0x206f), (0xfeff, 0xfeff),
       (0xfff9, 0xfffb), (0x110bd, 0x110bd), (0x110cd, 0x110cd), (0x13430, 0x1343f),
       (0x1bca0, 0x1bca3), (0x1d173, 0x1d17a), (0xe0001, 0xe0001), (0xe0020, 0xe007f))


def _class_range(lo, hi):
    """A character class member for lo..hi that Python's re, JSON Schema validators
    and ECMA-262 (in its Unicode mode) read alike.

    Below U+10000 an escape (\\uXXXX, \\xXX); above, the character itself:
    Python spells an escape there \\U0001XXXX and ECMA-262 \\u{1XXXX}, and
    neither reads the other's.
    """
    def one(cp):
        if cp > 0xffff:
            return chr(cp)
        return '\\x%02x' % cp if cp <= 0xff else '\\u%04x' % cp
    return one(lo) if lo == hi else '%s-%s' % (one(lo), one(hi))


_BAD = ''.join(_class_range(lo, hi) for lo, hi in _CC + _CF)


def _is_text(value):
    """False for strings holding lone surrogates (invalid JSON text for any other reader)."""
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def _trimmed_text(min_len, max_len):
    """A regex for "min_len..max_len characters after trimming white space".

    Expressed as a pattern (not minLength/maxLength) so that the published
    schema says exactly what the server accepts: leading and trailing white
    space are allowed and trimmed, and only the trimmed length counts.
    """
    edge = '[^\\s%s]' % _BAD
    inner = '[^%s]' % _BAD
    if max_len == 1:
        core = edge
    else:
        core = '%s(?:%s{0,%d}%s)?' % (edge, inner, max_len - 2, edge)
    if min_len == 0:
        core = '(?:%s)?' % core
    return '^\\s*%s\\s*$' % core


MAKE_MODEL_PATTERN = _trimmed_text(1, 64)
TRANS_COLOR_PATTERN = _trimmed_text(0, 32)
ID_PATTERN = '^[1-9]{4}$'
FILTER_PATTERN = '^[^%s]*$' % _BAD


def _full_match(pattern, value):
    """True when `pattern` matches the whole of `value`.

    The patterns are published in the OpenAPI document, where `^...$` means
    the whole string. Python's `$` (and msgspec's pattern check, a search)
    also matches before a final newline, so "2015\\n" would pass as a year:
    every server-side check of a pattern goes through here.
    """
    return re.fullmatch(pattern, value) is not None


def year_max(today=None):
    return (today.year if today else time.localtime().tm_year) + 1


def year_string_pattern(lo, hi):
    """A regex for decimal strings whose value is within lo..hi (leading zeros allowed)."""
    alternatives = []
    # Split [lo, hi] into runs that share a prefix and vary in the last k digits.
    n = lo
    while n <= hi:
        k = 0
        while n % (10 ** (k + 1)) == 0 and n + 10 ** (k + 1) - 1 <= hi:
            k += 1
        prefix = str(n)[:len(str(n)) - k] if k else str(n)
        alternatives.append(prefix + '[0-9]' * k)
        n += 10 ** k
    return '^0*(?:%s)$' % '|'.join(alternatives)


def is_route_id(value):
    return isinstance(value, str) and _ROUTE_ID.fullmatch(value) is not None


def is_assignable_id(value):
    return isinstance(value, str) and _ASSIGNABLE_ID.fullmatch(value) is not None


def all_assignable_ids():
    d = ID_DIGITS
    return [a + b + c + e for a in d for b in d for c in d for e in d]


def new_revision():
    """A fresh, unguessable revision token; the ETag is built from it."""
    return os.urandom(8).hex()  # what secrets.token_hex does, without its imports


# --- errors -----------------------------------------------------------------

class CarError(Exception):
    """Base of the domain's errors; HTTP and automation map them to responses."""


class InvalidCar(CarError):
    def __init__(self, errors):
        super().__init__('; '.join('%s: %s' % (e['field'], e['message']) for e in errors))
        self.errors = errors


class InvalidQuery(InvalidCar):
    """Listing parameters that break the rules (a 400: the URL, not a car, is wrong)."""


class CarNotFound(CarError):
    def __init__(self, car_id):
        super().__init__('car %s not found' % car_id)
        self.car_id = car_id


class CarExists(CarError):
    def __init__(self, car_id):
        super().__init__('car %s already exists' % car_id)
        self.car_id = car_id


class IdSpaceExhausted(CarError):
    def __init__(self):
        super().__init__('all %d assignable ids (1111-9999, digits 1-9) are taken; '
                         'delete a car or create with an id of your choice '
                         'that is free' % ID_SPACE)


class VersionMismatch(CarError):
    """If-Match / If-None-Match did not hold: nothing was written."""

    def __init__(self, car_id, detail=None):
        super().__init__(detail or 'car %s has changed since that version' % car_id)
        self.car_id = car_id


# --- validation ---------------------------------------------------------------

# msgspec is imported where used: a read of one car never needs it.
_types_cache = {}


def _field_types():
    """msgspec types of the writable fields, and their messages, for this calendar year."""
    return _field_rules()[:2]


def _field_rules():
    """(msgspec types, messages, patterns) of the writable fields, for this calendar year.

    The patterns are the ones in the types, for the full matches msgspec does not do.
    """
    hi = year_max()
    cached = _types_cache.get(hi)
    if cached:
        return cached
    from typing import Annotated, Optional, Union

    import msgspec
    Meta = msgspec.Meta
    text = Annotated[str, Meta(pattern=MAKE_MODEL_PATTERN, description=(
        '1-64 characters after trimming white space, counted in Unicode NFC form; '
        'no control or invisible format characters'))]
    opt = Optional[Annotated[str, Meta(pattern=TRANS_COLOR_PATTERN, description=(
        'At most 32 characters after trimming white space, counted in Unicode NFC form; '
        'no control or invisible format characters; blank or null reads as null'))]]
    year_pattern = year_string_pattern(YEAR_MIN, hi)
    year = Union[
        Annotated[int, Meta(ge=YEAR_MIN, le=hi)],
        Annotated[str, Meta(pattern=year_pattern, description=(
            'A string of digits, accepted for form posts and old clients'))],
    ]
    car_id = Annotated[str, Meta(pattern=ID_PATTERN, description=(
        'Four digits 1-9; the server assigns one when absent'))]
    types = {'id': car_id, 'make': text, 'model': text, 'year': year,
             'trans': opt, 'color': opt}
    text_rule = ('after trimming white space (counted in Unicode NFC form), without '
                 'control or invisible format characters')
    messages = {
        'id': 'must be a string of exactly 4 digits 1-9 (e.g. "8273")',
        'make': 'must be a string of 1-64 characters ' + text_rule,
        'model': 'must be a string of 1-64 characters ' + text_rule,
        'year': 'must be an integer (or a string of digits) from %d to %d' % (YEAR_MIN, hi),
        'trans': 'must be a string of at most 32 characters %s, or null' % text_rule,
        'color': 'must be a string of at most 32 characters %s, or null' % text_rule,
    }
    patterns = {'id': ID_PATTERN, 'make': MAKE_MODEL_PATTERN, 'model': MAKE_MODEL_PATTERN,
                'year': year_pattern, 'trans': TRANS_COLOR_PATTERN,
                'color': TRANS_COLOR_PATTERN}
    _types_cache.clear()
    _types_cache[hi] = (types, messages, patterns)
    return types, messages, patterns


def _check_field(name, value, rules):
    """Return (normalized value, error message or None)."""
    import msgspec
    types, messages, patterns = rules
    if name == 'year' and isinstance(value, float) and value.is_integer():
        # JSON has one number type: 2015.0 is the integer 2015 (as JSON Schema says).
        value = int(value)
    if isinstance(value, str):
        if not _is_text(value):
            return None, messages[name]
        # Normalize before checking: the limits are on the text as stored, and
        # NFC can lengthen text (U+FB2C is three characters in NFC).
        value = unicodedata.normalize('NFC', value)
    try:
        msgspec.convert(value, types[name], strict=True)
    except msgspec.ValidationError:
        return None, messages[name]
    if isinstance(value, str) and not _full_match(patterns[name], value):
        return None, messages[name]
    if name == 'year':
        return int(value), None
    if isinstance(value, str):
        value = value.strip()
        if name in OPTIONAL_FIELDS and value == '':
            value = None
    return value, None


def _field_errors(data, allowed):
    if not isinstance(data, dict):
        return [{'field': '', 'message': 'the body must be a JSON object (or a form) of car fields'}]
    return [{'field': str(k), 'message': 'unknown field; allowed fields are %s'
             % ', '.join(allowed)}
            for k in data if k not in allowed]


def validate_new(data, allow_id=True):
    """Validate a whole car (create or replace). Return the normalized fields.

    Raises InvalidCar listing every bad field at once.
    """
    return _validate(data, (('id',) if allow_id else ()) + FIELDS, partial=False)


def validate_patch(data):
    """Validate a partial update: only the fields given; null clears an optional one."""
    return _validate(data, FIELDS, partial=True)


def _validate(data, allowed, partial):
    errors = _field_errors(data, allowed)
    if errors and not isinstance(data, dict):
        raise InvalidCar(errors)
    rules = _field_rules()
    out = {}
    for name in allowed:
        if name not in data:
            if partial:
                continue
            if name in ('make', 'model', 'year'):
                errors.append({'field': name, 'message': 'is required'})
            elif name in OPTIONAL_FIELDS:
                out[name] = None
            continue
        value, problem = _check_field(name, data[name], rules)
        if problem:
            errors.append({'field': name, 'message': problem})
        else:
            out[name] = value
    if errors:
        raise InvalidCar(errors)
    return out


def public(record):
    """The representation clients see: the six fields, always all of them."""
    return {'id': record['id'], 'make': record['make'], 'model': record['model'],
            'year': record['year'], 'trans': record.get('trans'),
            'color': record.get('color')}


def search_key(value):
    """The case-insensitive form stored beside a text field, for exact filters."""
    return None if value is None else unicodedata.normalize('NFC', value).casefold()


# --- listing ------------------------------------------------------------------

LIMIT_DEFAULT = 100
LIMIT_MAX = 1000
FILTER_PARAMS = TEXT_FILTERS + ('year', 'year_min', 'year_max')
LIST_PARAMS = FILTER_PARAMS + ('limit', 'cursor')
INT_PARAMS = ('year', 'year_min', 'year_max', 'limit')


class Filters(object):
    """Normalized listing filters: text filters are casefolded, years are ints."""

    __slots__ = ('text', 'year_min', 'year_max')

    def __init__(self, text=None, year_min=None, year_max=None):
        self.text = text or {}
        self.year_min = year_min
        self.year_max = year_max

    def matches(self, record):
        for name, wanted in self.text.items():
            if search_key(record.get(name)) != wanted:
                return False
        if self.year_min is not None and record['year'] < self.year_min:
            return False
        if self.year_max is not None and record['year'] > self.year_max:
            return False
        return True

    def is_empty(self):
        return not self.text and self.year_min is None and self.year_max is None


_list_types_cache = {}


def list_param_types():
    """The listing query parameters: name -> (msgspec type, rule), for this year.

    One definition for `validate_list_params` and the OpenAPI document. Query
    values arrive as strings; the integer ones are decimal digits only.
    """
    hi = year_max()
    cached = _list_types_cache.get(hi)
    if cached:
        return cached
    from typing import Annotated

    import msgspec
    Meta = msgspec.Meta
    text_rule = ('at most 64 characters (counted in Unicode NFC form), without control or '
                 'invisible format characters (matched exactly, ignoring case)')
    text = Annotated[str, Meta(max_length=64, pattern=FILTER_PATTERN)]
    year = Annotated[int, Meta(ge=YEAR_MIN, le=hi)]
    types = {name: (text, text_rule) for name in TEXT_FILTERS}
    types['year'] = (year, 'a whole number from %d to %d' % (YEAR_MIN, hi))
    types['year_min'] = (year, 'a whole number from %d to %d; cars from this year on'
                         % (YEAR_MIN, hi))
    types['year_max'] = (year, 'a whole number from %d to %d; cars up to this year'
                         % (YEAR_MIN, hi))
    types['limit'] = (Annotated[int, Meta(ge=1, le=LIMIT_MAX)],
                      'a whole number from 1 to %d (default %d): the most cars on a page'
                      % (LIMIT_MAX, LIMIT_DEFAULT))
    types['cursor'] = (Annotated[str, Meta(min_length=1)],
                       'the `next` value of the previous page, with the same filters')
    _list_types_cache.clear()
    _list_types_cache[hi] = types
    return types


def _list_param(name, value, types, errors):
    """Check one query value against its type; return it (an int for numbers) or None."""
    import msgspec
    typ, rule = types[name]
    if name in INT_PARAMS:
        if not isinstance(value, str) or not re.fullmatch(r'[0-9]{1,9}', value, re.ASCII):
            errors.append({'field': name, 'message': 'must be ' + rule})
            return None
        value = int(value)
    elif name in TEXT_FILTERS and isinstance(value, str):
        # As for car fields, the limits apply to the NFC form.
        value = unicodedata.normalize('NFC', value)
    try:
        value = msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError:
        value = None
    if (value is None or isinstance(value, str) and not _is_text(value)
            or name in TEXT_FILTERS and not _full_match(FILTER_PATTERN, value)):
        errors.append({'field': name, 'message': 'must be ' + rule})
        return None
    return value


def validate_list_params(params):
    """Validate listing query parameters. Return (filters, limit, cursor or None).

    `params` maps names to single strings; unknown parameters are rejected, as
    unknown body fields are, so a typo never silently lists everything.
    """
    errors = [{'field': k, 'message': 'unknown query parameter; allowed are %s'
               % ', '.join(LIST_PARAMS)} for k in params if k not in LIST_PARAMS]
    types = list_param_types()
    text = {}
    for name in TEXT_FILTERS:
        if name in params:
            value = _list_param(name, params[name], types, errors)
            if value is not None:
                # A blank value matches cars that have none (null trans/color).
                text[name] = search_key(value.strip()) or None
    years = {}
    for name in ('year', 'year_min', 'year_max'):
        if name in params:
            years[name] = _list_param(name, params[name], types, errors)
    limit = LIMIT_DEFAULT
    if 'limit' in params:
        limit = _list_param('limit', params['limit'], types, errors)
    cursor = params.get('cursor')
    if cursor is not None:
        cursor = _list_param('cursor', cursor, types, errors)
    if errors:
        raise InvalidQuery(errors)
    lo = years.get('year_min')
    up = years.get('year_max')
    if years.get('year') is not None:
        y = years['year']
        lo = y if lo is None else max(lo, y)
        up = y if up is None else min(up, y)
    return Filters(text, lo, up), limit, cursor
