"""The scheduled export: the whole inventory to the bucket as JSON Lines and CSV."""
import csv
import datetime
import io
import json

from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib.domain import cars


def test_the_daily_export_writes_every_car_as_jsonl_and_csv(store, monkeypatch):
    monkeypatch.setenv('CARS_BUCKET', 'cars-export-test')
    store.put_many([{'id': i, 'make': 'Ford', 'model': 'Ka', 'year': 2001,
                     'trans': None, 'color': 'red, dark'}
                    for i in cars.all_assignable_ids()[:1500]])
    with mock_aws():
        import boto3
        s3 = boto3.client('s3', region_name='us-east-1')
        s3.create_bucket(Bucket='cars-export-test')
        with Client(app) as client:
            client.lambda_.invoke('scheduled_export', {
                'version': '0', 'id': 'x', 'detail-type': 'Scheduled Event',
                'source': 'aws.events', 'account': '123456789012', 'time': 'now',
                'region': 'us-east-1', 'resources': [], 'detail': {}})
        day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()

        def read(key):
            return s3.get_object(Bucket='cars-export-test', Key=key)['Body'].read().decode()
        lines = [json.loads(line) for line in read('exports/%s/cars.jsonl' % day).splitlines()]
        rows = list(csv.DictReader(io.StringIO(read('exports/%s/cars.csv' % day))))
    assert [c['id'] for c in lines] == cars.all_assignable_ids()[:1500]
    assert lines[0] == {'id': '1111', 'make': 'Ford', 'model': 'Ka', 'year': 2001,
                        'trans': None, 'color': 'red, dark'}
    assert len(rows) == 1500
    assert rows[0] == {'id': '1111', 'make': 'Ford', 'model': 'Ka', 'year': '2001',
                       'trans': '', 'color': 'red, dark'}
