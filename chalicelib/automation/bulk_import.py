"""Bulk import: write a file's valid rows, and the S3 upload handler that reports on them.

Rows without an id are created exactly once per file and line, with the API's
idempotency keys in the namespace `import`.
"""
# hashlib, datetime and time are imported where used: the API loads this
# module for its event wiring, and its cold start should not pay for them.
import json
import logging
import os
import posixpath

from chalicelib import observability
from chalicelib.automation import aws
from chalicelib.automation.files import COLUMNS, FileError, read_rows, validate_rows
from chalicelib.domain import cars, idempotency
from chalicelib.store import get_store

log = logging.getLogger('cars.automation')

IMPORT_PREFIX = 'imports/'
REPORT_PREFIX = 'reports/'
# Bigger files than any inventory (6,561 cars is well under a megabyte).
MAX_IMPORT_BYTES = 50 * 1024 * 1024
WRITE_BATCH = 500
# Time kept back from the Lambda timeout to write the import report.
REPORT_MARGIN_SECONDS = 15

# The pattern's bucket is CARS_BUCKET when app.py is imported, else this
# placeholder. `make package` unsets CARS_BUCKET (deploy/package.py), so the
# packaged rule names the placeholder, and deploy/resources.py puts the
# stack's bucket in its place.
BUCKET_PLACEHOLDER = 'cars-import-bucket'

# S3 -> EventBridge, not Chalice's on_s3_event: on_s3_event configures the
# bucket notification through an API call at deploy time and cannot be
# expressed in `chalice package`'s CloudFormation template; an EventBridge rule can.
IMPORT_EVENT_PATTERN = {
    'source': ['aws.s3'],
    'detail-type': ['Object Created'],
    'detail': {
        'bucket': {'name': [os.environ.get('CARS_BUCKET') or BUCKET_PLACEHOLDER]},
        'object': {'key': [{'prefix': IMPORT_PREFIX}]},
    },
}


def _id_outcome(record):
    """What a create under an idempotency key records (and a retry replays)."""
    return {'id': record['id']}


def import_valid(store, valid, source, progress=None, batch=WRITE_BATCH, deadline=None):
    """Write validated rows; return (counts, row errors).

    Rows with an id are created or replaced with store.put_many, in batches.
    Rows without one are created with store.create (the store assigns the id),
    each in one atomic write with an idempotency key made of `source` (the
    file's identity) and the row's line, so running an interrupted import again
    creates no car twice, wherever it was interrupted.

    Nothing is dropped silently: when the store gives up on some rows
    (WriteIncomplete), or `deadline` (a time.monotonic() value) passes, those
    rows and every row not tried yet are listed as errors and counted in
    `not_written`; the rest of the file is not tried, since a store that keeps
    refusing would only use up the time left.
    """
    import time
    from chalicelib.store.base import WriteIncomplete
    with_id = [(line, fields) for line, fields in valid if 'id' in fields]
    without = [(line, fields) for line, fields in valid if 'id' not in fields]
    counts = {'written': 0, 'created': 0, 'already_created': 0, 'not_written': 0}
    errors = []
    stopped = None

    def give_up(rows, why):
        counts['not_written'] += len(rows)
        errors.extend({'line': line, 'field': 'id' if 'id' in fields else '',
                       'message': 'not written: %s; upload the file again to write it'
                       % why} for line, fields in rows)

    def out_of_time():
        return deadline is not None and time.monotonic() > deadline

    for start in range(0, len(with_id), batch):
        chunk = with_id[start:start + batch]
        if stopped is None and out_of_time():
            stopped = 'the import ran out of time'
        if stopped is not None:
            give_up(chunk, stopped)
            continue
        try:
            store.put_many([{k: f.get(k) for k in COLUMNS} for _, f in chunk],
                           deadline=deadline)
        except WriteIncomplete as e:
            stopped = e.reason
            missing = set(e.unwritten)
            give_up([(line, f) for line, f in chunk if f['id'] in missing], e.reason)
            counts['written'] += sum(1 for _, f in chunk if f['id'] not in missing)
        else:
            counts['written'] += len(chunk)
        if progress:
            progress(len(chunk))
    for line, fields in without:
        if stopped is None and out_of_time():
            stopped = 'the import ran out of time'
        if stopped is not None:
            give_up([(line, fields)], stopped)
            continue
        body = {k: fields[k] for k in cars.FIELDS}
        try:
            outcome, replayed = idempotency.create_once(
                store, '%s#%d' % (source, line), idempotency.fingerprint(body), body,
                _id_outcome, namespace='import')
        except (cars.IdSpaceExhausted, idempotency.IdempotencyError) as e:
            errors.append({'line': line, 'field': 'id', 'message': str(e)})
        else:
            counts['already_created' if replayed else 'created'] += 1
            counts['written'] += 1
        if progress:
            progress(1)
    if stopped is not None:
        log.error('import from %s stopped: %s; %d row(s) not written', source, stopped,
                  counts['not_written'])
    return counts, errors


