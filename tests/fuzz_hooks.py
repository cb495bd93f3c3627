"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS).

Two request values are meaningful only in the state the server issued them
for, which no schema can describe; the hooks keep generated values from
posing as valid ones there. Only schema-valid values are touched, so a case
that breaks the schema still breaks it in the same way.

- `cursor`: an opaque token, valid only as the `next` of a page listed with the
  same filters. Random ones are dropped (the contract tests cover cursors).
- `Idempotency-Key`: the client's promise that one key means one request.
  Generated keys repeat across different bodies, which the API rightly
  refuses (422); a unique suffix keeps each generated key to one request.
"""
import re
import uuid

import schemathesis

_VALID_KEY = re.compile(r'[\x20-\x7e]{1,255}')


def _header_name(headers, name):
    for key in headers:
        if key.lower() == name.lower():
            return key
    return None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    path = case.operation.path
    method = case.operation.method.upper()
    if path == '/api/v1/cars' and method in ('GET', 'HEAD') and case.query:
        cursor = case.query.get('cursor')
        if isinstance(cursor, str) and cursor:
            case.query = {k: v for k, v in case.query.items() if k != 'cursor'}
    if path == '/api/v1/cars' and method == 'POST' and case.headers:
        name = _header_name(case.headers, 'Idempotency-Key')
        key = case.headers.get(name) if name else None
        if isinstance(key, str) and _VALID_KEY.fullmatch(key):
            headers = dict(case.headers)
            headers[name] = '%s-%s' % (key[:222], uuid.uuid4().hex)
            case.headers = headers
