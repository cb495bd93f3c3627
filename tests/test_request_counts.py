"""DynamoDB requests per API operation, counted on DynamoDB Local.

Request counts are the DynamoDB store's cost model (latency and price scale
with them) and, unlike times, they are deterministic, so they are asserted
exactly. Requests are counted with botocore's `before-call` event on the
store's own client, through the Lambda entry point, so everything a request
does (auth, idempotency, events) is counted. docs/performance.md lists the
same numbers ("DynamoDB requests per operation", #dynamodb-requests-per-operation).
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


# --- filtered listings: one bounded Query per page ------------------------------------
# A filtered page is one Query reading at most LIST_READ_BATCH items (1,000) before
# filtering; the tests lower it to keep the tables small. A page that stops at the
# bound is short, even empty, with a `next` that resumes after the last id read.

def _follow(api, path, calls=None):
    """Every page of a listing, following `next`: ([ids per page], [requests per page])."""
    pages, sent_per_page = [], []
    query = path
    while query:
        if calls is None:
            response, sent = api.http.get(query), None
        else:
            response, sent = calls.during(api.http.get, query)
        assert response.status_code == 200, response.body
        body = json.loads(response.body)
        pages.append([c['id'] for c in body['cars']])
        sent_per_page.append(sent)
        query = '%s&cursor=%s' % (path, body['next']) if body['next'] else None
        assert len(pages) < 1000, 'the listing never ends'
    return pages, sent_per_page


def test_the_read_bound_is_1000_items(ddb):
    from chalicelib.store import dynamodb
    assert dynamodb.LIST_READ_BATCH == 1000


def test_a_filter_matching_nothing_is_one_query_and_an_empty_page_with_next(
        api, ddb, calls, monkeypatch):
    from chalicelib.store import dynamodb
    monkeypatch.setattr(dynamodb, 'LIST_READ_BATCH', 100)
    ddb.put_many([dict(CAR, id=i) for i in cars.all_assignable_ids()[:450]])
    response, sent = calls.during(api.http.get, '/api/v1/cars?make=nomatch&limit=1')
    assert response.status_code == 200
    assert sent == ['Query']
    body = json.loads(response.body)
    assert body['cars'] == [] and body['next'] is not None
    assert 'rel="next"' in response.headers['Link']
    # Following it: ceil(450 / 100) pages of one Query each, all empty, the last
    # (50 items read, the partition's end) without `next`.
    pages, sent = _follow(api, '/api/v1/cars?make=nomatch&limit=1', calls)
    assert pages == [[]] * 5
    assert sent == [['Query']] * 5


@pytest.mark.parametrize('limit', [1, 2, 1000])
def test_following_next_sees_sparse_matches_once_each(api, ddb, calls, monkeypatch, limit):
    from chalicelib.store import dynamodb
    monkeypatch.setattr(dynamodb, 'LIST_READ_BATCH', 100)
    ids = cars.all_assignable_ids()[:450]
    # Matches at the start, in one read window's middle, across a window's
    # boundary (items 99 and 100) and at the very end.
    fords = {ids[i] for i in (0, 1, 2, 99, 100, 250, 449)}
    ddb.put_many([dict(CAR, id=i, make='Ford' if i in fords else 'Toyota') for i in ids])
    pages, sent = _follow(api, '/api/v1/cars?make=ford&limit=%d' % limit, calls)
    seen = [i for page in pages for i in page]
    assert seen == sorted(fords)
    assert all(len(page) <= limit for page in pages)
    assert all(s == ['Query'] for s in sent)
    # Never more pages than the read windows plus the pages full matches fill.
    assert len(pages) <= 5 + len(fords) // limit


@pytest.fixture
def any_store_api(store_kind, monkeypatch):
    """The Lambda entry point on each store in turn (sqlite, DynamoDB Local)."""
    monkeypatch.setenv('CARS_AUTH_TOKENS', '')
    monkeypatch.delenv('CARS_AUTH_SSM_PARAMETER', raising=False)
    monkeypatch.delenv('AWS_LAMBDA_FUNCTION_NAME', raising=False)
    from chalice.test import Client

    from app import app
    store_module.reset()
    with Client(app) as client:
        yield client, store_module.get_store()
    store_module.reset()


@pytest.mark.parametrize('query', ['make=ford', 'make=nomatch', 'year_min=2019', ''])
def test_clients_following_next_see_each_match_once_on_every_store(
        any_store_api, monkeypatch, query):
    from chalicelib.store import dynamodb
    monkeypatch.setattr(dynamodb, 'LIST_READ_BATCH', 40)
    api, store = any_store_api
    ids = cars.all_assignable_ids()[:130]
    rows = [dict(CAR, id=i, make='Ford' if n % 37 in (0, 1) else 'Toyota', year=2000 + n % 23)
            for n, i in enumerate(ids)]
    store.put_many(rows)
    wanted = [r['id'] for r in rows
              if ('make=ford' not in query or r['make'] == 'Ford')
              and 'nomatch' not in query
              and ('year_min' not in query or r['year'] >= 2019)]
    for limit in (1, 3, 100):
        pages, _ = _follow(api, '/api/v1/cars?%s&limit=%d' % (query, limit))
        assert [i for page in pages for i in page] == wanted
        # The store's own answer, followed the same way.
        filters, _, _ = cars.validate_list_params(
            dict(p.split('=') for p in query.split('&') if p))
        seen, after = [], None
        while True:
            records, after = store.list(filters, after, limit)
            seen.extend(r['id'] for r in records)
            if after is None:
                break
        assert seen == wanted
