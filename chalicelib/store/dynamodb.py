"""The DynamoDB store: the default inside Lambda.

Cars and idempotency keys are items of one table, laid out as dynamodb_items
says. Every single-car operation is one request that carries its precondition
as a ConditionExpression; a create with an idempotency key's outcome is one
TransactWriteItems of the car's Put and the key's Update.
"""
import json
import os
import random
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import config
from chalicelib.domain import cars, idempotency
from chalicelib.store.base import (
    ABSENT_ONLY, KeyClaimLost, Store, WriteIncomplete, encode_outcome, now_iso)
from chalicelib.store.dynamodb_items import (
    CAR_PARTITION, ITEM_EXISTS, NO_ITEM, PK, SK, car_key, from_item, health_key,
    idempotency_key, number_value, string_value, to_item)

BATCH = 25
# Items a filtered listing reads per request (its one Query's Limit) before
# filtering: the bound on what one page costs, whatever the filter matches.
LIST_READ_BATCH = 1000


def _failed_condition(error):
    return error.response.get('Error', {}).get('Code') == 'ConditionalCheckFailedException'


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

    def __init__(self, table):
        self.table = table
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        # One client for all threads (it pools connections), built on first
        # use so that making a store does no I/O and cannot fail.
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = boto3.client(
                        'dynamodb', endpoint_url=config.dynamodb_endpoint(),
                        config=Config(retries={'mode': 'standard', 'max_attempts': 4},
                                      connect_timeout=3, read_timeout=10,
                                      max_pool_connections=50))
        return self._client

    def ping(self):
        self.client.get_item(TableName=self.table, Key=health_key())

    # --- reads ----------------------------------------------------------------

    def get(self, car_id):
        item = self.client.get_item(TableName=self.table, Key=car_key(car_id),
                                    ConsistentRead=True).get('Item')
        return from_item(item) if item else None

    def list(self, filters, after, limit):
        names = {'#pk': PK}
        values = {':pk': string_value(CAR_PARTITION)}
        key_cond = '#pk = :pk'
        if after is not None:
            names['#sk'] = SK
            values[':after'] = string_value(after)
            key_cond += ' AND #sk > :after'
        conds = []
        for name, wanted in filters.text.items():
            names['#' + name] = name + '_key'
            if wanted is None:
                conds.append('attribute_not_exists(#%s)' % name)
            else:
                values[':' + name] = string_value(wanted)
                conds.append('#%s = :%s' % (name, name))
        if filters.year_min is not None or filters.year_max is not None:
            names['#year'] = 'year'
        if filters.year_min is not None:
            values[':ymin'] = number_value(filters.year_min)
            conds.append('#year >= :ymin')
        if filters.year_max is not None:
            values[':ymax'] = number_value(filters.year_max)
            conds.append('#year <= :ymax')
        kwargs = {'TableName': self.table, 'KeyConditionExpression': key_cond,
                  'ExpressionAttributeNames': names, 'ExpressionAttributeValues': values,
                  'ConsistentRead': True}
        if conds:
            kwargs['FilterExpression'] = ' AND '.join(conds)
        # One Query per request, whatever the filters match: unfiltered, limit+1
        # items answer "is there more?"; filtered, Limit bounds the items read
        # (and paid for) before filtering to LIST_READ_BATCH, so a filter that
        # matches few cars or none costs one bounded read per page, not a scan
        # of the partition. DynamoDB also stops at 1 MB read either way.
        kwargs['Limit'] = LIST_READ_BATCH if conds else limit + 1
        page = self.client.query(**kwargs)
        found = page.get('Items', ())
        records = [from_item(i) for i in found[:limit]]
        if len(found) > limit:
            return records, records[-1]['id']
        stopped = page.get('LastEvaluatedKey')
        # Every match up to the last item read is in `records`: resume after it.
        return records, stopped[SK]['S'] if stopped else None

    def all_ids(self):
        ids = []
        kwargs = {'TableName': self.table, 'KeyConditionExpression': '#pk = :pk',
                  'ExpressionAttributeNames': {'#pk': PK, '#sk': SK},
                  'ExpressionAttributeValues': {':pk': string_value(CAR_PARTITION)},
                  'ProjectionExpression': '#sk', 'ConsistentRead': True}
        while True:
            page = self.client.query(**kwargs)
            ids.extend(i[SK]['S'] for i in page.get('Items', ()))
            if not page.get('LastEvaluatedKey'):
                return ids
            kwargs['ExclusiveStartKey'] = page['LastEvaluatedKey']

    def count(self):
        return len(self.all_ids())

    # --- writes ---------------------------------------------------------------

    def _put_new(self, car_id, fields, key_outcome=None):
        """The new record, or None when the id is taken."""
        now = now_iso()
        record = dict(fields, id=car_id, version=1, rev=cars.new_revision(),
                      created_at=now, updated_at=now)
        put = {'TableName': self.table, 'Item': to_item(record), 'ConditionExpression': NO_ITEM}
        try:
            if key_outcome is None:
                self.client.put_item(**put)
            else:
                self.client.transact_write_items(TransactItems=[
                    {'Put': put},
                    {'Update': self._key_outcome_update(
                        key_outcome.key, key_outcome.token, key_outcome.outcome_for(record))}])
        except ClientError as e:
            if _failed_condition(e):
                return None
            if e.response.get('Error', {}).get('Code') != 'TransactionCanceledException':
                raise
            reasons = _cancellation_reasons(e)
            # The key's refusal decides first: with it, no id would do.
            if 'ConditionalCheckFailed' in reasons[1:]:
                raise KeyClaimLost(str(e))
            if reasons[:1] == ['ConditionalCheckFailed']:
                return None
            raise
        return record

    def create(self, fields, car_id=None, key_outcome=None):
        if car_id is not None:
            record = self._put_new(car_id, fields, key_outcome)
            if record is None:
                raise cars.CarExists(car_id)
            return record
        # Random probes succeed at once while the space has room. When they
        # collide, read the taken ids once and draw only from the free ones;
        # a lost race removes that id and draws again, so the work is bounded
        # by the number of free ids, never an open-ended retry loop.
        for _ in range(3):
            candidate = ''.join(random.choice(cars.ID_DIGITS) for _ in range(4))
            record = self._put_new(candidate, fields, key_outcome)
            if record is not None:
                return record
        for _ in range(3):
            taken = set(self.all_ids())
            free = [i for i in cars.all_assignable_ids() if i not in taken]
            random.shuffle(free)
            if not free:
                break
            for candidate in free[:64]:
                record = self._put_new(candidate, fields, key_outcome)
                if record is not None:
                    return record
        raise cars.IdSpaceExhausted()

    def _condition(self, expect, values, names, only_if_absent=False):
        if only_if_absent:
            # If-None-Match: * on a write that needs a car: it can never hold.
            # It is still the write's own condition, so the failure's item
            # tells a car (412) from none (404) in the same request.
            return '%s AND %s' % (ITEM_EXISTS, NO_ITEM)
        if expect is None or expect == '*':
            return ITEM_EXISTS
        names['#rev'] = 'rev'
        placeholders = []
        for i, rev in enumerate(expect[:50]):
            values[':rev%d' % i] = string_value(rev)
            placeholders.append(':rev%d' % i)
        return '%s AND #rev IN (%s)' % (ITEM_EXISTS, ', '.join(placeholders))

    def _set_fields(self, fields, names, values, sets, removes):
        for name, value in fields.items():
            names['#' + name] = name
            if value is None:
                removes.append('#' + name)
            else:
                values[':' + name] = number_value(value) if name == 'year' else string_value(value)
                sets.append('#%s = :%s' % (name, name))
            if name in cars.TEXT_FILTERS:
                names['#%s_key' % name] = name + '_key'
                if value is None:
                    removes.append('#%s_key' % name)
                else:
                    values[':%s_key' % name] = string_value(cars.search_key(value))
                    sets.append('#%s_key = :%s_key' % (name, name))

    def update(self, car_id, changes, expect=None, only_if_absent=False):
        names = {'#version': 'version', '#rev': 'rev', '#updated_at': 'updated_at'}
        values = {':one': number_value(1), ':newrev': string_value(cars.new_revision()),
                  ':now': string_value(now_iso())}
        sets = ['#version = #version + :one', '#rev = :newrev', '#updated_at = :now']
        removes = []
        self._set_fields(changes, names, values, sets, removes)
        condition = self._condition(expect, values, names, only_if_absent)
        expression = 'SET ' + ', '.join(sets)
        if removes:
            expression += ' REMOVE ' + ', '.join(removes)
        return self._existing_car_write(
            car_id, only_if_absent, self.client.update_item,
            TableName=self.table, Key=car_key(car_id), UpdateExpression=expression,
            ConditionExpression=condition, ExpressionAttributeNames=names,
            ExpressionAttributeValues=values, ReturnValues='ALL_NEW')

    def _existing_car_write(self, car_id, only_if_absent, call, **kwargs):
        """A write conditional on the car existing (and on its revision, for If-Match).

        The item comes back with a failed condition, so one request tells a missing
        car (404) from a stale version (412).
        """
        try:
            result = call(ReturnValuesOnConditionCheckFailure='ALL_OLD', **kwargs)
        except ClientError as e:
            if not _failed_condition(e):
                raise
            if not e.response.get('Item'):
                raise cars.CarNotFound(car_id)
            raise cars.VersionMismatch(car_id, ABSENT_ONLY % car_id if only_if_absent else None)
        return from_item(result['Attributes'])

    def replace(self, car_id, fields, expect=None, only_if_absent=False):
        now = now_iso()
        names = {'#version': 'version', '#rev': 'rev', '#updated_at': 'updated_at',
                 '#created_at': 'created_at', '#id': 'id'}
        values = {':one': number_value(1), ':zero': number_value(0),
                  ':newrev': string_value(cars.new_revision()), ':now': string_value(now),
                  ':id': string_value(car_id)}
        sets = ['#version = if_not_exists(#version, :zero) + :one', '#rev = :newrev',
                '#updated_at = :now', '#created_at = if_not_exists(#created_at, :now)',
                '#id = :id']
        removes = []
        self._set_fields({name: fields.get(name) for name in cars.FIELDS},
                         names, values, sets, removes)
        if only_if_absent:
            condition = NO_ITEM
        elif expect is None:
            condition = None
        else:
            condition = self._condition(expect, values, names)
        expression = 'SET ' + ', '.join(sets)
        if removes:
            expression += ' REMOVE ' + ', '.join(removes)
        kwargs = dict(TableName=self.table, Key=car_key(car_id), UpdateExpression=expression,
                      ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                      ReturnValues='ALL_NEW')
        if condition:
            kwargs['ConditionExpression'] = condition
            kwargs['ReturnValuesOnConditionCheckFailure'] = 'ALL_OLD'
        try:
            result = self.client.update_item(**kwargs)
        except ClientError as e:
            if not _failed_condition(e):
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
        kwargs = dict(TableName=self.table, Key=car_key(car_id),
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
            unwritten.extend(r['PutRequest']['Item']['id']['S'] for r in pending)
        if unwritten:
            raise WriteIncomplete(written, unwritten, reason)
        return len(items)

    PUT_MANY_ATTEMPTS = 8
    PUT_MANY_SECONDS = 60.0
    PUT_MANY_BACKOFF = (0.05, 2.0)   # first and longest pause, before jitter

    def _write_batch(self, pending, deadline):
        """Send one batch until written or out of bounds; return (left, why)."""
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

    # --- idempotency keys -----------------------------------------------------------

    def claim_key(self, key, fingerprint):
        now = time.time()
        token = os.urandom(8).hex()
        item = dict(idempotency_key(key), fingerprint=string_value(fingerprint),
                    state=string_value(idempotency.IN_FLIGHT), token=string_value(token),
                    claimed_at=number_value(repr(now)),
                    expires_at=number_value(int(now + idempotency.TTL_SECONDS)))
        # decide_claim's TAKE as a condition, so that the claim is one request.
        # TTL deletes lazily (up to days late), so an expired item counts as absent.
        condition = ('%s OR expires_at <= :now OR '
                     '(#state = :in_flight AND claimed_at <= :stale AND fingerprint = :fp)'
                     % NO_ITEM)
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression=condition,
                ExpressionAttributeNames={'#state': 'state'},
                ExpressionAttributeValues={
                    ':now': number_value(int(now)),
                    ':in_flight': string_value(idempotency.IN_FLIGHT),
                    ':stale': number_value(repr(now - idempotency.STALE_CLAIM_SECONDS)),
                    ':fp': string_value(fingerprint)},
                ReturnValuesOnConditionCheckFailure='ALL_OLD')
        except ClientError as e:
            if not _failed_condition(e):
                raise
            old = e.response.get('Item') or {}
            if not old:  # gone between the check and now: a retry would take it
                raise idempotency.KeyInFlight()
            # The condition ruled on expiry already.
            record = idempotency.KeyRecord(old['fingerprint']['S'], old['state']['S'],
                                           float(old['claimed_at']['N']), None)
            if idempotency.decide_claim(record, fingerprint, now) != idempotency.REPLAY:
                raise idempotency.KeyInFlight()
            return None, json.loads(old['outcome']['S'])
        return token, None

    def _key_outcome_update(self, key, token, outcome):
        # Only an in-flight claim with our token: a takeover changed the token,
        # and a done key is final (a retried transaction finds it done).
        return {'TableName': self.table, 'Key': idempotency_key(key),
                'UpdateExpression': 'SET #state = :done, outcome = :outcome',
                'ConditionExpression': '#token = :token AND #state = :in_flight',
                'ExpressionAttributeNames': {'#state': 'state', '#token': 'token'},
                'ExpressionAttributeValues': {
                    ':done': string_value(idempotency.DONE),
                    ':in_flight': string_value(idempotency.IN_FLIGHT),
                    ':token': string_value(token),
                    ':outcome': string_value(encode_outcome(outcome))}}

    def record_key_outcome(self, key, token, outcome):
        try:
            self.client.update_item(**self._key_outcome_update(key, token, outcome))
        except ClientError as e:
            # Another request took over the (stale) claim; its outcome stands.
            if not _failed_condition(e):
                raise

    def release_key(self, key, token):
        try:
            self.client.delete_item(
                TableName=self.table, Key=idempotency_key(key),
                ConditionExpression='#token = :token AND #state = :in_flight',
                ExpressionAttributeNames={'#token': 'token', '#state': 'state'},
                ExpressionAttributeValues={':token': string_value(token),
                                           ':in_flight': string_value(idempotency.IN_FLIGHT)})
        except ClientError as e:
            if not _failed_condition(e):
                raise

    def current_key_outcome(self, key, fingerprint):
        item = self.client.get_item(TableName=self.table, Key=idempotency_key(key),
                                    ConsistentRead=True).get('Item')
        record = None
        if item:
            record = idempotency.KeyRecord(item['fingerprint']['S'], item['state']['S'], None,
                                           float(item['expires_at']['N']))
        idempotency.check_replayable(record, fingerprint, time.time())
        return json.loads(item['outcome']['S'])
