"""Listing cursors: the page's last id, bound to its filters, and the Link to
the next page."""
import base64
import json
import urllib.parse

from chalicelib.domain import cars
from chalicelib.http.problems import Problem

# A cursor is the page's last id and a digest of its filters, with a check
# value that catches accidents: a truncated or altered cursor, or one used
# with other filters, gets a 400 instead of a silently wrong page. The key is
# public (it is in this file), so the check proves nothing about who made a
# cursor, and needs not: a hand-made cursor can only choose where a listing
# starts, within the same filters, and shows nothing the client could not
# list anyway. A per-deployment secret would buy nothing but a setting to keep.
_CURSOR_KEY = b'cars-api-cursor-v1'
_CHECK_SIZE = 12


# hashlib and hmac are imported where used: only listings past their first
# page need them, and a cold start pays for what its request uses.

def _check_value(payload):
    import hashlib
    import hmac
    return hmac.new(_CURSOR_KEY, payload, hashlib.sha256).digest()[:_CHECK_SIZE]


def _filters_digest(filters):
    """A digest of the filters, to bind a cursor to the filters it was made with.

    What is hashed is JSON, not text joined with `&` and `=`: a filter value
    may hold those (`make=x%26model%3Dy` is one make, "x&model=y"), and a
    cursor must never pass for another set of filters that prints the same.
    """
    import hashlib
    described = json.dumps([sorted(filters.text.items()), filters.year_min, filters.year_max],
                           ensure_ascii=True, separators=(',', ':'))
    return hashlib.sha256(described.encode('ascii')).hexdigest()[:16]


def make_cursor(after, filters):
    payload = json.dumps([after, _filters_digest(filters)], separators=(',', ':')).encode()
    token = payload + _check_value(payload)
    return base64.urlsafe_b64encode(token).decode('ascii').rstrip('=')


def read_cursor(cursor, filters):
    """The id the cursor continues after; 400 if it was altered or mismatched."""
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


def next_link(path, params, cursor):
    query = {k: v for k, v in params.items() if k != 'cursor'}
    query['cursor'] = cursor
    return '<%s?%s>; rel="next"' % (path, urllib.parse.urlencode(query))
