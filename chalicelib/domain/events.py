"""Change events: the one shape both stores give a car's create, update or delete.

    {"id": ..., "type": "car.created" | "car.updated" | "car.deleted",
     "car_id": "8273", "time": ISO 8601, "source": "dynamodb" | "sqlite",
     "before": CAR or null, "after": CAR or null}

where CAR is the public car plus `version`, `created_at` and `updated_at`.
"""
from chalicelib.domain import cars
from chalicelib.store.base import now_iso

CREATED = 'car.created'
UPDATED = 'car.updated'
DELETED = 'car.deleted'


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
