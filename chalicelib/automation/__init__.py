"""Event-driven automation: queue ingest, bulk import, change events, export.

The handlers in app.py translate Lambda events into calls here; the CLI
(chalicelib/cli.py) uses the same file reading, validation and writing. Nothing
heavy is imported at module level: boto3 is imported inside the functions that
talk to AWS, so the API's cold start never pays for automation.

Exactly-once writes use chalicelib.domain.idempotency (the API's Idempotency-Key
machinery) with their own namespaces: `sqs` keyed by the SQS message id, and
`import` keyed by the imported file and row.
"""
# csv, hashlib and datetime are imported where used: the API imports this
# module for its event wiring, and its cold start should not pay for them.
import io
import json
import logging
import os
import posixpath

from chalicelib import config, observability
from chalicelib.domain import cars, events, idempotency
from chalicelib.store import get_store

log = logging.getLogger('cars.automation')

IMPORT_PREFIX = 'imports/'
REPORT_PREFIX = 'reports/'
EXPORT_PREFIX = 'exports/'
COLUMNS = ('id',) + cars.FIELDS
CSV_EXTENSIONS = ('.csv',)
JSONL_EXTENSIONS = ('.jsonl', '.ndjson')
# Bigger files than any inventory (6,561 cars is well under a megabyte).
MAX_IMPORT_BYTES = 50 * 1024 * 1024
WRITE_BATCH = 500
# Time kept back from the Lambda timeout to write the import report.
REPORT_MARGIN_SECONDS = 15
SNS_BATCH = 10

# Placeholders the deployment template replaces with the real resources; a
# packager run with CARS_BUCKET set gets the real bucket name in the pattern.
BUCKET_PLACEHOLDER = 'cars-import-bucket'
STREAM_ARN_PLACEHOLDER = ('arn:aws:dynamodb:us-east-1:123456789012:table/cars/'
                          'stream/1970-01-01T00:00:00.000')

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


def bucket_name():
    name = os.environ.get('CARS_BUCKET')
    if not name:
        raise config.ConfigError('CARS_BUCKET must name the import/export bucket')
    return name


def topic_arn():
    arn = os.environ.get('CARS_EVENTS_TOPIC_ARN')
    if not arn:
        raise config.ConfigError('CARS_EVENTS_TOPIC_ARN must name the change events topic')
    return arn


def _aws_client(service):
    import boto3
    return boto3.client(service)


# --- files: reading, validating, writing ----------------------------------------------

class FileError(Exception):
    """The file as a whole cannot be read (format, encoding, header)."""

    def __init__(self, message, line=None):
        super().__init__(message if line is None else 'line %d: %s' % (line, message))
        self.line = line
        self.message = message


def file_format(name):
    lower = name.lower()
    if lower.endswith(CSV_EXTENSIONS):
        return 'csv'
    if lower.endswith(JSONL_EXTENSIONS):
        return 'jsonl'
    raise FileError('unsupported file type %r: name a .csv or .jsonl (.ndjson) file'
                    % posixpath.basename(name))


def _text(data):
    if isinstance(data, str):
        return data
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b'\n') + 1
        raise FileError('not valid UTF-8 (byte %d)' % e.start, line)


def read_rows(name, data):
    """Parse a CSV or JSON Lines file into [(line number, row dict)].

    A row that cannot be parsed at all becomes (line, FileError). Raises
    FileError when the file as a whole is unreadable (type, encoding, header).
    """
    fmt = file_format(name)
    text = _text(data)
    return _csv_rows(text) if fmt == 'csv' else _jsonl_rows(text)


