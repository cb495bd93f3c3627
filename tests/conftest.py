"""Shared pytest fixtures and session setup.

Keep this file to fixtures and hooks that several test modules use; put
one module's helpers in that module.
"""
import os

import pytest

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


def _in_ci():
    return os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')


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
        message = '%s; %s' % (exc, INSTALL_HINT)
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield ddb.endpoint
    finally:
        ddb.stop()


# Store fixtures (sqlite and DynamoDB Local) shared by the contract tests.
from stores import api, dynamodb_table, sqlite_path, store, store_kind  # noqa: E402,F401
