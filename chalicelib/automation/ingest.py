"""SQS ingest: one car per message, written once per message id, failures reported per message.

Exactly-once writes use the API's idempotency keys in the namespace `sqs`,
keyed by the SQS message id.
"""
import json
import logging

from chalicelib import observability
from chalicelib.domain import cars, idempotency
from chalicelib.store import get_store

log = logging.getLogger('cars.automation')


class BadMessage(Exception):
    def __init__(self, errors):
        super().__init__('; '.join('%s: %s' % (e['field'] or 'body', e['message'])
                                   for e in errors))
        self.errors = errors


def _message_car(body):
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError) as e:
        raise BadMessage([{'field': '', 'message': 'the body is not valid JSON: %s' % e}])
    try:
        return cars.validate_new(data)
    except cars.InvalidCar as e:
        raise BadMessage(e.errors)


def _id_outcome(record):
    """What a create under an idempotency key records (and a redelivery replays)."""
    return {'id': record['id']}


def ingest_one(store, message_id, body):
    """Write the car one message carries, once per message id; return the car's id."""
    fields = _message_car(body)
    car = {k: fields[k] for k in cars.FIELDS}
    car_id = fields.get('id')
    fp = idempotency.fingerprint(dict(car, id=car_id))
    if car_id is None:
        # The car and the message's outcome are one write: no crash creates two.
        outcome, replayed = idempotency.create_once(store, message_id, fp, car, _id_outcome,
                                                    namespace='sqs')
    else:
        # Create-or-replace is idempotent by itself: a redelivery after a crash
        # between the write and its record writes the same car again.
        def action():
            store.replace(car_id, car)
            return {'id': car_id}
        outcome, replayed = idempotency.run_once(store, message_id, fp, action,
                                                 namespace='sqs')
    if replayed:
        log.info('message %s was already written (car %s); skipped', message_id, outcome['id'])
    return outcome['id']


def ingest_messages(records, store=None):
    """Write one car per SQS message; return the Lambda partial batch response.

    Every failing message is reported as a batch item failure, so the rest of
    the batch is kept: a transient failure (store busy, throttled) is retried
    by SQS; an invalid car fails every time and, after the queue's
    maxReceiveCount, lands in the dead-letter queue. Invalid cars are logged at
    WARNING with their message id and field errors (the sender's mistake, not
    ours: the dead-letter queue's alarm is the signal).
    """
    store = store or get_store()
    failures = []
    rejected = 0
    for record in records:
        message_id = record['messageId']
        observability.bind(messageId=message_id)
        try:
            ingest_one(store, message_id, record.get('body'))
        except BadMessage as e:
            log.warning('rejected message %s (it will reach the dead-letter queue): %s',
                        message_id, e)
            failures.append(message_id)
            rejected += 1
        except idempotency.KeyInFlight:
            log.warning('message %s is being written by another delivery; retry later',
                        message_id)
            failures.append(message_id)
        except cars.CarError as e:
            log.warning('message %s not written: %s', message_id, e)
            failures.append(message_id)
            rejected += 1
        except Exception:  # noqa: BLE001 - the message is retried, never lost
            log.exception('message %s failed; SQS will retry it', message_id)
            failures.append(message_id)
    observability.bind(messageId=None)
    observability.count('IngestMessagesAccepted', len(records) - len(failures))
    observability.count('IngestMessagesRejected', rejected)
    observability.count('IngestMessagesRetried', len(failures) - rejected)
    return {'batchItemFailures': [{'itemIdentifier': m} for m in failures]}