def _csv_rows(text):
    import csv
    reader = csv.reader(io.StringIO(text, newline=''), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise FileError('unreadable CSV header: %s' % e, 1)
    if header is None:
        return []
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise FileError('unknown column(s) %s in the header; the columns are %s'
                        % (', '.join(repr(h) for h in unknown), ', '.join(COLUMNS)), 1)
    if len(set(header)) != len(header):
        raise FileError('a column is named twice in the header', 1)
    missing = [h for h in ('make', 'model', 'year') if h not in header]
    if missing:
        raise FileError('the header lacks the required column(s) %s' % ', '.join(missing), 1)
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            rows.append((start, FileError('unreadable CSV: %s' % e)))
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            rows.append((start, FileError('has %d cells; the header has %d'
                                          % (len(cells), len(header)))))
            continue
        row = dict(zip(header, cells))
        # An empty id cell means "assign one", as an absent id does in JSON.
        if row.get('id', None) is not None and row['id'].strip() == '':
            del row['id']
        rows.append((start, row))


def _jsonl_rows(text):
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            rows.append((number, FileError('not valid JSON: %s' % e)))
            continue
        if not isinstance(row, dict):
            rows.append((number, FileError('must be a JSON object of car fields')))
            continue
        rows.append((number, row))
    return rows


def validate_rows(rows):
    """Split parsed rows into ([(line, fields)], [{"line", "field", "message"}])."""
    valid, errors = [], []
    for line, row in rows:
        if isinstance(row, FileError):
            errors.append({'line': line, 'field': '', 'message': row.message})
            continue
        try:
            valid.append((line, cars.validate_new(row)))
        except cars.InvalidCar as e:
            errors.extend({'line': line, 'field': err['field'], 'message': err['message']}
                          for err in e.errors)
    return valid, errors


def format_errors(errors, limit=50):
    lines = ['line %d: %s%s' % (e['line'], e['field'] + ': ' if e['field'] else '', e['message'])
             for e in errors[:limit]]
    if len(errors) > limit:
        lines.append('... and %d more' % (len(errors) - limit))
    return '\n'.join(lines)


def write_rows(out, records, fmt):
    """Write public cars to a text stream as CSV (with header) or JSON Lines."""
    import csv
    if fmt == 'csv':
        writer = csv.writer(out, lineterminator='\n')
        writer.writerow(COLUMNS)
        for r in records:
            car = cars.public(r)
            writer.writerow(['' if car[c] is None else car[c] for c in COLUMNS])
    else:
        for r in records:
            out.write(json.dumps(cars.public(r), ensure_ascii=False, separators=(',', ':')))
            out.write('\n')


def all_cars(store, page=1000):
    """Every car, in id order, read page by page."""
    after = None
    while True:
        records, more = store.list(cars.Filters(), after, page)
        for r in records:
            yield r
        if not more or not records:
            return
        after = records[-1]['id']


# --- bulk import ----------------------------------------------------------------------

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
    s3 = s3 or _aws_client('s3')
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


# --- SQS ingest ----------------------------------------------------------------------------

class BadMessage(Exception):
    def __init__(self, errors):
        super().__init__('; '.join('%s: %s' % (e['field'] or 'body', e['message'])
                                   for e in errors))
        self.errors = errors


def _message_car(body):
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError) as e:
        raise BadMessage([{'field': '', 'message': 'the body is not valid JSON: %s' % e}])
    try:
        return cars.validate_new(data)
    except cars.InvalidCar as e:
        raise BadMessage(e.errors)


def ingest_one(store, message_id, body):
    """Write the car one message carries, once per message id; return the car's id."""
    fields = _message_car(body)
    car = {k: fields[k] for k in cars.FIELDS}
    car_id = fields.get('id')
    fp = idempotency.fingerprint(dict(car, id=car_id))
    if car_id is None:
        # The car and the message's outcome are one write: no crash creates two.
        outcome, replayed = idempotency.create_once(store, message_id, fp, car, _id_outcome,
                                                    namespace='sqs')
    else:
        # Create-or-replace is idempotent by itself: a redelivery after a crash
        # between the write and its record writes the same car again.
        def action():
            store.replace(car_id, car)
            return {'id': car_id}
        outcome, replayed = idempotency.run_once(store, message_id, fp, action,
                                                 namespace='sqs')
    if replayed:
        log.info('message %s was already written (car %s); skipped', message_id, outcome['id'])
    return outcome['id']


