"""Idempotency keys: do a write once, and replay its outcome to every retry.

The protocol, the same on both stores:

1. claim the key atomically, with a fingerprint of the request and state
   "in flight" (sqlite: one BEGIN IMMEDIATE transaction; DynamoDB: a
   conditional PutItem);
2. create the car and record the outcome (status, headers, body) under the
   key in ONE atomic write (`create_once`: sqlite, the car, its outbox row and
   the key's update in one BEGIN IMMEDIATE transaction; DynamoDB, one
   TransactWriteItems of the car's Put and the key's Update, conditional on
   the claim's token). There is no moment when the car exists and the key
   does not say so: a process that dies at any point leaves either no car, or
   the car and its recorded outcome.

A second request with the key then gets the recorded outcome (a replay), or
409 while the first is still in flight, or 422 if its fingerprint differs.
Keys live 24 hours (sqlite: swept on claim; DynamoDB: TTL on `expires_at`).
A claim whose holder died before its write (kill -9, Lambda timeout) is
takeable after STALE_CLAIM_SECONDS, so a crash never blocks a key for a day;
it wrote nothing, so the taker creates the only car. A slow holder that lost
its claim that way finds its write refused (the token no longer matches) and
writes nothing. An outcome that is not a write (a refused create: 409) is
recorded on its own, after.

`run_once` is the general form for actions other than a create (the queue's
create-or-replace, which is idempotent by itself): claim, run, then record.

Keys are kept in the same store as the cars, so a replay is as durable as the
car it describes. The function API (`create_once`, `run_once`, `fingerprint`)
knows nothing of HTTP: the queue consumer and the import derive a key from the
message or row and call the same functions with their own namespace.
"""
import json
import os
import threading
import time

from chalicelib.store.base import AlsoRefused

TTL_SECONDS = 24 * 60 * 60
# Longer than any request may take (API Gateway stops waiting at 29 s).
STALE_CLAIM_SECONDS = 60
KEY_MAX = 255
PK_PREFIX = 'IDEMPOTENCY#'

IN_FLIGHT = 'in_flight'
DONE = 'done'


class IdempotencyError(Exception):
    status = 400
    slug = 'idempotency-error'


class InvalidKey(IdempotencyError):
    status = 400
    slug = 'invalid-idempotency-key'


class KeyInFlight(IdempotencyError):
    status = 409
    slug = 'idempotency-key-in-flight'

    def __init__(self):
        super().__init__('a request with this Idempotency-Key is still being processed; '
                         'retry in a few seconds')


class KeyReused(IdempotencyError):
    status = 422
    slug = 'idempotency-key-reused'

    def __init__(self):
        super().__init__('this Idempotency-Key was already used with a different request '
                         'body; use a new key for a new request')


def validate_key(value):
    """The key, or None when absent. Raises InvalidKey: 1-255 printable ASCII characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= KEY_MAX or not all(
            ' ' <= ch <= '~' for ch in value):
        raise InvalidKey('Idempotency-Key must be 1-%d printable ASCII characters' % KEY_MAX)
    return value


def fingerprint(fields):
    """A stable digest of validated request fields (JSON or form: same fields, same digest)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    import hashlib  # only creates with a key need it (cold start)
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()


def create_once(store, key, fp, fields, outcome_of, car_id=None, namespace='http',
                error_outcome=None):
    """Create a car once per (namespace, key); return (outcome, replayed).

    `store.create(fields, car_id)` and the recording of `outcome_of(record)`
    under the key are one atomic write (the store's `also=`). An exception from
    the create means no car, or (a lost reply) the car with its outcome, which
    stays: only an in-flight claim is ever released. `error_outcome(exc)` may
    turn the exception into an outcome to record and replay (a 409); when it
    returns None, or is not given, the exception propagates and the key is
    freed for a retry.
    Raises KeyInFlight, KeyReused.
    """
    keys = keys_for(store)
    full_key = '%s#%s' % (namespace, key)
    token, previous = keys.claim(full_key, fp)
    if token is None:
        return previous, True
    # One outcome per attempted record: DynamoDB tries ids until one is free.
    outcomes = {}

    def outcome_for(record):
        outcomes[record['rev']] = outcome_of(record)
        return outcomes[record['rev']]
    try:
        record = store.create(fields, car_id, also=keys.records(full_key, token, outcome_for))
    except AlsoRefused:
        # Our claim went stale and another request took it over; nothing was
        # written, and the key's current holder decides the answer.
        return keys.current(full_key, fp), True
    except Exception as e:
        outcome = error_outcome(e) if error_outcome is not None else None
        if outcome is None:
            keys.release(full_key, token)
            raise
        keys.record(full_key, token, outcome)
        return outcome, False
    except BaseException:
        keys.release(full_key, token)
        raise
    return outcomes[record['rev']], False


