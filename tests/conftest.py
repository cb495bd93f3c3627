"""Shared pytest fixtures and session setup.

Keep this file to fixtures and hooks that several test modules use; put
one module's helpers in that module.
"""
import os
import sys

import pytest

import missing_tools
from dynamodb_local import DynamoDBLocal, DynamoDBLocalMissing, INSTALL_HINT

# Fake credentials and a region for the whole session, set at import so that no
# boto3 client or moto mock built by a test can pick up real ones by accident.
# Values already in the environment (CI, a developer's choice) are kept.
for _name, _value in (
    ('AWS_ACCESS_KEY_ID', 'testing'),
    ('AWS_SECRET_ACCESS_KEY', 'testing'),
    ('AWS_DEFAULT_REGION', 'us-east-1'),
):
    os.environ.setdefault(_name, _value)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    # After pytest's own short summary, so it is the last thing before the counts.
    yield
    for what, count in missing_tools.untested(terminalreporter.stats.get('skipped', ())).items():
        terminalreporter.write_line('%s: %s (%d test%s skipped; CI fails instead)' % (
            missing_tools.PREFIX, what, count, '' if count == 1 else 's'), red=True, bold=True)


def pytest_collection_modifyitems(items):
    # Tests that use DynamoDB Local carry the `dynamodb` marker, so that
    # `pytest -m "not dynamodb"` runs without java.
    for item in items:
        if 'dynamodb_endpoint' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.dynamodb)


@pytest.fixture(scope='session')
def dynamodb_endpoint():
    """URL of a DynamoDB Local started once per session (in memory, -sharedDb).

    It does not set AWS_ENDPOINT_URL_DYNAMODB globally (that would send moto's
    DynamoDB calls there too); fixtures that want it set it with monkeypatch.
    """
    ddb = DynamoDBLocal(shared_db=True)
    try:
        ddb.start()
    except DynamoDBLocalMissing as exc:
        missing_tools.skip_or_fail('the DynamoDB store', '%s; %s' % (exc, INSTALL_HINT))
    try:
        yield ddb.endpoint
    finally:
        ddb.stop()


# Store fixtures (sqlite and DynamoDB Local) shared by the contract tests.
# Both stages packaged and translated once per session (template and sandbox tests).
from stage_packages import packaged_stages  # noqa: E402,F401
from stores import (api, dynamodb_table, dynamodb_table_with_stream, sqlite_path,  # noqa: E402,F401
                    store, store_kind)


# --- AWS calls made by the app's own code, for deploy/check_policy.py ---------
# With CARS_RECORD_AWS_CALLS=<file> (set by `make test`), every boto3 call whose
# stack passes through app.py or chalicelib/ is appended to <file>, with the
# deployed function that made it, so each function's IAM role can be checked
# against what its code really calls. Calls from test setup (moto, DynamoDB
# Local fixtures) and from operator tools that do not run in Lambda
# (chalicelib/store/table.py, chalicelib/cli.py) are left out.

# app.py's handlers and the logical ids of the functions Chalice makes of them
# (deploy/ids.py, which is not in a package).
_DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'deploy')
sys.path.insert(0, _DEPLOY)
try:
    from ids import API_HANDLER as API_FUNCTION, HANDLERS as HANDLER_FUNCTIONS  # noqa: E402
finally:
    sys.path.remove(_DEPLOY)


def _record_aws_calls(path):
    import json
    import sys
    import threading

    from botocore.client import BaseClient

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app_file = os.path.join(root, 'app.py')
    app_files = (app_file, os.path.join(root, 'chalicelib') + os.sep)
    tool_files = tuple(os.path.join(root, 'chalicelib', f) for f in ('store/table.py', 'cli.py'))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    original = BaseClient._make_api_call
    lock = threading.Lock()
    seen = set()

    def caller():
        """(made by the app?, the function's logical id or None)."""
        frame, app, handler, rest_api = sys._getframe(2), False, None, False
        while frame is not None:
            code = frame.f_code
            name = code.co_filename
            if name.startswith(tool_files):
                return False, None
            app = app or name.startswith(app_files)
            if name == app_file and code.co_name != '<module>':
                handler = code.co_name  # the outermost app.py frame is the handler
            # The API's middleware (auth, CORS) runs outside any app.py frame.
            rest_api = rest_api or code.co_qualname == 'RestAPIEventHandler.__call__'
            frame = frame.f_back
        if handler is not None:
            return app, HANDLER_FUNCTIONS.get(handler, API_FUNCTION)
        # Otherwise a test called chalicelib directly: no function to name.
        return app, API_FUNCTION if rest_api else None

    def recording(self, operation_name, api_params):
        app, function = caller()
        if app:
            call = {'service': self.meta.service_model.signing_name,
                    'operation': operation_name, 'function': function}
            if call['service'] == 's3' and 'Key' in api_params:
                call['key'] = api_params['Key']
            if operation_name == 'TransactWriteItems':
                # IAM checks each item's own action (Put -> PutItem, ...).
                call['actions'] = sorted({'dynamodb:%sItem' % kind.replace('Item', '')
                                          for item in api_params.get('TransactItems', [])
                                          for kind in item})
            line = json.dumps(call, sort_keys=True)
            with lock:
                if line not in seen:
                    seen.add(line)
                    with open(path, 'a') as f:
                        f.write(line + '\n')
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = recording


if os.environ.get('CARS_RECORD_AWS_CALLS'):
    _record_aws_calls(os.path.abspath(os.environ['CARS_RECORD_AWS_CALLS']))