def ingest_messages(records, store=None):
    """Write one car per SQS message; return the Lambda partial batch response.

    Every failing message is reported as a batch item failure, so the rest of
    the batch is kept: a transient failure (store busy, throttled) is retried
    by SQS; an invalid car fails every time and, after the queue's
    maxReceiveCount, lands in the dead-letter queue. Invalid cars are logged at
    WARNING with their message id and field errors (the sender's mistake, not
    ours: the dead-letter queue's alarm is the signal).
    """
    store = store or get_store()
    failures = []
    rejected = 0
    for record in records:
        message_id = record['messageId']
        observability.bind(messageId=message_id)
        try:
            ingest_one(store, message_id, record.get('body'))
        except BadMessage as e:
            log.warning('rejected message %s (it will reach the dead-letter queue): %s',
                        message_id, e)
            failures.append(message_id)
            rejected += 1
        except idempotency.KeyInFlight:
            log.warning('message %s is being written by another delivery; retry later',
                        message_id)
            failures.append(message_id)
        except cars.CarError as e:
            log.warning('message %s not written: %s', message_id, e)
            failures.append(message_id)
            rejected += 1
        except Exception:  # noqa: BLE001 - the message is retried, never lost
            log.exception('message %s failed; SQS will retry it', message_id)
            failures.append(message_id)
    observability.bind(messageId=None)
    observability.count('IngestMessagesAccepted', len(records) - len(failures))
    observability.count('IngestMessagesRejected', rejected)
    observability.count('IngestMessagesRetried', len(failures) - rejected)
    return {'batchItemFailures': [{'itemIdentifier': m} for m in failures]}


# --- change events ----------------------------------------------------------------------------

def _entries(evts):
    return [{'Id': str(i),
             'Message': json.dumps(e, ensure_ascii=False, separators=(',', ':')),
             # Subscribers can filter on the type without parsing the body.
             'MessageAttributes': {'type': {'DataType': 'String', 'StringValue': e['type']},
                                   'car_id': {'DataType': 'String', 'StringValue': e['car_id']}}}
            for i, e in enumerate(evts)]


def publish_stream_records(records, sns=None, topic=None):
    """Publish change events for a DynamoDB stream batch; return Lambda's partial batch response.

    Events go out in stream order, 10 a PublishBatch. At the first event SNS
    refuses (an entry in Failed, or the whole request failing), publishing
    stops and that record's SequenceNumber is reported as the batch item
    failure: for streams, Lambda checkpoints the records before it and retries
    from it (the template sets ReportBatchItemFailures). Records after it are
    retried too, so an event may be delivered twice: consumers drop repeats by
    `id` (the stream's eventID).
    """
    pairs = []
    for record in records:
        observability.bind(eventId=record.get('eventID'))
        event = events.from_stream_record(record)
        if event is not None:
            pairs.append((record, event))
    observability.bind(eventId=None)
    if not pairs:
        return {'batchItemFailures': []}
    sns = sns or _aws_client('sns')
    topic = topic or topic_arn()
    for start in range(0, len(pairs), SNS_BATCH):
        chunk = pairs[start:start + SNS_BATCH]
        try:
            result = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=_entries(
                [event for _, event in chunk]))
            refused = sorted(int(f['Id']) for f in result.get('Failed') or ())
        except Exception:  # noqa: BLE001 - reported to Lambda, which retries from here
            log.exception('publishing %d change event(s) failed', len(chunk))
            refused = [0]
        if refused:
            observability.count('ChangeEventsPublished', start + refused[0])
            record = chunk[refused[0]][0]
            sequence = record.get('dynamodb', {}).get('SequenceNumber')
            observability.bind(eventId=record.get('eventID'))
            log.error('SNS refused %d of %d change event(s); Lambda retries the stream '
                      'from record %s (event %s)', len(refused), len(chunk), sequence,
                      record.get('eventID'))
            observability.bind(eventId=None)
            return {'batchItemFailures': [{'itemIdentifier': sequence}]}
    observability.count('ChangeEventsPublished', len(pairs))
    return {'batchItemFailures': []}


# --- scheduled export -------------------------------------------------------------------------

def export_inventory(bucket=None, day=None, s3=None, store=None):
    """Write the whole inventory as JSON Lines and CSV under exports/<date>/."""
    import datetime
    bucket = bucket or bucket_name()
    day = day or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    store = store or get_store()
    s3 = s3 or _aws_client('s3')
    records = list(all_cars(store))
    written = {}
    for fmt, ext, mime in (('jsonl', 'jsonl', 'application/x-ndjson'),
                           ('csv', 'csv', 'text/csv')):
        out = io.StringIO()
        write_rows(out, records, fmt)
        key = '%s%s/cars.%s' % (EXPORT_PREFIX, day, ext)
        s3.put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode('utf-8'),
                      ContentType=mime + '; charset=utf-8')
        written[fmt] = key
    log.info('exported %d cars to s3://%s/%s%s/', len(records), bucket, EXPORT_PREFIX, day)
    return {'cars': len(records), 'bucket': bucket, 'keys': written}


def _now():
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