def run_once(store, key, fp, action, namespace='http', keep=None):
    """Run `action()` once per (namespace, key); return (outcome, replayed).

    For actions that are idempotent by themselves (a create-or-replace): the
    outcome is recorded after the action, so a crash in between lets a retry
    after STALE_CLAIM_SECONDS run the action again. Creates use `create_once`.
    `action` returns a JSON-serializable outcome. `keep(outcome)` says whether
    to record it for replay (default: always); an outcome not kept, or an
    exception from `action`, releases the claim so that a retry runs again.
    Raises KeyInFlight, KeyReused.
    """
    keys = keys_for(store)
    full_key = '%s#%s' % (namespace, key)
    token, previous = keys.claim(full_key, fp)
    if token is None:
        return previous, True
    try:
        outcome = action()
    except BaseException:
        keys.release(full_key, token)
        raise
    if keep is None or keep(outcome):
        keys.record(full_key, token, outcome)
    else:
        keys.release(full_key, token)
    return outcome, False


# --- HTTP outcomes -------------------------------------------------------------

def outcome_of(response):
    """A Chalice Response as a storable outcome."""
    return {'status': response.status_code, 'headers': dict(response.headers or {}),
            'body': response.body}


def response_of(outcome, replayed):
    from chalice import Response
    headers = dict(outcome.get('headers') or {})
    if replayed:
        headers['Idempotent-Replayed'] = 'true'
    return Response(body=outcome.get('body'), status_code=outcome['status'], headers=headers)


# --- the stores ----------------------------------------------------------------------

_lock = threading.Lock()
_keys = {}


def keys_for(store):
    """The key table kept beside `store` (one per store object)."""
    entry = _keys.get(id(store))
    if entry is None or entry[0] is not store:
        with _lock:
            entry = _keys.get(id(store))
            if entry is None or entry[0] is not store:
                cls = DynamoDBKeys if store.kind == 'dynamodb' else SqliteKeys
                entry = _keys[id(store)] = (store, cls(store))
    return entry[1]


def _dumps(outcome):
    return json.dumps(outcome, separators=(',', ':'))


def _settled(row, fp, now):
    """The outcome a lost claim replays: the key's current holder's, once done."""
    if row is None:
        raise KeyInFlight()  # released by its holder: a retry claims it afresh
    row_fp, state, expires_at, outcome = row
    if expires_at is not None and expires_at <= now:
        raise KeyInFlight()
    if row_fp != fp:
        raise KeyReused()
    if state != DONE:
        raise KeyInFlight()
    return json.loads(outcome)


def _decide(row_fp, state, claimed_at, expires_at, outcome, fp, now):
    """What an existing row means for a new claim: 'take', or raise / replay."""
    if expires_at is not None and expires_at <= now:
        return 'take'
    if row_fp != fp:
        raise KeyReused()
    if state == DONE:
        return 'replay'
    if claimed_at is not None and claimed_at <= now - STALE_CLAIM_SECONDS:
        return 'take'
    raise KeyInFlight()


class SqliteKeys(object):
    """Keys in a table of the cars database, claimed in a BEGIN IMMEDIATE transaction."""

    SCHEMA = ('CREATE TABLE IF NOT EXISTS idempotency_keys ('
              'key TEXT PRIMARY KEY NOT NULL, fingerprint TEXT NOT NULL, '
              'state TEXT NOT NULL, token TEXT NOT NULL, claimed_at REAL NOT NULL, '
              'expires_at REAL NOT NULL, outcome TEXT)')
    INDEX = ('CREATE INDEX IF NOT EXISTS idempotency_keys_expires '
             'ON idempotency_keys (expires_at)')
    # Sweeping at most this often keeps a claim to one indexed lookup.
    SWEEP_EVERY = 60

    def __init__(self, store):
        self.store = store
        self._ready = False
        self._swept = 0.0

    def _ensure(self, c):
        if not self._ready:
            c.execute(self.SCHEMA)
            c.execute(self.INDEX)
            self._ready = True

    def claim(self, key, fp):
        now = time.time()
        token = os.urandom(8).hex()
        with self.store.transaction() as c:
            self._ensure(c)
            if now - self._swept > self.SWEEP_EVERY:
                c.execute('DELETE FROM idempotency_keys WHERE expires_at <= ?', (now,))
                self._swept = now
            row = c.execute('SELECT fingerprint, state, claimed_at, expires_at, outcome '
                            'FROM idempotency_keys WHERE key = ?', (key,)).fetchone()
            if row is not None:
                row_fp, state, claimed_at, expires_at, outcome = row
                if _decide(row_fp, state, claimed_at, expires_at, outcome, fp, now) == 'replay':
                    return None, json.loads(outcome)
            c.execute('INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, state, token, '
                      'claimed_at, expires_at, outcome) VALUES (?, ?, ?, ?, ?, ?, NULL)',
                      (key, fp, IN_FLIGHT, token, now, now + TTL_SECONDS))
        return token, None

    # Only an in-flight claim is recorded or released: a done key is final,
    # whatever happens to the process that wrote it.
    _RECORD = ('UPDATE idempotency_keys SET state = ?, outcome = ? '
               'WHERE key = ? AND token = ? AND state = ?')

    def record(self, key, token, outcome):
        with self.store.transaction() as c:
            self._ensure(c)
            c.execute(self._RECORD, (DONE, _dumps(outcome), key, token, IN_FLIGHT))

    def records(self, key, token, outcome_of):
        """store.create's `also=`: record outcome_of(record) in the car's transaction."""
        def also(c, record):
            done = c.execute(self._RECORD, (DONE, _dumps(outcome_of(record)), key, token,
                                            IN_FLIGHT)).rowcount
            if done != 1:
                raise AlsoRefused('the claim on idempotency key %r was taken over' % key)
        return also

    def current(self, key, fp):
        with self.store.transaction() as c:
            self._ensure(c)
            row = c.execute('SELECT fingerprint, state, expires_at, outcome '
                            'FROM idempotency_keys WHERE key = ?', (key,)).fetchone()
        return _settled(row, fp, time.time())

    def release(self, key, token):
        with self.store.transaction() as c:
            self._ensure(c)
            c.execute('DELETE FROM idempotency_keys WHERE key = ? AND token = ? AND state = ?',
                      (key, token, IN_FLIGHT))


