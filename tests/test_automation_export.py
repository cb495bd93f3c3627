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
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat
        before = today()
        with Client(app) as client:
            client.lambda_.invoke('scheduled_export', {
                'version': '0', 'id': 'x', 'detail-type': 'Scheduled Event',
                'source': 'aws.events', 'account': '123456789012', 'time': 'now',
                'region': 'us-east-1', 'resources': [], 'detail': {}})
        # The export is filed under the day it ran; across midnight that is either.
        day = before if s3.list_objects_v2(
            Bucket='cars-export-test', Prefix='exports/%s/' % before).get('KeyCount') else today()

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


# Spreadsheet formula injection (OWASP "CSV Injection"): a cell starting with one
# of = + - @ tab CR is a formula to Excel, LibreOffice and Google Sheets.
FORMULAS = {'1111': '=1+1', '1112': '+SUM(1)', '1113': '-2+3', '1114': '@HYPERLINK("x")',
            '1115': "'=already quoted", '1116': "''+twice", '1117': "'plain", '1118': 'Ford'}


def test_the_daily_csv_export_neutralises_formula_cells_and_jsonl_is_verbatim(
        sqlite_path, monkeypatch):
    from chalicelib import store as store_module
    from chalicelib.automation.export import export_inventory
    monkeypatch.setenv('CARS_STORE', 'sqlite')
    store_module.reset()
    store = store_module.get_store()
    store.put_many([{'id': i, 'make': make, 'model': '-', 'year': 2001, 'trans': None,
                     'color': '=red'} for i, make in FORMULAS.items()])
    with mock_aws():
        import boto3
        s3 = boto3.client('s3', region_name='us-east-1')
        s3.create_bucket(Bucket='cars-export-test')
        result = export_inventory('cars-export-test', '2024-01-02', s3, store)

        def read(key):
            return s3.get_object(Bucket='cars-export-test', Key=key)['Body'].read().decode()
        lines = [json.loads(line) for line in read(result['keys']['jsonl']).splitlines()]
        rows = list(csv.DictReader(io.StringIO(read(result['keys']['csv']))))
    assert {r['id']: r['make'] for r in rows} == {
        '1111': "'=1+1", '1112': "'+SUM(1)", '1113': "'-2+3", '1114': '\'@HYPERLINK("x")',
        '1115': "''=already quoted", '1116': "'''+twice", '1117': "'plain", '1118': 'Ford'}
    assert {(r['model'], r['color'], r['year']) for r in rows} == {("'-", "'=red", '2001')}
    assert {c['id']: c['make'] for c in lines} == FORMULAS
    assert {(c['model'], c['color']) for c in lines} == {('-', '=red')}


def test_csv_cells_starting_with_a_tab_or_carriage_return_are_neutralised_too():
    from chalicelib.automation import files
    out = io.StringIO()
    files.write_rows(out, [{'id': '1111', 'make': '\t=1+1', 'model': '\r=2', 'year': 2001,
                            'trans': "'\t", 'color': 'x=1'}], 'csv')
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert row == {'id': '1111', 'make': "'\t=1+1", 'model': "'\r=2", 'year': '2001',
                   'trans': "''\t", 'color': 'x=1'}
    # and the reader gives back what was written
    (_, read), = files.read_rows('x.csv', out.getvalue())
    assert read == {'id': '1111', 'make': '\t=1+1', 'model': '\r=2', 'year': '2001',
                    'trans': "'\t", 'color': 'x=1'}
