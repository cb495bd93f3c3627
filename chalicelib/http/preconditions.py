"""ETags and the conditional headers: If-Match and If-None-Match on reads and
writes, and a car as a response with its ETag."""
from chalice import Response

from chalicelib.domain import cars
from chalicelib.http.problems import Problem
from chalicelib.http.request import JSON, header_value

# The most entity tags an If-Match or If-None-Match field may list. A client
# holds one car's tag, or a few while it retries; a long list is a mistake or
# a probe. Unbounded, the stores differed: the DynamoDB store puts at most 50
# revisions in its condition expression (an IN list is bounded there too) and
# so ignored the rest, sqlite compared them all. Refused (400) before anything
# is read or written, the same on both.
MAX_TAGS = 50


def etag(record):
    return '"%d-%s"' % (record['version'], record['rev'])


def car_response(record, status=200, headers=None):
    out = {'ETag': etag(record), 'Content-Type': JSON}
    out.update(headers or {})
    return Response(body=cars.public(record), status_code=status, headers=out)


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
    if len(tags) > MAX_TAGS:
        raise Problem(400, '%s lists %d entity tags; at most %d are accepted'
                      % (name, len(tags), MAX_TAGS), 'invalid-precondition',
                      errors=[{'field': name, 'message': 'at most %d entity tags' % MAX_TAGS}])
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
