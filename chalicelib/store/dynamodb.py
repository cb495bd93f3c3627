"""The DynamoDB store: the default inside Lambda.

Key design: every car lives in one item collection, partition key `pk = "CAR"`
and sort key `sk = <id>`. A Query on that partition returns cars in ascending
id order, page by page, which is what the listing contract needs (a Scan would
return hash order). One partition holds at most 6,561 small items (well under
a megabyte per thousand cars) and takes up to 3,000 reads and 1,000 writes a
second, ample for an inventory. Other item kinds (idempotency keys) use other
partition keys in the same table, so a replay is as durable as the car.

Every single-car operation is one request: writes carry their precondition as
a ConditionExpression and ask for the item back (`ReturnValues`, and
`ReturnValuesOnConditionCheckFailure` to tell "missing" from "stale"). A
create that carries another write (`also=`, the idempotency key's outcome) is
one TransactWriteItems instead of a PutItem, so the two commit together.
"""
import random
import threading
import time

from chalicelib import config
from chalicelib.domain import cars
from chalicelib.store.base import ABSENT_ONLY, AlsoRefused, Store, WriteIncomplete, now_iso

CAR_PK = 'CAR'
_TEXT = cars.TEXT_FILTERS
BATCH = 25
# Items one filtered Query reads before filtering (bounds a request's cost).
LIST_READ_BATCH = 1000


def _s(value):
    return {'S': value}


def _n(value):
    return {'N': str(value)}


def to_item(record):
    item = {'pk': _s(CAR_PK), 'sk': _s(record['id']), 'id': _s(record['id']),
            'make': _s(record['make']), 'model': _s(record['model']),
            'year': _n(record['year']), 'version': _n(record['version']),
            'rev': _s(record['rev']), 'created_at': _s(record['created_at']),
            'updated_at': _s(record['updated_at'])}
    for name in _TEXT:
        if record.get(name) is not None:
            if name in cars.OPTIONAL_FIELDS:
                item[name] = _s(record[name])
            item[name + '_key'] = _s(cars.search_key(record[name]))
    return item


def from_item(item):
    def s(name):
        v = item.get(name)
        return v['S'] if v else None
    return {'id': s('id'), 'make': s('make'), 'model': s('model'),
            'year': int(item['year']['N']), 'trans': s('trans'), 'color': s('color'),
            'version': int(item['version']['N']) if 'version' in item else 1,
            'rev': s('rev') or '', 'created_at': s('created_at'),
            'updated_at': s('updated_at')}


def _cancellation_reasons(error):
    """The codes of a TransactionCanceledException, one per item ('None' when it passed)."""
    reasons = error.response.get('CancellationReasons')
    if reasons:
        return [r.get('Code') or 'None' for r in reasons]
    # Some endpoints give the reasons only in the message: "... reasons [A, B]".
    message = error.response.get('Error', {}).get('Message', '')
    inside = message[message.rfind('[') + 1:message.rfind(']')] if '[' in message else ''
    return [part.strip() for part in inside.split(',')]


