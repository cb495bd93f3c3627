"""The store interface every implementation keeps.

A record is a dict: the six car fields plus `version` (1 on create, +1 on every
write), `rev` (a random token replaced on every write; the ETag carries it),
`created_at` and `updated_at` (ISO 8601 UTC). Preconditions are checked by the
write itself, atomically, never by a read before it.

`expect` on writes: None (no precondition), '*' (the car must exist), or a
tuple of revisions one of which must be current (If-Match).
"""
import time


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


class Store(object):
    kind = None

    def get(self, car_id):
        """The record, or None."""
        raise NotImplementedError

    def create(self, fields, car_id=None):
        """Insert a new car; assign a free id when `car_id` is None.

        Raises CarExists, IdSpaceExhausted.
        """
        raise NotImplementedError

    def update(self, car_id, changes, expect=None):
        """Apply `changes` (None clears a field). Raises CarNotFound, VersionMismatch."""
        raise NotImplementedError

    def replace(self, car_id, fields, expect=None, only_if_absent=False):
        """Create or replace; return (record, created). Raises VersionMismatch."""
        raise NotImplementedError

    def delete(self, car_id, expect=None):
        """Delete; return the old record. Raises CarNotFound, VersionMismatch."""
        raise NotImplementedError

    def list(self, filters, after, limit):
        """Cars with id > after (or all), matching filters, in id order.

        Returns (records, more) with len(records) <= limit.
        """
        raise NotImplementedError

    def put_many(self, cars):
        """Create or replace many validated cars (each with an id); return how many."""
        raise NotImplementedError

    def count(self):
        """How many cars there are."""
        raise NotImplementedError

    def ping(self):
        """Raise if the store cannot be reached."""
        raise NotImplementedError

    def close(self):
        pass
