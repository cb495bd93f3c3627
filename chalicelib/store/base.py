"""The store interface every implementation keeps, and the values it passes.

A record is a dict: the six car fields plus `version` (1 on create, +1 on every
write), `rev` (a random token replaced on every write; the ETag carries it),
`created_at` and `updated_at` (ISO 8601 UTC).
"""
import datetime
import json
import time

# The 412 detail when `only_if_absent` finds a car.
ABSENT_ONLY = 'car %s exists, and If-None-Match: * allows the write only where none does'


def iso_utc(seconds):
    """ISO 8601 UTC with milliseconds."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec='milliseconds')


def now_iso():
    return iso_utc(time.time())


def encode_outcome(outcome):
    """An idempotency key's outcome as the JSON text both stores keep."""
    return json.dumps(outcome, separators=(',', ':'))


class KeyOutcome(object):
    """An idempotency key's outcome for `Store.create` to record with the new car.

    `key` and `token` name a claim made with `Store.claim_key`;
    `outcome_for(record)` gives the outcome to record for the car written.
    """

    def __init__(self, key, token, outcome_for):
        self.key = key
        self.token = token
        self.outcome_for = outcome_for


class KeyClaimLost(Exception):
    """The claim on an idempotency key was taken over by another request: no car was written."""


class WriteIncomplete(Exception):
    """A bulk write gave up (attempts or time ran out) with some cars unwritten.

    `written` is how many were written; `unwritten` the ids that were not.
    Nothing is lost silently: the caller reports these ids.
    """

    def __init__(self, written, unwritten, reason):
        super().__init__('%d car(s) not written: %s' % (len(unwritten), reason))
        self.written = written
        self.unwritten = list(unwritten)
        self.reason = reason


class Store(object):
    """Cars, and the idempotency keys recorded beside them.

    Every write checks its precondition itself, atomically, never by a read
    before it. On writes, `expect` is None (no precondition), '*' (the car
    must exist) or a tuple of revisions one of which must be current
    (If-Match). `only_if_absent` (If-None-Match: *) writes only where no car
    exists: a replace then only creates; an update or a delete, which need a
    car, never write (VersionMismatch on a car, CarNotFound where there is none).
    """

    # --- cars -----------------------------------------------------------------

    def get(self, car_id):
        """The record, or None."""
        raise NotImplementedError

    def create(self, fields, car_id=None, key_outcome=None):
        """Insert a new car; assign a free id when `car_id` is None.

        With `key_outcome` (a KeyOutcome), the car and the key's outcome are
        one atomic write: both happen, or neither does. `outcome_for` is
        called once per id tried, with that attempt's record. When the claim
        is no longer the caller's, nothing is written.
        Raises CarExists, IdSpaceExhausted, KeyClaimLost.
        """
        raise NotImplementedError

    def update(self, car_id, changes, expect=None, only_if_absent=False):
        """Apply `changes` (None clears a field). Raises CarNotFound, VersionMismatch."""
        raise NotImplementedError

    def replace(self, car_id, fields, expect=None, only_if_absent=False):
        """Create or replace; return (record, created). Raises VersionMismatch."""
        raise NotImplementedError

    def delete(self, car_id, expect=None, only_if_absent=False):
        """Delete; return the old record. Raises CarNotFound, VersionMismatch."""
        raise NotImplementedError

    def list(self, filters, after, limit):
        """Cars with id > after (or all), matching filters, in id order.

        Returns (records, resume_after) with len(records) <= limit.
        `resume_after` is None when no match is left after `records`; otherwise
        the id to pass as `after` for the rest. A store may stop reading before
        `limit` matches (DynamoDB bounds the items one request reads), so
        `records` may be short or empty while `resume_after` is not None, and
        `resume_after` may be past the last record's id (the last id read).
        Following `resume_after` until it is None yields every match once.
        """
        raise NotImplementedError

    def put_many(self, cars, deadline=None):
        """Create or replace many validated cars (each with an id); return how many.

        Raises WriteIncomplete when the store gives up on some of them (it may
        stop retrying at `deadline`, a time.monotonic() value).
        """
        raise NotImplementedError

    def count(self):
        """How many cars there are."""
        raise NotImplementedError

    # --- idempotency keys (the rules: chalicelib/domain/idempotency.py) -----------

    def claim_key(self, key, fingerprint):
        """Claim `key` for a request with `fingerprint`, atomically.

        Returns (token, None) when the claim is ours, or (None, outcome) when
        the key already holds an outcome for the same fingerprint (a replay).
        Raises KeyInFlight, KeyReused.
        """
        raise NotImplementedError

    def record_key_outcome(self, key, token, outcome):
        """Record `outcome` under `key` if the claim `token` is still ours and in flight."""
        raise NotImplementedError

    def release_key(self, key, token):
        """Forget `key` if the claim `token` is still ours and in flight, so a retry runs."""
        raise NotImplementedError

    def current_key_outcome(self, key, fingerprint):
        """The outcome recorded under `key` by whoever holds it now.

        Raises KeyInFlight while none is recorded, KeyReused for another fingerprint.
        """
        raise NotImplementedError

    # --- the rest ---------------------------------------------------------------

    def changes_after(self, seq, limit=1000):
        """[(seq, event)] of the change events after sequence number `seq`, oldest first.

        Only a store that keeps an outbox (sqlite) has them; DynamoDB's go
        through its stream (dynamodb_items.event_from_stream_record).
        """
        raise NotImplementedError

    def ping(self):
        """Raise if the store cannot be reached."""
        raise NotImplementedError

    def close(self):
        pass
