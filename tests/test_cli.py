"""The command line: python -m chalicelib.cli init/import/export/seed/copy/events."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from chalicelib.automation.export import all_cars
from chalicelib.domain import cars
from chalicelib import store as store_module
from chalicelib.cli import cli


@pytest.fixture
def run(sqlite_path, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'sqlite')

    def run(*args, ok=True):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return run


def local_store():
    return store_module.get_store('sqlite')


def test_init_creates_the_sqlite_store(run, sqlite_path):
    assert 'created' in run('init').output
    assert os.path.exists(sqlite_path)
    assert 'ready' in run('init').output


def test_init_creates_the_dynamodb_table(dynamodb_endpoint, monkeypatch):
    import uuid

    import boto3
    name = 'cars-cli-%s' % uuid.uuid4().hex[:8]
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    monkeypatch.setenv('CARS_TABLE', name)
    monkeypatch.setenv('AWS_ENDPOINT_URL_DYNAMODB', dynamodb_endpoint)
    result = CliRunner().invoke(cli, ['init'])
    assert result.exit_code == 0 and 'created' in result.output
    assert 'already exists' in CliRunner().invoke(cli, ['init']).output
    client = boto3.client('dynamodb', endpoint_url=dynamodb_endpoint)
    table = client.describe_table(TableName=name)['Table']
    assert table['StreamSpecification']['StreamViewType'] == 'NEW_AND_OLD_IMAGES'
    client.delete_table(TableName=name)


def test_seed_export_and_import_round_trip(run, tmp_path):
    run('seed', '50', '--random-seed', '7')
    for name in ('cars.csv', 'cars.jsonl'):
        run('export', str(tmp_path / name))
    exported = [json.loads(line) for line in (tmp_path / 'cars.jsonl').read_text().splitlines()]
    assert len(exported) == 50
    assert (tmp_path / 'cars.csv').read_text().splitlines()[0] == 'id,make,model,year,trans,color'
    for car in exported:
        local_store().delete(car['id'])
    assert 'imported 50 car(s)' in run('import', str(tmp_path / 'cars.csv')).output
    again = [cars.public(r) for r in all_cars(local_store())]
    assert again == exported


BAD_CSV = ('make,model,year,trans,color\n'
           'Toyota,Corolla,2015,automatic,blue\n'
           'Ford,Model T,1700,,\n'
           'Honda,,2010,,\n')


def test_a_bad_file_is_refused_with_line_and_field_and_nothing_is_written(run, tmp_path):
    path = tmp_path / 'bad.csv'
    path.write_text(BAD_CSV)
    result = run('import', str(path), ok=False)
    assert result.exit_code == 1
    assert 'line 3: year:' in result.output and 'line 4: model:' in result.output
    assert 'nothing was imported' in result.output
    assert local_store().count() == 0


def test_skip_invalid_writes_the_valid_rows_and_lists_the_rest(run, tmp_path):
    path = tmp_path / 'bad.csv'
    path.write_text(BAD_CSV)
    result = run('import', '--skip-invalid', str(path))
    assert 'imported 1 car(s)' in result.output and 'line 3: year:' in result.output
    assert local_store().count() == 1
    # The same file again: the id-less row was imported already, so no second car.
    run('import', '--skip-invalid', str(path))
    assert local_store().count() == 1


def test_an_unreadable_file_is_refused_clearly(run, tmp_path):
    path = tmp_path / 'odd.csv'
    path.write_text('make,model,colour\nFord,Ka,red\n')
    result = run('import', str(path), ok=False)
    assert result.exit_code == 1 and 'line 1' in result.output and 'colour' in result.output
    path = tmp_path / 'cars.txt'
    path.write_text('x')
    assert 'unsupported file type' in run('import', str(path), ok=False).output


def test_copy_moves_a_local_inventory_to_dynamodb_and_back(run, dynamodb_table, monkeypatch):
    run('seed', '30', '--random-seed', '3')
    local = [cars.public(r) for r in all_cars(local_store())]
    assert 'copied 30 car(s)' in run('copy', '--from', 'sqlite', '--to', 'dynamodb').output
    remote = store_module.get_store('dynamodb')
    assert [cars.public(r) for r in all_cars(remote)] == local
    for car in local[:10]:
        local_store().delete(car['id'])
    run('copy', '--from', 'dynamodb', '--to', 'sqlite')
    assert [cars.public(r) for r in all_cars(local_store())] == local


def test_events_prints_the_outbox_as_json_lines(run):
    car = local_store().create({'make': 'Kia', 'model': 'Rio', 'year': 2012,
                                'trans': None, 'color': None})
    local_store().delete(car['id'])
    lines = run('events').output.splitlines()
    printed = [json.loads(line) for line in lines]
    assert [e['type'] for e in printed] == ['car.created', 'car.deleted']
    assert [e['seq'] for e in printed] == [1, 2]
    assert run('events', '--after', '1').output.count('\n') == 1


def test_the_module_runs_as_a_program(sqlite_path):
    env = dict(os.environ, CARS_STORE='sqlite', CARS_DB_PATH=sqlite_path)
    out = subprocess.run([sys.executable, '-m', 'chalicelib.cli', '--help'], env=env,
                         capture_output=True, text=True, check=True).stdout
    for command in ('init', 'import', 'export', 'seed', 'copy', 'events'):
        assert command in out


def test_csv_export_neutralises_formulas_and_import_gives_the_same_cars_back(run, tmp_path):
    """OWASP CSV injection: a cell starting with = + - @ (tab, CR) gets a leading ' in
    the CSV, and so does one that already starts with quotes then one of those; the
    import strips exactly that one quote. JSON Lines is written verbatim."""
    makes = ['=1+1', '+SUM(1)', '-2+3', '@HYPERLINK("x")', "'=1+1", "''@x", "'plain", "'",
             'Ford']
    store = local_store()
    for make in makes:
        store.create({'make': make, 'model': '=cmd|/c calc', 'year': 2001, 'color': '-red'})
    before = [cars.public(r) for r in all_cars(store)]
    run('export', str(tmp_path / 'cars.csv'))
    run('export', str(tmp_path / 'cars.jsonl'))
    cells = (tmp_path / 'cars.csv').read_text().splitlines()[1:]
    assert sorted(c.split(',')[1] for c in cells) == sorted(
        ["'=1+1", "'+SUM(1)", "'-2+3", '"\'@HYPERLINK(""x"")"', "''=1+1", "'''@x", "'plain",
         "'", 'Ford'])
    assert all(",'=cmd|/c calc,2001,,'-red" in c for c in cells)
    assert [json.loads(l) for l in (tmp_path / 'cars.jsonl').read_text().splitlines()] == before
    for car in before:
        store.delete(car['id'])
    assert 'imported 9 car(s)' in run('import', str(tmp_path / 'cars.csv')).output
    assert [cars.public(r) for r in all_cars(local_store())] == before


def test_a_jsonl_export_with_unicode_line_separators_imports_again(run, tmp_path):
    """U+2028 and U+2029 are valid inside a field and JSON writes them raw; only '\\n'
    ends a JSON Lines record."""
    store = local_store()
    store.create({'make': 'Line\u2028Sep', 'model': 'Para\u2029Sep', 'year': 2001,
                  'color': 'a\u2028\u2029b'})
    store.create({'make': 'Ford', 'model': 'Ka', 'year': 2002})
    before = [cars.public(r) for r in all_cars(store)]
    run('export', str(tmp_path / 'cars.jsonl'))
    assert '\u2028' in (tmp_path / 'cars.jsonl').read_text(encoding='utf-8')
    for car in before:
        store.delete(car['id'])
    assert 'imported 2 car(s)' in run('import', str(tmp_path / 'cars.jsonl')).output
    assert [cars.public(r) for r in all_cars(local_store())] == before


def test_jsonl_lines_end_at_newline_or_crlf_only():
    from chalicelib.automation import files
    text = ('{"make": "A\u2028B", "model": "M", "year": 2001}\r\n'
            '\r\n'
            'not json\n'
            '{"make": "C\u2029D\x85E", "model": "M", "year": 2002}')
    rows = files.read_rows('x.jsonl', text.encode('utf-8'))
    assert [(n, r if isinstance(r, dict) else 'error') for n, r in rows] == [
        (1, {'make': 'A\u2028B', 'model': 'M', 'year': 2001}),
        (3, 'error'),
        (4, {'make': 'C\u2029D\x85E', 'model': 'M', 'year': 2002})]
