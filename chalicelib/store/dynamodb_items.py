"""The DynamoDB table's item layout, and the change events read from its stream.

No boto3 here: the API imports the stream decoding (through its event
handler) and must not pay for boto3 when it runs on sqlite.
"""
import os

from chalicelib.domain import cars, events
from chalicelib.store import table
from chalicelib.store.base import iso_utc


def _key_attributes():
    kinds = {k['KeyType']: k['AttributeName']
             for k in table.cloudformation_properties()['KeySchema']}
    return kinds['HASH'], kinds['RANGE']


# Partition and sort key attribute names, as the table's definition names them.
PK, SK = _key_attributes()
# Every car is in one partition, sorted by id, so a Query lists cars in id order.
CAR_PARTITION = 'CAR'
# An idempotency key is an item of its own: partition KEY_PREFIX + key, sort KEY_SORT.
KEY_PREFIX = 'IDEMPOTENCY#'
KEY_SORT = 'KEY'
# The item `ping` reads; it never exists.
HEALTH_PARTITION = 'HEALTH'

# Conditions on a write's own item.
ITEM_EXISTS = 'attribute_exists(%s)' % PK
NO_ITEM = 'attribute_not_exists(%s)' % PK


def string_value(value):
    return {'S': value}


def number_value(value):
    return {'N': str(value)}


def car_key(car_id):
    return {PK: string_value(CAR_PARTITION), SK: string_value(car_id)}


def idempotency_key(key):
    return {PK: string_value(KEY_PREFIX + key), SK: string_value(KEY_SORT)}


def health_key():
    return {PK: string_value(HEALTH_PARTITION), SK: string_value('-')}


def is_car(item):
    return bool(item) and item.get(PK, {}).get('S') == CAR_PARTITION


def to_item(record):
    item = car_key(record['id'])
    for name in ('id', 'make', 'model', 'rev', 'created_at', 'updated_at'):
        item[name] = string_value(record[name])
    for name in ('year', 'version'):
        item[name] = number_value(record[name])
    for name in cars.TEXT_FILTERS:
        if record.get(name) is not None:
            if name in cars.OPTIONAL_FIELDS:
                item[name] = string_value(record[name])
            item[name + '_key'] = string_value(cars.search_key(record[name]))
    return item


def from_item(item):
    def text(name):
        v = item.get(name)
        return v['S'] if v else None
    return {'id': text('id'), 'make': text('make'), 'model': text('model'),
            'year': int(item['year']['N']), 'trans': text('trans'), 'color': text('color'),
            'version': int(item['version']['N']) if 'version' in item else 1,
            'rev': text('rev') or '', 'created_at': text('created_at'),
            'updated_at': text('updated_at')}


def event_from_stream_record(record):
    """The change event for one DynamoDB stream record (a dict), or None if not a car's."""
    ddb = record.get('dynamodb') or {}
    if not is_car(ddb.get('Keys')):
        return None
    old, new = ddb.get('OldImage'), ddb.get('NewImage')
    before = from_item(old) if is_car(old) else None
    after = from_item(new) if is_car(new) else None
    if before is None and after is None:
        return None
    at = None
    stamp = ddb.get('ApproximateCreationDateTime')
    if after is None and stamp is not None:
        at = iso_utc(float(stamp))
    # The stream's eventID is stable across Lambda retries, so a consumer can
    # drop an event it has already seen.
    return events.build_event(before, after, record.get('eventID') or os.urandom(16).hex(),
                              'dynamodb', at)
