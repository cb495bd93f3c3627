"""Store fixtures: the same tests run on sqlite and on DynamoDB Local.

Imported by conftest.py. Each test gets a fresh sqlite file or a fresh
DynamoDB table, so tests never see each other's cars.
"""
import uuid

import pytest

from chalicelib import store as store_module
from chalicelib.store import table

STORE_KINDS = ['sqlite', 'dynamodb']


def new_dynamodb_table(endpoint, properties=None, stream=False):
    """Create a table from `properties` (default: chalicelib/store/table.json).

    The stream is left off unless a test reads it: DynamoDB Local keeps every
    stream record, even of deleted tables, and slows down for the rest of the
    session (a 6,561-car load went from 7 s to 43 s). Nothing the stores do
    depends on the stream; the event tests ask for it.
    """
    import boto3
    props = dict(properties or table.cloudformation_properties())
    if not stream:
        props.pop('StreamSpecification', None)
    client = boto3.client('dynamodb', endpoint_url=endpoint)
    name = 'cars-test-%s' % uuid.uuid4().hex[:12]
    table.create_table(client, name, properties=props)
    return client, name


def table_fixture(endpoint, monkeypatch, stream=False, properties=None):
    """Yield a new table's name with the app's environment pointed at it; drop it after."""
    client, name = new_dynamodb_table(endpoint, properties, stream=stream)
    monkeypatch.setenv('AWS_ENDPOINT_URL_DYNAMODB', endpoint)
    monkeypatch.setenv('CARS_TABLE', name)
    yield name
    store_module.reset()
    client.delete_table(TableName=name)


@pytest.fixture
def dynamodb_table(dynamodb_endpoint, monkeypatch):
    """A fresh table made from chalicelib/store/table.json; the env points the app at it."""
    yield from table_fixture(dynamodb_endpoint, monkeypatch)


@pytest.fixture
def dynamodb_table_with_stream(dynamodb_endpoint, monkeypatch):
    """The same, with its stream on (new and old images), for the change-event tests."""
    yield from table_fixture(dynamodb_endpoint, monkeypatch, stream=True)


@pytest.fixture
def sqlite_path(tmp_path, monkeypatch):
    path = str(tmp_path / 'cars.db')
    monkeypatch.setenv('CARS_DB_PATH', path)
    yield path
    store_module.reset()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request, monkeypatch):
    """Configure the environment for one store and return its kind."""
    monkeypatch.setenv('CARS_STORE', request.param)
    if request.param == 'sqlite':
        request.getfixturevalue('sqlite_path')
    else:
        request.getfixturevalue('dynamodb_table')
    store_module.reset()
    return request.param


@pytest.fixture
def store(store_kind):
    """The configured store object (what the app uses)."""
    s = store_module.get_store()
    yield s
    store_module.reset()


@pytest.fixture
def api(store_kind):
    """Chalice's test client over the Lambda entry point, on the configured store."""
    from chalice.test import Client

    from app import app
    with Client(app) as client:
        yield client
    store_module.reset()


def server_env():
    """Environment for a child server process on the same store as the test."""
    import os
    keys = ('CARS_STORE', 'CARS_DB_PATH', 'CARS_TABLE', 'AWS_ENDPOINT_URL_DYNAMODB',
            'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_DEFAULT_REGION')
    return {k: os.environ[k] for k in keys if k in os.environ}
