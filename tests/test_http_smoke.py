"""Over real HTTP: `chalice local` and `make run`'s server, started by the tests, on both stores.

Includes the seed's curl examples, and concurrent creates that must never hand
out one id twice.
"""
import concurrent.futures
import json
import subprocess

import pytest
import requests

from servers import LocalServer
from stores import server_env


@pytest.fixture(params=['chalice', 'dev'])
def server(request, store_kind, tmp_path):
    """Stock `chalice local`, and `make run`'s server built on the same classes."""
    with LocalServer(env=server_env(), kind=request.param,
                     log_path=str(tmp_path / 'server.log')) as s:
        yield s


@pytest.fixture
def dev_server(store_kind, tmp_path):
    """`make run`'s server: its worker threads let concurrent requests reach the app together."""
    with LocalServer(env=server_env(), kind='dev',
                     log_path=str(tmp_path / 'server.log')) as s:
        yield s


def curl(*args):
    out = subprocess.run(['curl', '-s', '-i', '--max-time', '10'] + list(args),
                         capture_output=True, check=True).stdout.decode()
    head, _, body = out.partition('\r\n\r\n')
    status = int(head.split()[1])
    return status, body


@pytest.mark.http
def test_seed_curl_examples_work_as_written(server):
    base = server.url
    status, body = curl(base + '/')
    assert (status, body) == (200, 'Hello, world')
    status, body = curl('-d', 'make=Ford&model=Focus&year=2012&trans=manual&color=black',
                        base + '/api/v1/cars')
    assert status == 201, body
    car = json.loads(body)
    status, body = curl(base + '/api/v1/cars')
    assert status == 200 and json.loads(body)['cars'] == [car]
    status, body = curl(base + '/api/v1/cars/%s' % car['id'])
    assert json.loads(body) == car
    status, body = curl('-d', 'color=white', base + '/api/v1/cars/%s/' % car['id'])
    assert status == 200 and json.loads(body)['color'] == 'white'
    status, body = curl(base + '/api/v1/cars/71ag')
    assert status == 404 and json.loads(body)['status'] == 404


@pytest.mark.http
def test_every_route_over_http(server):
    base = server.url + '/api/v1/cars'
    r = requests.post(base, json={'make': 'Toyota', 'model': 'Corolla', 'year': 2015})
    assert r.status_code == 201 and r.headers['Location'].endswith(r.json()['id'])
    url = base + '/' + r.json()['id']
    tag = r.headers['ETag']
    assert requests.get(url, headers={'If-None-Match': tag}).status_code == 304
    r = requests.patch(url, json={'color': 'red'}, headers={'If-Match': tag})
    assert r.status_code == 200 and r.json()['color'] == 'red'
    assert requests.patch(url, json={'color': 'x'}, headers={'If-Match': tag}).status_code == 412
    assert requests.put(url, json={'make': 'A', 'model': 'B', 'year': 2000}).status_code == 200
    assert requests.delete(url).status_code == 204
    r = requests.get(url)
    assert r.status_code == 404
    assert r.headers['Content-Type'].startswith('application/problem+json')
    r = requests.post(base, data=b'{oops', headers={'Content-Type': 'application/json'})
    assert r.status_code == 400 and r.json()['status'] == 400
    r = requests.post(base, data=b'x', headers={'Content-Type': 'text/plain'})
    assert r.status_code == 415
    r = requests.post(base, data=b'x' * (70 * 1024), headers={'Content-Type': 'application/json'})
    assert r.status_code == 413


@pytest.mark.http
def test_concurrent_creates_never_share_an_id(dev_server):
    server = dev_server
    threads, per_thread = 8, 15

    def work(n):
        session = requests.Session()
        ids = []
        for i in range(per_thread):
            r = session.post(server.url + '/api/v1/cars',
                             json={'make': 'Make%d' % n, 'model': 'M%d' % i, 'year': 2000})
            assert r.status_code == 201, r.text
            ids.append(r.json()['id'])
        return ids

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        ids = [i for chunk in pool.map(work, range(threads)) for i in chunk]
    assert len(ids) == threads * per_thread
    assert len(set(ids)) == len(ids)
    listed, url = [], server.url + '/api/v1/cars?limit=1000'
    listed = [c['id'] for c in requests.get(url).json()['cars']]
    assert sorted(listed) == sorted(ids)


@pytest.mark.http
def test_concurrent_creates_fill_the_last_free_ids_exactly(dev_server, store):
    server = dev_server
    from chalicelib.domain import cars
    every = cars.all_assignable_ids()
    free = set(every[::300])  # 22 ids left free
    store.put_many([{'id': i, 'make': 'A', 'model': 'B', 'year': 2000}
                    for i in every if i not in free])

    def work(_):
        r = requests.post(server.url + '/api/v1/cars',
                          json={'make': 'Last', 'model': 'One', 'year': 2001})
        return r.status_code, r.json().get('id')

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(len(free) + 8)))
    created = [i for status, i in results if status == 201]
    assert sorted(created) == sorted(free)
    assert [s for s, _ in results].count(409) == 8
    assert store.count() == cars.ID_SPACE
