"""Schemathesis fuzzes the running API against its own served OpenAPI document.

All checks run (server errors, documented status codes, content types,
headers and bodies conforming to the document, schema-valid input accepted,
schema-breaking input rejected, auth not ignored, stateful sequences through
the document's links), with a fixed seed so a run repeats, on both stores.
Settings live in tests/schemathesis.toml, hooks in tests/fuzz_hooks.py.

FUZZ_EXAMPLES (examples per operation, default 200) and FUZZ_SEED tune a run;
`make fuzz` runs this module alone.
"""
import os
import subprocess
import sys
import uuid

import pytest

from servers import LocalServer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = 'fuzz-%s' % uuid.uuid4().hex
EXAMPLES = os.environ.get('FUZZ_EXAMPLES', '200')
SEED = os.environ.get('FUZZ_SEED', '20261125')

pytestmark = [pytest.mark.slow, pytest.mark.http]


def run_schemathesis(server, report_dir):
    st = os.path.join(os.path.dirname(sys.executable), 'st')
    env = dict(os.environ, CARS_FUZZ_TOKEN=TOKEN, SCHEMATHESIS_HOOKS='fuzz_hooks',
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get('PYTHONPATH', '')]))
    command = [st, '--config-file', os.path.join(HERE, 'schemathesis.toml'), '--no-color',
               'run', server.url + '/api/v1/openapi.json',
               # No --checks: every check is on by default, and `--checks all` would
               # override the one per-operation exception in schemathesis.toml.
               '--seed', SEED, '--max-examples', EXAMPLES,
               # One worker: two would race each other's state (and 2 cores run the server too).
               '--workers', '1', '--generation-database', 'none',
               '--report', 'junit', '--report-dir', str(report_dir)]
    return subprocess.run(command, cwd=str(report_dir), env=env, capture_output=True,
                          text=True, timeout=900)


def assert_no_failures(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, 'schemathesis found problems:\n' + output[-20000:]
    assert 'No issues found' in output, output[-5000:]


@pytest.mark.timeout(900)
def test_fuzzing_the_sqlite_store_finds_nothing_the_document_does_not_promise(tmp_path):
    env = {'CARS_STORE': 'sqlite', 'CARS_DB_PATH': str(tmp_path / 'cars.db'),
           'CARS_AUTH_TOKENS': TOKEN}
    with LocalServer(env=env, kind='dev', log_path=str(tmp_path / 'server.log')) as server:
        result = run_schemathesis(server, tmp_path)
    assert_no_failures(result)


@pytest.mark.timeout(900)
def test_fuzzing_the_dynamodb_store_finds_nothing_the_document_does_not_promise(
        tmp_path, dynamodb_endpoint):
    from stores import new_dynamodb_table
    client, name = new_dynamodb_table(dynamodb_endpoint)
    env = {'CARS_STORE': 'dynamodb', 'CARS_TABLE': name,
           'AWS_ENDPOINT_URL_DYNAMODB': dynamodb_endpoint, 'CARS_AUTH_TOKENS': TOKEN}
    try:
        with LocalServer(env=env, kind='dev', log_path=str(tmp_path / 'server.log')) as server:
            result = run_schemathesis(server, tmp_path)
    finally:
        client.delete_table(TableName=name)
    assert_no_failures(result)