def import_data(store, name, data, source=None, progress=None, deadline=None):
    """Import a file's bytes, writing the valid rows; return the report dict.

    `status` is `imported`, `imported with errors` (some rows invalid: see
    `errors`), `incomplete` (some valid rows not written, the store refusing
    or the time running out: `not_written`) or `rejected`.
    """
    import hashlib
    started = _now()
    report = {'file': name, 'started_at': started, 'rows': 0, 'valid': 0, 'invalid': 0,
              'written': 0, 'created': 0, 'already_created': 0, 'not_written': 0,
              'errors': []}
    try:
        rows = read_rows(name, data)
    except FileError as e:
        report['errors'] = [{'line': e.line, 'field': '', 'message': e.message}]
        report['status'] = 'rejected'
        report['finished_at'] = _now()
        return report
    valid, errors = validate_rows(rows)
    source = source or 'sha256:' + hashlib.sha256(
        data if isinstance(data, bytes) else data.encode('utf-8')).hexdigest()
    counts, write_errors = import_valid(store, valid, source, progress, deadline=deadline)
    errors.extend(write_errors)
    errors.sort(key=lambda e: e['line'] or 0)
    report.update(counts)
    # A valid row that was not written has an error too, but is not invalid.
    report.update(rows=len(rows), valid=len(valid),
                  invalid=len({e['line'] for e in errors}) - counts['not_written'],
                  errors=errors,
                  status='incomplete' if counts['not_written'] else
                  'imported with errors' if errors else 'imported',
                  finished_at=_now())
    return report


def report_key(object_key):
    relative = object_key[len(IMPORT_PREFIX):] if object_key.startswith(IMPORT_PREFIX) \
        else posixpath.basename(object_key)
    return REPORT_PREFIX + relative + '.json'


def import_object_created(detail, s3=None, store=None, remaining_ms=None):
    """Import the object an S3 "Object Created" EventBridge event names.

    Valid rows are written and invalid ones listed in the report, written to
    reports/<path under imports/>.json: unattended, there is nobody to ask
    whether to refuse the whole file. Returns the report.

    `remaining_ms` is the Lambda's time left (context.get_remaining_time_in_millis());
    the import stops starting writes REPORT_MARGIN_SECONDS (at most a quarter
    of that time) before it runs out, so the report is written and lists
    the rows that were not.
    """
    from urllib.parse import unquote_plus
    bucket = detail['bucket']['name']
    # S3 sends the key URL-encoded, as in a query string: "my cars.csv"
    # arrives as "my+cars.csv", a literal "+" as "%2B", UTF-8 as %XX bytes.
    key = unquote_plus(detail['object']['key'])
    # The lines of this import name the object by its real key, as its report does.
    observability.bind(s3Bucket=bucket, s3Key=key)
    deadline = None
    if remaining_ms is not None:
        import time
        remaining = max(remaining_ms / 1000.0, 0)
        deadline = time.monotonic() + remaining - min(REPORT_MARGIN_SECONDS, remaining / 4)
    if not key.startswith(IMPORT_PREFIX) or key.endswith('/'):
        log.info('ignoring s3://%s/%s: not a file under %s', bucket, key, IMPORT_PREFIX)
        return None
    s3 = s3 or aws.client('s3')
    store = store or get_store()
    head = s3.head_object(Bucket=bucket, Key=key)
    if head['ContentLength'] > MAX_IMPORT_BYTES:
        report = {'file': key, 'status': 'rejected', 'errors': [
            {'line': None, 'field': '', 'message': 'the file is %d bytes; at most %d are '
             'imported' % (head['ContentLength'], MAX_IMPORT_BYTES)}]}
    else:
        data = s3.get_object(Bucket=bucket, Key=key)['Body'].read()
        # The object's ETag names its content: the same upload retried (an
        # EventBridge redelivery, a Lambda retry) resumes instead of duplicating.
        source = 's3://%s/%s@%s' % (bucket, key, head.get('ETag', '').strip('"'))
        report = import_data(store, key, data, source=source, deadline=deadline)
    report['bucket'] = bucket
    s3.put_object(Bucket=bucket, Key=report_key(key), ContentType='application/json',
                  Body=json.dumps(report, indent=2, ensure_ascii=False).encode('utf-8'))
    summary = {k: report.get(k) for k in ('status', 'rows', 'written', 'invalid', 'not_written')}
    observability.count('ImportRowsWritten', report.get('written') or 0)
    observability.count('ImportRowsRefused', (report.get('invalid') or 0)
                        + (report.get('not_written') or 0))
    if report['errors']:
        log.warning('imported s3://%s/%s, refusing rows (see %s): %s', bucket, key,
                    report_key(key), summary)
    else:
        log.info('imported s3://%s/%s: %s', bucket, key, summary)
    return report


def _now():
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
