"""Idempotency keys: do a write once, and replay its outcome to every retry.

The protocol, the same on both stores:

1. claim the key atomically, with a fingerprint of the request and state
   "in flight" (sqlite: one BEGIN IMMEDIATE transaction; DynamoDB: a
   conditional PutItem);
2. run the action (create the car);
3. record its outcome (status, headers, body) under the key.

A second request with the key then gets the recorded outcome (a replay), or
409 while the first is still in flight, or 422 if its fingerprint differs.
Keys live 24 hours (sqlite: swept on claim; DynamoDB: TTL on `expires_at`).
A claim whose holder died (kill -9, Lambda timeout) is takeable after
STALE_CLAIM_SECONDS, so a crash never blocks a key for a day.

Keys are kept in the same store as the cars, so a replay is as durable as the
car it describes. The function API (`run_once`, `fingerprint`) knows nothing
of HTTP: the queue consumer derives a key from the message and calls the same
functions with its own namespace.
"""
import json
import os
import threading
import time

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


def run_once(store, key, fp, action, namespace='http', keep=None):
    """Run `action()` once per (namespace, key); return (outcome, replayed).

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

    def record(self, key, token, outcome):
        with self.store.transaction() as c:
            self._ensure(c)
            c.execute('UPDATE idempotency_keys SET state = ?, outcome = ? '
                      'WHERE key = ? AND token = ?',
                      (DONE, json.dumps(outcome, separators=(',', ':')), key, token))

    def release(self, key, token):
        with self.store.transaction() as c:
            self._ensure(c)
            c.execute('DELETE FROM idempotency_keys WHERE key = ? AND token = ?', (key, token))


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

    def record(self, key, token, outcome):
        from botocore.exceptions import ClientError
        try:
            self.store.client.update_item(
                TableName=self.store.table, Key=self._key(key),
                UpdateExpression='SET #state = :done, outcome = :outcome',
                ConditionExpression='#token = :token',
                ExpressionAttributeNames={'#state': 'state', '#token': 'token'},
                ExpressionAttributeValues={
                    ':done': {'S': DONE}, ':token': {'S': token},
                    ':outcome': {'S': json.dumps(outcome, separators=(',', ':'))}})
        except ClientError as e:
            # Another request took over the (stale) claim; its outcome stands.
            if e.response.get('Error', {}).get('Code') != 'ConditionalCheckFailedException':
                raise

    def release(self, key, token):
        from botocore.exceptions import ClientError
        try:
            self.store.client.delete_item(
                TableName=self.store.table, Key=self._key(key),
                ConditionExpression='#token = :token',
                ExpressionAttributeNames={'#token': 'token'},
                ExpressionAttributeValues={':token': {'S': token}})
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') != 'ConditionalCheckFailedException':
                raise
