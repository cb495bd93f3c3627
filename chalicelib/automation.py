"""Event-driven automation: queue ingest, bulk import, change events, export.

The handlers in app.py translate Lambda events into calls here. Nothing heavy
is imported at module level: boto3 is imported inside the functions that talk
to AWS, so the API's cold start never pays for automation.
"""
import os

IMPORT_PREFIX = 'imports/'
REPORT_PREFIX = 'reports/'
EXPORT_PREFIX = 'exports/'

# Placeholders the deployment template replaces with the real resources; a
# packager run with CARS_BUCKET set gets the real bucket name in the pattern.
BUCKET_PLACEHOLDER = 'cars-import-bucket'
STREAM_ARN_PLACEHOLDER = ('arn:aws:dynamodb:us-east-1:123456789012:table/cars/'
                          'stream/1970-01-01T00:00:00.000')

# S3 -> EventBridge, not Chalice's on_s3_event: on_s3_event configures the
# bucket notification through an API call at deploy time and cannot be
# expressed in `chalice package`'s CloudFormation template; an EventBridge rule can.
IMPORT_EVENT_PATTERN = {
    'source': ['aws.s3'],
    'detail-type': ['Object Created'],
    'detail': {
        'bucket': {'name': [os.environ.get('CARS_BUCKET') or BUCKET_PLACEHOLDER]},
        'object': {'key': [{'prefix': IMPORT_PREFIX}]},
    },
}


def ingest_messages(records):
    """Write one car per SQS message; return the Lambda batch response."""
    raise NotImplementedError


def import_object_created(detail):
    """Import the object an S3 "Object Created" event names; return the report."""
    raise NotImplementedError


def publish_stream_records(records):
    """Publish change events for the car records of a DynamoDB stream batch."""
    raise NotImplementedError


def export_inventory(bucket=None, day=None):
    """Write the whole inventory as JSON Lines and CSV under exports/<date>/."""
    raise NotImplementedError
