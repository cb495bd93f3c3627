"""DynamoDB requests per API operation, counted on DynamoDB Local.

Request counts are the DynamoDB store's cost model (latency and price scale
with them) and, unlike times, they are deterministic, so they are asserted
exactly. Requests are counted with botocore's `before-call` event on the
store's own client, through the Lambda entry point, so everything a request
does (auth, idempotency, events) is counted. The README's Performance section
lists the same numbers.
"""
import json
import math

import pytest

from chalicelib.domain import cars
from chalicelib import store as store_module

CAR = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic', 'color': 'blue'}
JSON = {'Content-Type': 'application/json'}


@pytest.fixture
def ddb(dynamodb_table, monkeypatch):
    monkeypatch.setenv('CARS_STORE', 'dynamodb')
    monkeypatch.setenv('CARS_AUTH_TOKENS', '')
    monkeypatch.delenv('CARS_AUTH_SSM_PARAMETER', raising=False)
    monkeypatch.delenv('AWS_LAMBDA_FUNCTION_NAME', raising=False)
    store_module.reset()
    store = store_module.get_store()
    yield store
    store_module.reset()


class Calls(object):
    """The DynamoDB operations a client sends, in order."""

    def __init__(self, client):
        self.names = []
        client.meta.events.register('before-call.dynamodb.*', self._seen)

    def _seen(self, model, **kwargs):
        self.names.append(model.name)

    def during(self, fn, *args, **kwargs):
        del self.names[:]
        result = fn(*args, **kwargs)
        return result, list(self.names)


@pytest.fixture
def calls(ddb):
    return Calls(ddb.client)


@pytest.fixture
def api(ddb):
    from chalice.test import Client

    from app import app
    with Client(app) as client:
        yield client


def _create(api, car_id=None):
    body = dict(CAR, id=car_id) if car_id else CAR
    response = api.http.post('/api/v1/cars', body=json.dumps(body), headers=JSON)
    assert response.status_code == 201, response.body
    return json.loads(response.body)['id']


def test_get_one_car_is_one_getitem(api, calls):
    car_id = _create(api, '1111')
    response, sent = calls.during(api.http.get, '/api/v1/cars/%s' % car_id)
    assert response.status_code == 200
    assert sent == ['GetItem']


def test_a_missing_car_is_one_getitem(api, calls):
    response, sent = calls.during(api.http.get, '/api/v1/cars/9999')
    assert response.status_code == 404
    assert sent == ['GetItem']


@pytest.mark.parametrize('method', ['PATCH', 'POST'])
def test_partial_update_is_one_updateitem(api, calls, method):
    car_id = _create(api, '1111')
    response, sent = calls.during(api.http.request, method, '/api/v1/cars/%s' % car_id,
                                  body=json.dumps({'color': 'red'}), headers=JSON)
    assert response.status_code == 200, response.body
    assert sent == ['UpdateItem']


def test_update_with_if_match_is_still_one_request(api, calls):
    car_id = _create(api, '1111')
    tag = api.http.get('/api/v1/cars/%s' % car_id).headers['ETag']
    response, sent = calls.during(api.http.patch, '/api/v1/cars/%s' % car_id,
                                  body=json.dumps({'color': 'red'}),
                                  headers=dict(JSON, **{'If-Match': tag}))
    assert response.status_code == 200
    assert sent == ['UpdateItem']


def test_replace_is_one_updateitem(api, calls):
    car_id = _create(api, '1111')
    response, sent = calls.during(api.http.put, '/api/v1/cars/%s' % car_id,
                                  body=json.dumps(CAR), headers=JSON)
    assert response.status_code == 200, response.body
    assert sent == ['UpdateItem']


def test_put_of_a_new_car_is_one_updateitem(api, calls):
    response, sent = calls.during(api.http.put, '/api/v1/cars/2222',
                                  body=json.dumps(CAR), headers=JSON)
    assert response.status_code == 201, response.body
    assert sent == ['UpdateItem']


def test_delete_is_one_deleteitem(api, calls):
    car_id = _create(api, '1111')
    response, sent = calls.during(api.http.delete, '/api/v1/cars/%s' % car_id)
    assert response.status_code == 204
    assert sent == ['DeleteItem']


def test_create_with_an_id_is_one_putitem(api, calls):
    response, sent = calls.during(api.http.post, '/api/v1/cars',
                                  body=json.dumps(dict(CAR, id='3333')), headers=JSON)
    assert response.status_code == 201
    assert sent == ['PutItem']


def test_create_without_an_id_is_one_putitem_while_ids_are_free(api, calls):
    # An empty id space: the first random id is free, so one conditional put.
    for _ in range(5):
        response, sent = calls.during(api.http.post, '/api/v1/cars',
                                      body=json.dumps(CAR), headers=JSON)
        assert response.status_code == 201
        assert sent == ['PutItem']


def test_unfiltered_listing_is_one_query_per_page(api, ddb, calls):
    ddb.put_many([dict(CAR, id=i) for i in cars.all_assignable_ids()[:250]])
    path = '/api/v1/cars?limit=100'
    pages = 0
    while path:
        response, sent = calls.during(api.http.get, path)
        assert response.status_code == 200
        assert sent == ['Query']
        pages += 1
        cursor = json.loads(response.body)['next']
        path = '/api/v1/cars?limit=100&cursor=%s' % cursor if cursor else None
    assert pages == 3


@pytest.mark.parametrize('n', [1, 25, 26, 60])
def test_import_is_one_batchwriteitem_per_25_cars(ddb, calls, n):
    items = [dict(CAR, id=i) for i in cars.all_assignable_ids()[:n]]
    written, sent = calls.during(ddb.put_many, items)
    assert written == n
    assert sent == ['BatchWriteItem'] * math.ceil(n / 25)
    assert ddb.count() == n


def test_import_retries_only_unprocessed_items(ddb, calls):
    # DynamoDB may hand back part of a batch as UnprocessedItems (throttling);
    # DynamoDB Local never does, so the first answer is made to say so.
    batches = []

    def remember(params, **kwargs):
        batches.append(params['RequestItems'][ddb.table])

    def throttle_first(parsed, **kwargs):
        if len(batches) == 1:
            parsed['UnprocessedItems'] = {ddb.table: batches[0][:3]}

    events = ddb.client.meta.events
    events.register('before-parameter-build.dynamodb.BatchWriteItem', remember)
    events.register('after-call.dynamodb.BatchWriteItem', throttle_first)
    items = [dict(CAR, id=i) for i in cars.all_assignable_ids()[:30]]
    written, sent = calls.during(ddb.put_many, items)
    assert written == 30
    # ceil(30 / 25) batches, plus one retry carrying the 3 handed back.
    assert sent == ['BatchWriteItem'] * 3
    # Each batch is retried before the next is sent.
    assert [len(b) for b in batches] == [25, 3, 5]
    assert ddb.count() == 30