class DynamoDBStore(Store):
    kind = 'dynamodb'

    def __init__(self, table):
        self.table = table
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        # Created on first use: importing boto3 and building a client is the
        # largest cold-start cost, paid only by requests that need the table.
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config
                    self._client = boto3.client(
                        'dynamodb', endpoint_url=config.dynamodb_endpoint(),
                        config=Config(retries={'mode': 'standard', 'max_attempts': 4},
                                      connect_timeout=3, read_timeout=10,
                                      max_pool_connections=50))
        return self._client

    @staticmethod
    def _failed_condition(error):
        return error.response.get('Error', {}).get('Code') == 'ConditionalCheckFailedException'

    def _key(self, car_id):
        return {'pk': _s(CAR_PK), 'sk': _s(car_id)}

    def ping(self):
        self.client.get_item(TableName=self.table, Key={'pk': _s('HEALTH'), 'sk': _s('-')})

    # --- reads ----------------------------------------------------------------

    def get(self, car_id):
        item = self.client.get_item(TableName=self.table, Key=self._key(car_id),
                                    ConsistentRead=True).get('Item')
        return from_item(item) if item else None

    def list(self, filters, after, limit):
        names = {'#pk': 'pk'}
        values = {':pk': _s(CAR_PK)}
        key_cond = '#pk = :pk'
        if after is not None:
            names['#sk'] = 'sk'
            values[':after'] = _s(after)
            key_cond += ' AND #sk > :after'
        conds = []
        for name, wanted in filters.text.items():
            names['#' + name] = name + '_key'
            if wanted is None:
                conds.append('attribute_not_exists(#%s)' % name)
            else:
                values[':' + name] = _s(wanted)
                conds.append('#%s = :%s' % (name, name))
        if filters.year_min is not None or filters.year_max is not None:
            names['#year'] = 'year'
        if filters.year_min is not None:
            values[':ymin'] = _n(filters.year_min)
            conds.append('#year >= :ymin')
        if filters.year_max is not None:
            values[':ymax'] = _n(filters.year_max)
            conds.append('#year <= :ymax')
        kwargs = {'TableName': self.table, 'KeyConditionExpression': key_cond,
                  'ExpressionAttributeNames': names, 'ExpressionAttributeValues': values,
                  'ConsistentRead': True}
        if conds:
            kwargs['FilterExpression'] = ' AND '.join(conds)
        found = []
        while True:
            # Unfiltered, limit+1 items answer "is there more?" in one request.
            # Filtered, Limit bounds what one request reads before filtering.
            kwargs['Limit'] = LIST_READ_BATCH if conds else limit + 1 - len(found)
            page = self.client.query(**kwargs)
            found.extend(page.get('Items', ()))
            start = page.get('LastEvaluatedKey')
            if len(found) > limit or not start:
                break
            kwargs['ExclusiveStartKey'] = start
        records = [from_item(i) for i in found[:limit]]
        return records, len(found) > limit

    def all_ids(self):
        ids = []
        kwargs = {'TableName': self.table, 'KeyConditionExpression': 'pk = :pk',
                  'ExpressionAttributeValues': {':pk': _s(CAR_PK)},
                  'ProjectionExpression': 'sk', 'ConsistentRead': True}
        while True:
            page = self.client.query(**kwargs)
            ids.extend(i['sk']['S'] for i in page.get('Items', ()))
            if not page.get('LastEvaluatedKey'):
                return ids
            kwargs['ExclusiveStartKey'] = page['LastEvaluatedKey']

    def count(self):
        return len(self.all_ids())

    # --- writes ---------------------------------------------------------------

    def _put_new(self, car_id, fields, also=None):
        """The new record, or None when the id is taken."""
        now = now_iso()
        record = dict(fields, id=car_id, version=1, rev=cars.new_revision(),
                      created_at=now, updated_at=now)
        put = {'TableName': self.table, 'Item': to_item(record),
               'ConditionExpression': 'attribute_not_exists(pk)'}
        from botocore.exceptions import ClientError
        try:
            if also is None:
                self.client.put_item(**put)
            else:
                self.client.transact_write_items(
                    TransactItems=[{'Put': put}, also(record)])
        except ClientError as e:
            if self._failed_condition(e):
                return None
            if e.response.get('Error', {}).get('Code') != 'TransactionCanceledException':
                raise
            reasons = _cancellation_reasons(e)
            # The other write's refusal decides first: with it, no id would do.
            if 'ConditionalCheckFailed' in reasons[1:]:
                raise AlsoRefused(str(e))
            if reasons[:1] == ['ConditionalCheckFailed']:
                return None
            raise
        return record

    def create(self, fields, car_id=None, also=None):
        if car_id is not None:
            record = self._put_new(car_id, fields, also)
            if record is None:
                raise cars.CarExists(car_id)
            return record
        # Random probes succeed at once while the space has room. When they
        # collide, read the taken ids once and draw only from the free ones;
        # a lost race removes that id and draws again, so the work is bounded
        # by the number of free ids, never an open-ended retry loop.
        for _ in range(3):
            candidate = ''.join(random.choice(cars.ID_DIGITS) for _ in range(4))
            record = self._put_new(candidate, fields, also)
            if record is not None:
                return record
        for _ in range(3):
            taken = set(self.all_ids())
            free = [i for i in cars.all_assignable_ids() if i not in taken]
            random.shuffle(free)
            if not free:
                break
            for candidate in free[:64]:
                record = self._put_new(candidate, fields, also)
                if record is not None:
                    return record
        raise cars.IdSpaceExhausted()

    def _condition(self, expect, values, names, only_if_absent=False):
        if only_if_absent:
            # If-None-Match: * on a write that needs a car: it can never hold.
            # It is still the write's own condition, so the failure's item
            # tells a car (412) from none (404) in the same request.
            return 'attribute_exists(pk) AND attribute_not_exists(pk)'
        if expect is None:
            return 'attribute_exists(pk)'
        if expect == '*':
            return 'attribute_exists(pk)'
        names['#rev'] = 'rev'
        placeholders = []
        for i, rev in enumerate(expect[:50]):
            values[':rev%d' % i] = _s(rev)
            placeholders.append(':rev%d' % i)
        return 'attribute_exists(pk) AND #rev IN (%s)' % ', '.join(placeholders)

    def _set_fields(self, fields, names, values, sets, removes):
        for name, value in fields.items():
            names['#' + name] = name
            if value is None:
                removes.append('#' + name)
            else:
                values[':' + name] = _n(value) if name == 'year' else _s(value)
                sets.append('#%s = :%s' % (name, name))
            if name in _TEXT:
                names['#%s_key' % name] = name + '_key'
                if value is None:
                    removes.append('#%s_key' % name)
                else:
                    values[':%s_key' % name] = _s(cars.search_key(value))
                    sets.append('#%s_key = :%s_key' % (name, name))

    def update(self, car_id, changes, expect=None, only_if_absent=False):
        names = {'#version': 'version', '#rev': 'rev', '#updated_at': 'updated_at'}
        values = {':one': _n(1), ':newrev': _s(cars.new_revision()), ':now': _s(now_iso())}
        sets = ['#version = #version + :one', '#rev = :newrev', '#updated_at = :now']
        removes = []
        self._set_fields(changes, names, values, sets, removes)
        condition = self._condition(expect, values, names, only_if_absent)
        expression = 'SET ' + ', '.join(sets)
        if removes:
            expression += ' REMOVE ' + ', '.join(removes)
        return self._existing_car_write(
            car_id, only_if_absent, self.client.update_item,
            TableName=self.table, Key=self._key(car_id), UpdateExpression=expression,
            ConditionExpression=condition, ExpressionAttributeNames=names,
            ExpressionAttributeValues=values, ReturnValues='ALL_NEW')

    def _existing_car_write(self, car_id, only_if_absent, call, **kwargs):
        """A write conditional on the car existing (and on its revision, for If-Match).

        The item comes back with a failed condition, so one request tells a missing
        car (404) from a stale version (412).
        """
        from botocore.exceptions import ClientError
        try:
            result = call(ReturnValuesOnConditionCheckFailure='ALL_OLD', **kwargs)
        except ClientError as e:
            if not self._failed_condition(e):
                raise
            if not e.response.get('Item'):
                raise cars.CarNotFound(car_id)
            raise cars.VersionMismatch(car_id, ABSENT_ONLY % car_id if only_if_absent else None)
        return from_item(result['Attributes'])

    def replace(self, car_id, fields, expect=None, only_if_absent=False):
        now = now_iso()
        names = {'#version': 'version', '#rev': 'rev', '#updated_at': 'updated_at',
                 '#created_at': 'created_at', '#id': 'id'}
        values = {':one': _n(1), ':zero': _n(0), ':newrev': _s(cars.new_revision()),
                  ':now': _s(now), ':id': _s(car_id)}
        sets = ['#version = if_not_exists(#version, :zero) + :one', '#rev = :newrev',
                '#updated_at = :now', '#created_at = if_not_exists(#created_at, :now)',
                '#id = :id']
        removes = []
        self._set_fields({name: fields.get(name) for name in cars.FIELDS},
                         names, values, sets, removes)
        if only_if_absent:
            condition = 'attribute_not_exists(pk)'
        elif expect is None:
            condition = None
        else:
            condition = self._condition(expect, values, names)
        expression = 'SET ' + ', '.join(sets)
        if removes:
            expression += ' REMOVE ' + ', '.join(removes)
        kwargs = dict(TableName=self.table, Key=self._key(car_id), UpdateExpression=expression,
                      ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                      ReturnValues='ALL_NEW')
        if condition:
            kwargs['ConditionExpression'] = condition
            kwargs['ReturnValuesOnConditionCheckFailure'] = 'ALL_OLD'
        from botocore.exceptions import ClientError
        try:
            result = self.client.update_item(**kwargs)
        except ClientError as e:
            if not self._failed_condition(e):
                raise
            if only_if_absent:
                raise cars.VersionMismatch(car_id, ABSENT_ONLY % car_id)
            if not e.response.get('Item'):
                raise cars.VersionMismatch(car_id, 'car %s does not exist' % car_id)
            raise cars.VersionMismatch(car_id)
        record = from_item(result['Attributes'])
        return record, record['version'] == 1

    def delete(self, car_id, expect=None, only_if_absent=False):
        names, values = {}, {}
        condition = self._condition(expect, values, names, only_if_absent)
        kwargs = dict(TableName=self.table, Key=self._key(car_id),
                      ConditionExpression=condition, ReturnValues='ALL_OLD')
        if names:
            kwargs['ExpressionAttributeNames'] = names
        if values:
            kwargs['ExpressionAttributeValues'] = values
        return self._existing_car_write(car_id, only_if_absent, self.client.delete_item,
                                        **kwargs)

    def put_many(self, items, deadline=None):
        """BatchWriteItem, 25 a request; unprocessed items retried, within bounds.

        A batch write cannot be conditional, so a replaced car starts again at
        version 1 (with a new revision, so old ETags no longer match).

        botocore's retry mode already retries a throttled or failed request
        (ProvisionedThroughputExceeded, 5xx) up to its max_attempts. What it does
        not retry is a request that succeeds with UnprocessedItems, so that is
        all this loop resends: at most PUT_MANY_ATTEMPTS requests per batch of
        25 and no new request after PUT_MANY_SECONDS, or after `deadline` (a
        time.monotonic() value) if that comes first. When either runs out, the
        cars not written are raised in WriteIncomplete for the caller to report.
        """
        now = now_iso()
        latest = {}
        for fields in items:
            # One batch may not name a key twice; the last row for an id wins.
            latest[fields['id']] = fields
        requests = []
        for fields in latest.values():
            record = {name: fields.get(name) for name in cars.FIELDS}
            record.update(id=fields['id'], version=1, rev=cars.new_revision(),
                          created_at=now, updated_at=now)
            requests.append({'PutRequest': {'Item': to_item(record)}})
        own = time.monotonic() + self.PUT_MANY_SECONDS
        deadline = own if deadline is None else min(deadline, own)
        written, unwritten, reason = 0, [], None
        for start in range(0, len(requests), BATCH):
            pending = requests[start:start + BATCH]
            if reason is None:
                pending, reason = self._write_batch(pending, deadline)
                written += min(BATCH, len(requests) - start) - len(pending)
            unwritten.extend(r['PutRequest']['Item']['sk']['S'] for r in pending)
        if unwritten:
            raise WriteIncomplete(written, unwritten, reason)
        return len(items)

    PUT_MANY_ATTEMPTS = 8
    PUT_MANY_SECONDS = 60.0
    PUT_MANY_BACKOFF = (0.05, 2.0)   # first and longest pause, before jitter

    def _write_batch(self, pending, deadline):
        """Send one batch until written or out of bounds; return (left, why)."""
        from botocore.exceptions import BotoCoreError, ClientError
        delay, longest = self.PUT_MANY_BACKOFF
        for attempt in range(self.PUT_MANY_ATTEMPTS):
            if not attempt and time.monotonic() > deadline:
                return pending, 'the time for writing ran out'
            if attempt:
                pause = delay + random.random() * delay
                if time.monotonic() + pause > deadline:
                    return pending, 'DynamoDB left items unprocessed until the time ran out'
                time.sleep(pause)
                delay = min(delay * 2, longest)
            try:
                result = self.client.batch_write_item(RequestItems={self.table: pending})
            except (BotoCoreError, ClientError) as e:
                # botocore has retried it already (throttling, 5xx, the network):
                # the batch is reported unwritten, not raised past the report.
                return pending, 'DynamoDB refused the batch: %s' % e
            pending = result.get('UnprocessedItems', {}).get(self.table, [])
            if not pending:
                return pending, None
        return pending, ('DynamoDB left items unprocessed after %d attempts'
                         % self.PUT_MANY_ATTEMPTS)
