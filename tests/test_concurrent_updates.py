"""No lost updates: 16 clients over real HTTP race to update one car with If-Match."""
import concurrent.futures
import threading

import pytest
import requests

from servers import LocalServer
from stores import server_env

THREADS = 16
PER_THREAD = 4


@pytest.mark.http
@pytest.mark.slow
def test_sixteen_if_match_writers_lose_no_update(store_kind, store):
    with LocalServer(env=server_env(), kind='dev') as server:
        created = requests.post(server.url + '/api/v1/cars', json={
            'make': 'Mini', 'model': 'Cooper', 'year': 2001, 'color': '0'}, timeout=30)
        assert created.status_code == 201
        path = server.url + '/api/v1/cars/' + created.json()['id']
        start_version = store.get(created.json()['id'])['version']
        barrier = threading.Barrier(THREADS)

        def writer(_):
            oks = conflicts = 0
            with requests.Session() as s:
                barrier.wait()
                while oks < PER_THREAD:
                    current = s.get(path, timeout=60)
                    assert current.status_code == 200
                    # The counter lives in the color: a lost update shows as a low total.
                    n = int(current.json()['color']) + 1
                    r = s.patch(path, json={'color': str(n)}, timeout=60,
                                headers={'If-Match': current.headers['ETag']})
                    if r.status_code == 200:
                        oks += 1
                    else:
                        assert r.status_code == 412, r.text
                        conflicts += 1
            return oks, conflicts

        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(writer, range(THREADS)))
        final = requests.get(path, timeout=30).json()
    successes = sum(oks for oks, _ in results)
    assert successes == THREADS * PER_THREAD
    assert int(final['color']) == successes
    assert store.get(final['id'])['version'] - start_version == successes
    # Some writers must actually have collided, or this proved nothing.
    assert sum(c for _, c in results) > 0
