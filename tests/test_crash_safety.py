"""kill -9 of chalice local mid-write: the sqlite file stays sound and keeps every acknowledged write."""
import concurrent.futures
import signal
import sqlite3
import threading
import time

import pytest
import requests

from servers import LocalServer

WRITERS = 6


@pytest.mark.http
@pytest.mark.slow
def test_sqlite_keeps_every_acknowledged_write_through_a_kill_9(tmp_path):
    db = str(tmp_path / 'crash.db')
    env = {'CARS_STORE': 'sqlite', 'CARS_DB_PATH': db}
    server = LocalServer(env=env, kind='dev').start()
    stop = threading.Event()
    acked_creates = {}   # id -> fields the server acknowledged
    acked_colors = {}    # id -> highest counter the server acknowledged

    def writer(n):
        with requests.Session() as s:
            mine = None
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if mine is None or i % 3 == 0:
                        car = {'make': 'Crash%d' % n, 'model': 'M%d' % i, 'year': 2000,
                               'color': '0'}
                        r = s.post(server.url + '/api/v1/cars', json=car, timeout=10)
                        if r.status_code == 201:
                            mine = r.json()['id']
                            acked_creates[mine] = car
                            acked_colors[mine] = 0
                    else:
                        r = s.patch(server.url + '/api/v1/cars/' + mine,
                                    json={'color': str(i)}, timeout=10)
                        if r.status_code == 200:
                            acked_colors[mine] = i
                except requests.RequestException:
                    return  # the server is gone: what was acknowledged stands

    with concurrent.futures.ThreadPoolExecutor(WRITERS) as pool:
        futures = [pool.submit(writer, n) for n in range(WRITERS)]
        # Kill it mid-load: once writes are being acknowledged, not after a set time.
        deadline = time.monotonic() + 120
        while len(acked_creates) <= 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop(sig=signal.SIGKILL)
        stop.set()
        for f in futures:
            f.result()
    assert len(acked_creates) > 10, 'the load never got going'

    conn = sqlite3.connect(db)
    try:
        assert conn.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
        rows = {r[0]: r[1:] for r in conn.execute('SELECT id, make, model, color FROM cars')}
    finally:
        conn.close()
    for car_id, car in acked_creates.items():
        assert car_id in rows, 'acknowledged create %s lost' % car_id
        assert rows[car_id][:2] == (car['make'], car['model'])
        # A write may commit and die before its answer; never the other way round.
        assert int(rows[car_id][2]) >= acked_colors[car_id]

    # And the restarted server serves them.
    with LocalServer(env=env) as again:
        some = list(acked_creates)[:5]
        for car_id in some:
            assert requests.get(again.url + '/api/v1/cars/' + car_id, timeout=10).status_code == 200
