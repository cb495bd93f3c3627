"""Idempotency keys: do a write once, and replay its outcome to every retry.

`create_once` and `run_once` are the protocol, `decide_claim` and
`check_replayable` the rules for a stored key; the store keeps the keys
(Store.claim_key and the methods after it). The protocol knows nothing of
HTTP: the API, the queue consumer and the import call it with their own
namespace. `outcome_of` and `response_of` turn Chalice responses into outcomes.
"""
import collections
import hashlib
import json

from chalicelib.store.base import KeyClaimLost, KeyOutcome

TTL_SECONDS = 24 * 60 * 60
# Longer than any request may take (API Gateway stops waiting at 29 s).
STALE_CLAIM_SECONDS = 60
KEY_MAX = 255

# A key record's states.
IN_FLIGHT = 'in_flight'
DONE = 'done'

# What a stored key means for a new claim (decide_claim).
TAKE = 'take'
REPLAY = 'replay'


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
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()


def create_once(store, key, fp, fields, outcome_of, car_id=None, namespace='http',
                error_outcome=None):
    """Create a car once per (namespace, key); return (outcome, replayed).

    The car and `outcome_of(record)` recorded under the key are one atomic
    write. An exception from the create means no car, or (a lost reply) the
    car with its outcome, which stays: only an in-flight claim is ever
    released. `error_outcome(exc)` may turn the exception into an outcome to
    record and replay (a 409); when it returns None, or is not given, the
    exception propagates and the key is freed for a retry.
    Raises KeyInFlight, KeyReused.
    """
    full_key = '%s#%s' % (namespace, key)
    token, previous = store.claim_key(full_key, fp)
    if token is None:
        return previous, True
    # One outcome per attempted record: DynamoDB tries ids until one is free.
    outcomes = {}

    def outcome_for(record):
        outcomes[record['rev']] = outcome_of(record)
        return outcomes[record['rev']]
    try:
        record = store.create(fields, car_id, key_outcome=KeyOutcome(full_key, token, outcome_for))
    except KeyClaimLost:
        # Our claim went stale and another request took it over; nothing was
        # written, and the key's current holder decides the answer.
        return store.current_key_outcome(full_key, fp), True
    except Exception as e:
        outcome = error_outcome(e) if error_outcome is not None else None
        if outcome is None:
            store.release_key(full_key, token)
            raise
        store.record_key_outcome(full_key, token, outcome)
        return outcome, False
    except BaseException:
        store.release_key(full_key, token)
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
    full_key = '%s#%s' % (namespace, key)
    token, previous = store.claim_key(full_key, fp)
    if token is None:
        return previous, True
    try:
        outcome = action()
    except BaseException:
        store.release_key(full_key, token)
        raise
    if keep is None or keep(outcome):
        store.record_key_outcome(full_key, token, outcome)
    else:
        store.release_key(full_key, token)
    return outcome, False


# --- the rules the stores apply to a stored key -----------------------------------------

# What the rules need of a stored key; `claimed_at` and `expires_at` are
# seconds since the epoch, None where the store has already ruled on them.
KeyRecord = collections.namedtuple('KeyRecord', 'fingerprint state claimed_at expires_at')


def _expired(record, now):
    return record.expires_at is not None and record.expires_at <= now


def decide_claim(record, fp, now):
    """What a stored key (or None) means for a new claim with fingerprint `fp`.

    TAKE: claim it (there is none, it expired, or its holder's claim went
    stale); REPLAY: its recorded outcome answers. Raises KeyReused, KeyInFlight.
    """
    if record is None or _expired(record, now):
        return TAKE
    if record.fingerprint != fp:
        raise KeyReused()
    if record.state == DONE:
        return REPLAY
    if record.claimed_at is not None and record.claimed_at <= now - STALE_CLAIM_SECONDS:
        return TAKE
    raise KeyInFlight()


def check_replayable(record, fp, now):
    """Raise unless the stored key (or None) holds an outcome to replay for `fp`.

    Used after a lost claim: the key's current holder decides the answer.
    """
    if record is None or _expired(record, now):
        raise KeyInFlight()  # released or expired: a retry claims it afresh
    if record.fingerprint != fp:
        raise KeyReused()
    if record.state != DONE:
        raise KeyInFlight()


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
