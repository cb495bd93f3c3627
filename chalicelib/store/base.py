"""The store interface every implementation keeps.

A record is a dict: the six car fields plus `version` (1 on create, +1 on every
write), `rev` (a random token replaced on every write; the ETag carries it),
`created_at` and `updated_at` (ISO 8601 UTC). Preconditions are checked by the
write itself, atomically, never by a read before it.

`expect` on writes: None (no precondition), '*' (the car must exist), or a
tuple of revisions one of which must be current (If-Match).
`only_if_absent` on writes (If-None-Match: *): write only where no car
exists. A replace then creates and never replaces; an update or a delete,
which need a car, never write: VersionMismatch on a car, CarNotFound where
there is none. The write's own check decides, like `expect`'s.

`also` on create: another write committed atomically with the new car, so
that a caller (chalicelib/domain/idempotency.py) can record what the create produced
in the same write: both happen, or neither does. Its form depends on the store:
sqlite calls `also(conn, record)` inside the car's transaction, after the
insert; DynamoDB calls `also(record)` for a TransactWriteItems entry (e.g.
{'Update': {...}} with a ConditionExpression) sent in one transaction with the
car's Put. A refusal writes no car and raises AlsoRefused: the sqlite callable
raises it (any exception rolls the car back), DynamoDB raises it when the
entry's condition fails.
"""
import time

# The 412 detail when `only_if_absent` finds a car.
ABSENT_ONLY = 'car %s exists, and If-None-Match: * allows the write only where none does'


def iso_utc(seconds):
    """ISO 8601 UTC with milliseconds, as datetime.isoformat gives it.

    Built with `time` rather than `datetime`, whose import a read never needs
    (cold start).
    """
    whole = int(seconds)
    return '%s.%03d+00:00' % (time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole)),
                              int((seconds - whole) * 1000))


def now_iso():
    return iso_utc(time.time())


class AlsoRefused(Exception):
    """The write given as `also=` was refused (its condition failed): no car was written."""


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
    kind = None

    def get(self, car_id):
        """The record, or None."""
        raise NotImplementedError

    def create(self, fields, car_id=None, also=None):
        """Insert a new car; assign a free id when `car_id` is None.

        `also` (see above) is written in the same atomic write as the car; it is
        called once per id tried, with that attempt's record. Without it a
        create is one write as before (DynamoDB: one PutItem).
        Raises CarExists, IdSpaceExhausted, AlsoRefused.
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

        Returns (records, more) with len(records) <= limit.
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

    def ping(self):
        """Raise if the store cannot be reached."""
        raise NotImplementedError

    def close(self):
        pass