class DynamoDBKeys(object):
    """Keys as items pk="IDEMPOTENCY#<key>" in the cars table, claimed by conditional PutItem."""

    SK = 'KEY'

    def __init__(self, store):
        self.store = store

    def _key(self, key):
        return {'pk': {'S': PK_PREFIX + key}, 'sk': {'S': self.SK}}

    def claim(self, key, fp):
        from botocore.exceptions import ClientError
        now = time.time()
        token = os.urandom(8).hex()
        item = dict(self._key(key), fingerprint={'S': fp}, state={'S': IN_FLIGHT},
                    token={'S': token}, claimed_at={'N': repr(now)},
                    expires_at={'N': str(int(now + TTL_SECONDS))})
        # TTL deletes lazily (up to days late), so an expired item counts as absent.
        condition = ('attribute_not_exists(pk) OR expires_at <= :now OR '
                     '(#state = :in_flight AND claimed_at <= :stale AND fingerprint = :fp)')
        try:
            self.store.client.put_item(
                TableName=self.store.table, Item=item, ConditionExpression=condition,
                ExpressionAttributeNames={'#state': 'state'},
                ExpressionAttributeValues={
                    ':now': {'N': str(int(now))}, ':in_flight': {'S': IN_FLIGHT},
                    ':stale': {'N': repr(now - STALE_CLAIM_SECONDS)}, ':fp': {'S': fp}},
                ReturnValuesOnConditionCheckFailure='ALL_OLD')
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') != 'ConditionalCheckFailedException':
                raise
            old = e.response.get('Item') or {}
            if not old:  # gone between the check and now: a retry would take it
                raise KeyInFlight()
            _decide(old['fingerprint']['S'], old['state']['S'], float(old['claimed_at']['N']),
                    None, None, fp, now)
            return None, json.loads(old['outcome']['S'])
        return token, None

    def _record_update(self, key, token, outcome):
        # Only an in-flight claim with our token: a takeover changed the token,
        # and a done key is final (a retried transaction finds it done).
        return {'TableName': self.store.table, 'Key': self._key(key),
                'UpdateExpression': 'SET #state = :done, outcome = :outcome',
                'ConditionExpression': '#token = :token AND #state = :in_flight',
                'ExpressionAttributeNames': {'#state': 'state', '#token': 'token'},
                'ExpressionAttributeValues': {
                    ':done': {'S': DONE}, ':in_flight': {'S': IN_FLIGHT},
                    ':token': {'S': token}, ':outcome': {'S': _dumps(outcome)}}}

    def record(self, key, token, outcome):
        from botocore.exceptions import ClientError
        try:
            self.store.client.update_item(**self._record_update(key, token, outcome))
        except ClientError as e:
            # Another request took over the (stale) claim; its outcome stands.
            if e.response.get('Error', {}).get('Code') != 'ConditionalCheckFailedException':
                raise

    def records(self, key, token, outcome_of):
        """store.create's `also=`: the Update recording outcome_of(record) with the car."""
        def also(record):
            return {'Update': self._record_update(key, token, outcome_of(record))}
        return also

    def current(self, key, fp):
        item = self.store.client.get_item(TableName=self.store.table, Key=self._key(key),
                                          ConsistentRead=True).get('Item')
        row = None
        if item:
            row = (item['fingerprint']['S'], item['state']['S'],
                   float(item['expires_at']['N']), (item.get('outcome') or {}).get('S'))
        return _settled(row, fp, time.time())

    def release(self, key, token):
        from botocore.exceptions import ClientError
        try:
            self.store.client.delete_item(
                TableName=self.store.table, Key=self._key(key),
                ConditionExpression='#token = :token AND #state = :in_flight',
                ExpressionAttributeNames={'#token': 'token', '#state': 'state'},
                ExpressionAttributeValues={':token': {'S': token},
                                           ':in_flight': {'S': IN_FLIGHT}})
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') != 'ConditionalCheckFailedException':
                raise
