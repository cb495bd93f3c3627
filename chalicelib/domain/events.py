"""Change events: one shape for both stores.

Every create, update and delete of a car becomes an event:

    {"id": ..., "type": "car.created" | "car.updated" | "car.deleted",
     "car_id": "8273", "time": ISO 8601, "source": "dynamodb" | "sqlite",
     "before": CAR or null, "after": CAR or null}

where CAR is the public car plus `version`, `created_at` and `updated_at`.
Deployed, events come from the DynamoDB stream (`from_stream_record`) and go to
SNS; locally the sqlite store writes them to its `outbox` table in the same
transaction as the car (`outbox_insert`), and `python -m chalicelib.cli events`
prints them. Both paths build the event with `build_event`.
"""
import json
import os

from chalicelib.domain import cars
from chalicelib.store.base import iso_utc, now_iso

CREATED = 'car.created'
UPDATED = 'car.updated'
DELETED = 'car.deleted'
CAR_PK = 'CAR'

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
)
"""


def snapshot(record):
    if record is None:
        return None
    out = cars.public(record)
    out['version'] = record.get('version')
    out['created_at'] = record.get('created_at')
    out['updated_at'] = record.get('updated_at')
    return out


def build_event(before, after, event_id, source, at=None):
    """The event for a change from `before` to `after` (either may be None)."""
    if before is None and after is None:
        raise ValueError('a change needs a car before or after it')
    kind = CREATED if before is None else DELETED if after is None else UPDATED
    car = after or before
    return {'id': event_id, 'type': kind, 'car_id': car['id'],
            'time': at or (after or {}).get('updated_at') or now_iso(),
            'source': source, 'before': snapshot(before), 'after': snapshot(after)}


# --- DynamoDB stream ------------------------------------------------------------

def _is_car(image):
    return bool(image) and image.get('pk', {}).get('S') == CAR_PK


def from_stream_record(record):
    """The event for one DynamoDB stream record (a dict), or None if not a car."""
    from chalicelib.store.dynamodb import from_item
    ddb = record.get('dynamodb') or {}
    keys = ddb.get('Keys') or {}
    if keys.get('pk', {}).get('S') != CAR_PK:
        return None
    old, new = ddb.get('OldImage'), ddb.get('NewImage')
    before = from_item(old) if _is_car(old) else None
    after = from_item(new) if _is_car(new) else None
    if before is None and after is None:
        return None
    at = None
    stamp = ddb.get('ApproximateCreationDateTime')
    if after is None and stamp is not None:
        at = iso_utc(float(stamp))
    # The stream's eventID is stable across Lambda retries, so a consumer can
    # drop an event it has already seen.
    return build_event(before, after, record.get('eventID') or os.urandom(16).hex(), 'dynamodb', at)


# --- the sqlite outbox ------------------------------------------------------------

def outbox_insert(conn, before, after):
    """Record a change inside the caller's transaction."""
    event = build_event(before, after, os.urandom(16).hex(), 'sqlite',
                        None if after is not None else now_iso())
    conn.execute('INSERT INTO outbox (event) VALUES (?)',
                 (json.dumps(event, separators=(',', ':'), ensure_ascii=False),))
    return event


def outbox_read(conn, after_seq=0, limit=1000):
    """[(seq, event)] with seq > after_seq, oldest first."""
    rows = conn.execute('SELECT seq, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?',
                        (after_seq, limit)).fetchall()
    return [(seq, json.loads(text)) for seq, text in rows]
