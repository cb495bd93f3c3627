"""The daily export: every car to the bucket as JSON Lines and CSV, under exports/<date>/."""
import io
import logging

from chalicelib.automation import aws
from chalicelib.automation.files import write_rows
from chalicelib.domain import cars
from chalicelib.store import get_store

log = logging.getLogger('cars.automation')

EXPORT_PREFIX = 'exports/'


def all_cars(store, page=1000):
    """Every car, in id order, read page by page."""
    after = None
    while True:
        records, after = store.list(cars.Filters(), after, page)
        for r in records:
            yield r
        if after is None:
            return


def export_inventory(bucket=None, day=None, s3=None, store=None):
    """Write the whole inventory as JSON Lines and CSV under exports/<date>/."""
    import datetime
    bucket = bucket or aws.bucket_name()
    day = day or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    store = store or get_store()
    s3 = s3 or aws.client('s3')
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
