"""Change events: DynamoDB stream records to the SNS topic, in stream order, 10 a PublishBatch."""
import json
import logging

from chalicelib import observability
from chalicelib.automation import aws

log = logging.getLogger('cars.automation')

SNS_BATCH = 10

# The stream app.py's handler names; deploy/resources.py replaces it with the table's.
STREAM_ARN_PLACEHOLDER = ('arn:aws:dynamodb:us-east-1:123456789012:table/cars/'
                          'stream/1970-01-01T00:00:00.000')


def _entries(evts):
    return [{'Id': str(i),
             'Message': json.dumps(e, ensure_ascii=False, separators=(',', ':')),
             # Subscribers can filter on the type without parsing the body.
             'MessageAttributes': {'type': {'DataType': 'String', 'StringValue': e['type']},
                                   'car_id': {'DataType': 'String', 'StringValue': e['car_id']}}}
            for i, e in enumerate(evts)]


def publish_stream_records(records, sns=None, topic=None):
    """Publish change events for a DynamoDB stream batch; return Lambda's partial batch response.

    Events go out in stream order, 10 a PublishBatch. At the first event SNS
    refuses (an entry in Failed, or the whole request failing), publishing
    stops and that record's SequenceNumber is reported as the batch item
    failure: for streams, Lambda checkpoints the records before it and retries
    from it (the template sets ReportBatchItemFailures). Records after it are
    retried too, so an event may be delivered twice: consumers drop repeats by
    `id` (the stream's eventID).
    """
    # Imported here: the API loads this module for its event wiring, and on
    # sqlite its cold start should not pay for the DynamoDB item layout.
    from chalicelib.store.dynamodb_items import event_from_stream_record
    pairs = []
    for record in records:
        observability.bind(eventId=record.get('eventID'))
        event = event_from_stream_record(record)
        if event is not None:
            pairs.append((record, event))
    observability.bind(eventId=None)
    if not pairs:
        return {'batchItemFailures': []}
    sns = sns or aws.client('sns')
    topic = topic or aws.topic_arn()
    for start in range(0, len(pairs), SNS_BATCH):
        chunk = pairs[start:start + SNS_BATCH]
        try:
            result = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=_entries(
                [event for _, event in chunk]))
            refused = sorted(int(f['Id']) for f in result.get('Failed') or ())
        except Exception:  # noqa: BLE001 - reported to Lambda, which retries from here
            log.exception('publishing %d change event(s) failed', len(chunk))
            refused = [0]
        if refused:
            observability.count('ChangeEventsPublished', start + refused[0])
            record = chunk[refused[0]][0]
            sequence = record.get('dynamodb', {}).get('SequenceNumber')
            observability.bind(eventId=record.get('eventID'))
            log.error('SNS refused %d of %d change event(s); Lambda retries the stream '
                      'from record %s (event %s)', len(refused), len(chunk), sequence,
                      record.get('eventID'))
            observability.bind(eventId=None)
            return {'batchItemFailures': [{'itemIdentifier': sequence}]}
    observability.count('ChangeEventsPublished', len(pairs))
    return {'batchItemFailures': []}
