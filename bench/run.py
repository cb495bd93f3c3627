"""The benchmark suite: `make bench` runs it and prints one Markdown table.

Every figure is measured side by side with its reference in the same run,
alternating between the two, and reported as a ratio: the machines are shared
and noisy, so absolute times move from run to run while ratios hold.

    python bench/run.py [--only warm,cold,dynamodb,restore,serve,scale] [--quick] [--strict]
                        [--tornado-seed PATH/TO/seed_tornado.py]

Sections:
  warm      requests through the Lambda entry point app.app(event, context),
            sqlite store, against a bare Chalice route returning a constant dict
  cold      a fresh process that imports app and serves one GET, against a
            bare one-route Chalice app (sqlite store)
  dynamodb  the same cold start on the DynamoDB store (DynamoDB Local), against
            a script that imports chalice and boto3 and does one GetItem
  restore   SnapStart: a process initialised as before a snapshot (import app, the
            before-snapshot hook), forked as a restored environment: CPU time from
            the fork through the after-restore hook to its first answer (GET one
            car), against a full cold start (a new process: import app + the same
            GET), on sqlite and on DynamoDB (DynamoDB Local)
  serve     `make run`'s server (devserver.py, uvicorn) against the blog's Tornado
            server, both with and both without access logs (and stock `chalice
            local`), with wrk: 16 connections, keep-alive, GET one car; then the
            slowest of 20 small GETs while another connection has 50 pipelined
            1,000-car pages outstanding. The blog's server is not part of this
            repository: pass its file with --tornado-seed (`make bench
            TORNADO_SEED=...`). Without it the section measures `make run` and
            `chalice local` alone and says what the comparison needs.
  scale     GET one car and a page of 100 with 100 cars and with 6,561 in the store

The table is also written to bench/results/ (not in git).
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, 'tests')
# What the Tornado comparison needs, printed when it cannot run.
SEED_HELP = (
    "the comparison with the blog's Tornado server needs the blog's seed_tornado.py "
    '(not part of this repository); pass its path: '
    "`make bench TORNADO_SEED=/path/to/seed_tornado.py`, "
    "or `make bench BENCH_ARGS='--tornado-seed /path/to/seed_tornado.py'`, "
    'or `python bench/run.py --tornado-seed /path/to/seed_tornado.py`')
RESULTS = os.path.join(ROOT, 'bench', 'results')
PY = sys.executable

CAR = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
       'color': 'blue'}
FAKE_AWS = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
            'AWS_DEFAULT_REGION': 'us-east-1'}

rows = []  # (section, measure, value, reference, ratio, target, verdict)


def add(section, measure, value, reference, ratio, target=None, ok=None):
    verdict = '' if ok is None else ('ok' if ok else 'MISSED')
    rows.append((section, measure, value, reference,
                 '' if ratio is None else '%.2fx' % ratio, target or '', verdict))
    print('  %-9s %-46s %-16s %-16s %-7s %s %s' % rows[-1], flush=True)


def us(seconds):
    return '%.0f µs' % (seconds * 1e6) if seconds < 0.001 else '%.2f ms' % (seconds * 1e3)


# Events and a context for the Lambda entry point live in bench/lambda_events.py: the
# cold-start scripts import them too, and nothing else from here.
from lambda_events import Context, proxy_event  # noqa: E402


# --- in-process timing ------------------------------------------------------------

def per_call(fn, n):
    # CPU time of this thread: on a shared machine, wall time also counts the
    # time other processes held the CPU.
    start = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - start) / n


def interleaved(cases, n, rounds):
    """Best CPU seconds per call of each case, the cases alternating round by round.

    The minimum, as timeit advises: noise only ever adds time.
    """
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, reset) in cases.items():
            samples[name].append(per_call(fn, n))
            if reset:
                reset()
    return {name: min(s) for name, s in samples.items()}


def bare_app():
    from chalice import Chalice
    bare = Chalice(app_name='bare')

    @bare.route('/bare')
    def constant():
        return {'hello': 'world'}
    return bare


def call(handler, event, status):
    def run():
        response = handler(event, Context())
        if response['statusCode'] != status:
            raise AssertionError('%s %s: %s %s' % (event['httpMethod'], event['path'],
                                                   response['statusCode'], response['body']))
    return run


def fill_sqlite(path, n):
    """A sqlite store file holding the first n assignable ids (the CLI's bulk path)."""
    os.environ['CARS_DB_PATH'] = path
    from chalicelib.domain import cars
    from chalicelib.store import get_store
    ids = cars.all_assignable_ids()[:n]
    get_store('sqlite').put_many([dict(CAR, id=i) for i in ids])
    return ids


def bench_warm(args, tmp):
    os.environ.update(CARS_STORE='sqlite', CARS_AUTH_TOKENS='')
    os.environ.pop('AWS_LAMBDA_FUNCTION_NAME', None)
    ids = fill_sqlite(os.path.join(tmp, 'warm.db'), 200)
    import app
    from chalicelib.store import get_store
    handler, bare = app.app, bare_app()
    car_id = ids[0]
    one = '/api/v1/cars/{car_id}'
    created = []

    def create():
        response = handler(proxy_event('POST', '/api/v1/cars', '/api/v1/cars', body=CAR),
                           Context())
        if response['statusCode'] != 201:
            raise AssertionError(response)
        created.append(json.loads(response['body'])['id'])

    def forget_created():
        store = get_store()
        for i in created:
            store.delete(i)
        del created[:]

    # One event per case, built once: the cost measured is the request's, not the test's.
    cases = {
        'bare route (constant dict)': (call(bare, proxy_event('GET', '/bare', '/bare'), 200), None),
        'GET one car': (call(handler, proxy_event('GET', '/api/v1/cars/' + car_id, one,
                                                   {'car_id': car_id}), 200), None),
        'POST create (server id)': (lambda: create(), forget_created),
        'PATCH partial update': (call(handler, proxy_event(
            'PATCH', '/api/v1/cars/' + ids[1], one, {'car_id': ids[1]}, {'color': 'red'}), 200),
            None),
        'GET list, page of 100': (call(handler, proxy_event(
            'GET', '/api/v1/cars', '/api/v1/cars', query={'limit': '100'}), 200), None),
    }
    n, rounds = (100, 5) if args.quick else (400, 15)
    for fn, _ in cases.values():
        fn()  # warm: the first call pays for lazy imports and connections
    forget_created()
    result = interleaved(cases, n, rounds)
    base = result.pop('bare route (constant dict)')
    add('warm', 'bare Chalice route (reference)', us(base), '', None)
    for name, seconds in result.items():
        ratio = seconds / base
        target = '<= 2.0x' if name == 'GET one car' else None
        add('warm', name, us(seconds), us(base), ratio, target,
            ratio <= 2.0 if target else None)


# --- cold starts --------------------------------------------------------------------

COLD_APP = '''
import json, os, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from lambda_events import proxy_event, Context
import app
car = {car_id!r}
r = app.app(proxy_event('GET', '/api/v1/cars/' + car, '/api/v1/cars/{{car_id}}',
                        {{'car_id': car}}), Context())
assert r['statusCode'] == 200, r
'''

COLD_BARE_APP = '''
import sys
sys.path.insert(0, {bench!r})
from lambda_events import proxy_event, Context
from chalice import Chalice
app = Chalice(app_name='bare')

@app.route('/bare')
def constant():
    return {{'hello': 'world'}}

r = app(proxy_event('GET', '/bare', '/bare'), Context())
assert r['statusCode'] == 200, r
'''

COLD_BARE_DYNAMODB = '''
import os
import chalice
import boto3
client = boto3.client('dynamodb', endpoint_url=os.environ['AWS_ENDPOINT_URL_DYNAMODB'])
item = client.get_item(TableName=os.environ['CARS_TABLE'],
                       Key={{'pk': {{'S': 'CAR'}}, 'sk': {{'S': {car_id!r}}}}},
                       ConsistentRead=True)['Item']
assert item
'''


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(script, env):
    """CPU seconds (user + system) of one fresh process running `script`.

    CPU rather than wall time: the machines are shared, and a cold start's
    own cost is the work it does (waits on DynamoDB Local are the same on both
    sides of a comparison).
    """
    before = _children_cpu()
    proc = subprocess.run([PY, '-c', script], env=env, cwd=ROOT, capture_output=True)
    elapsed = _children_cpu() - before
    if proc.returncode:
        raise RuntimeError(proc.stderr.decode('utf-8', 'replace'))
    return elapsed


def cold_pair(name, script, ref_name, ref_script, env, runs, target, limit, section):
    samples = {name: [], ref_name: []}
    for _ in range(runs):
        samples[name].append(run_once(script, env))
        samples[ref_name].append(run_once(ref_script, env))
    app_s, ref_s = min(samples[name]), min(samples[ref_name])
    add(section, ref_name + ' (reference)', us(ref_s), '', None)
    add(section, name, us(app_s), us(ref_s), app_s / ref_s, target, app_s / ref_s <= limit)


def child_env(**extra):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE='', CARS_AUTH_TOKENS='', **FAKE_AWS)
    env.pop('AWS_LAMBDA_FUNCTION_NAME', None)
    env.update(extra)
    return env


def bench_cold(args, tmp):
    path = os.path.join(tmp, 'cold.db')
    car_id = fill_sqlite(path, 1)[0]
    env = child_env(CARS_STORE='sqlite', CARS_DB_PATH=path)
    bench_dir = os.path.join(ROOT, 'bench')
    app_script = COLD_APP.format(root=ROOT, bench=bench_dir, car_id=car_id)
    bare_script = COLD_BARE_APP.format(bench=bench_dir)
    run_once(app_script, env)  # compile .pyc files outside the measurement
    run_once(bare_script, env)
    cold_pair('import app + GET one car (sqlite)', app_script,
              'bare one-route Chalice app', bare_script, env,
              5 if args.quick else 15, '<= 1.5x', 1.5, 'cold')


@contextlib.contextmanager
def dynamodb_with_one_car(table_name, section):
    """DynamoDB Local with a table holding one car: yields (env for a child, car id),
    or None (after adding a 'skipped' row) when DynamoDB Local is not installed."""
    sys.path.insert(0, TESTS)
    from dynamodb_local import DynamoDBLocal, DynamoDBLocalMissing
    ddb = DynamoDBLocal(shared_db=True)
    try:
        ddb.start()
    except DynamoDBLocalMissing as e:
        add(section, 'DynamoDB skipped: %s' % e, '', '', None)
        yield None
        return
    try:
        os.environ.update(FAKE_AWS)
        import boto3
        from chalicelib.store import table
        from chalicelib.store.dynamodb_items import to_item
        client = boto3.client('dynamodb', endpoint_url=ddb.endpoint)
        table.create_table(client, table_name)
        car_id = '1111'
        client.put_item(TableName=table_name, Item=to_item(dict(
            CAR, id=car_id, version=1, rev='r', created_at='t', updated_at='t')))
        yield child_env(CARS_STORE='dynamodb', CARS_TABLE=table_name,
                        AWS_ENDPOINT_URL_DYNAMODB=ddb.endpoint), car_id
    finally:
        ddb.stop()


def bench_dynamodb(args, tmp):
    with dynamodb_with_one_car('bench-cars', 'dynamodb') as ready:
        if ready is None:
            return
        env, car_id = ready
        bench_dir = os.path.join(ROOT, 'bench')
        app_script = COLD_APP.format(root=ROOT, bench=bench_dir, car_id=car_id)
        bare_script = COLD_BARE_DYNAMODB.format(car_id=car_id)
        run_once(app_script, env)
        run_once(bare_script, env)
        cold_pair('import app + GET one car (DynamoDB)', app_script,
                  'chalice + boto3 + one GetItem', bare_script, env,
                  5 if args.quick else 15, '<= 1.15x', 1.15, 'dynamodb')


# --- SnapStart restore -----------------------------------------------------------------

# A process initialised as Lambda initialises a SnapStart version (import app, the
# before-snapshot hook), then forked once: the fork is an environment restored from
# that snapshot. It puts back the generator state the snapshot holds (CPython reseeds
# `random` in a forked child), runs the after-restore hook and answers one GET; the
# CPU time from the fork to the answer is what it prints.
RESTORE_APP = """
import json, os, random, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from lambda_events import proxy_event, Context
import app
from chalicelib import snapstart
snapstart.before_snapshot()
car = {car_id!r}
event = proxy_event('GET', '/api/v1/cars/' + car, '/api/v1/cars/{{car_id}}', {{'car_id': car}})
snapshot = random.getstate()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    start = time.process_time()
    random.setstate(snapshot)
    snapstart.after_restore()
    r = app.app(event, Context())
    spent = time.process_time() - start
    os.write(write, json.dumps({{'status': r['statusCode'], 'cpu': spent}}).encode())
    os._exit(0)
os.close(write)
chunks = []
while True:
    chunk = os.read(read, 65536)
    if not chunk:
        break
    chunks.append(chunk)
os.waitpid(pid, 0)
print(b''.join(chunks).decode())
"""


def restore_once(script, env):
    """CPU seconds of the restored fork, from the fork to its first answer."""
    proc = subprocess.run([PY, '-c', script], env=env, cwd=ROOT, capture_output=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr.decode('utf-8', 'replace'))
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    if out['status'] != 200:
        raise RuntimeError('the restored process answered %s' % out['status'])
    return out['cpu']


def restore_pair(label, env, car_id, runs):
    bench_dir = os.path.join(ROOT, 'bench')
    cold_script = COLD_APP.format(root=ROOT, bench=bench_dir, car_id=car_id)
    restore_script = RESTORE_APP.format(root=ROOT, bench=bench_dir, car_id=car_id)
    run_once(cold_script, env)  # compile .pyc files outside the measurement
    restore_once(restore_script, env)
    cold, restored = [], []
    for _ in range(runs):
        cold.append(run_once(cold_script, env))
        restored.append(restore_once(restore_script, env))
    cold_s, restored_s = min(cold), min(restored)
    add('restore', 'cold start: import app + GET one car (%s) (reference)' % label,
        us(cold_s), '', None)
    add('restore', 'restored: after-restore hook + GET one car (%s)' % label, us(restored_s),
        us(cold_s), restored_s / cold_s, '<= 0.1x', restored_s / cold_s <= 0.1)


def bench_restore(args, tmp):
    if not hasattr(os, 'fork'):
        add('restore', 'skipped: needs os.fork', '', '', None)
        return
    runs = 5 if args.quick else 15
    path = os.path.join(tmp, 'restore.db')
    car_id = fill_sqlite(path, 1)[0]
    restore_pair('sqlite', child_env(CARS_STORE='sqlite', CARS_DB_PATH=path), car_id, runs)
    with dynamodb_with_one_car('bench-restore', 'restore') as ready:
        if ready is not None:
            restore_pair('DynamoDB', ready[0], ready[1], runs)


# --- local serving with wrk -------------------------------------------------------------

def wait_http(url, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError('server exited with %s' % proc.returncode)
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError('no answer on %s' % url)


def post_car(base, car):
    req = urllib.request.Request(base + '/api/v1/cars', data=json.dumps(car).encode(),
                                 headers={'Content-Type': 'application/json'}, method='POST')
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())['id']


def free_port():
    sys.path.insert(0, TESTS)
    from servers import free_port as fp
    return fp()


def start(cmd, cwd, env, url):
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(url, proc)
    except Exception:
        proc.kill()
        raise
    return proc


_UNITS = {'us': 1e-6, 'ms': 1e-3, 's': 1.0}


def cpu_seconds(pid):
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def wrk(url, seconds, pid):
    """(requests/s, p50 latency, server CPU seconds per request) of one wrk run."""
    before = cpu_seconds(pid)
    out = subprocess.run(['wrk', '-t2', '-c16', '-d%ds' % seconds, '--latency', url],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    rps = float(re.search(r'Requests/sec:\s+([0-9.]+)', out).group(1))
    value, unit = re.search(r'\s50%\s+([0-9.]+)(us|ms|s)', out).groups()
    count = int(re.search(r'(\d+) requests in', out).group(1))
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    if errors:
        raise RuntimeError('wrk saw %s error responses from %s' % (errors.group(1), url))
    return rps, float(value) * _UNITS[unit], cpu / max(count, 1)


# The blog's server as its docstring runs it, with Python logging on so that
# Tornado writes its access-log line per request (tornado.access, at INFO).
TORNADO_LOGGED = ('import logging, runpy, sys; '
                  'logging.basicConfig(level=logging.INFO, format="%(message)s"); '
                  'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')
BLOG = 'blog (Tornado, per-request sqlite)'
OURS = 'make run (devserver: uvicorn)'


def bench_serve(args, tmp):
    if not shutil.which('wrk'):
        add('serve', 'wrk runs skipped: wrk is not installed', '', '', None)
        bench_pipelined_pressure(args, tmp)
        return
    seed = args.tornado_seed
    if not seed:
        print('  note: %s' % SEED_HELP, flush=True)
    servers = {}

    def serve(name, cmd, cwd, env):
        port = free_port()
        base = 'http://127.0.0.1:%d' % port
        servers[name] = (start(cmd + ['--port', str(port)], cwd, env, base + '/'), base)
        return base

    try:
        # The blog's server, run as its docstring says: from an empty directory
        # (one per variant: each has its own cars.db there).
        for logged in ((True, False) if seed else ()):
            seed_dir = tempfile.mkdtemp(dir=tmp)
            cmd = [PY, '-c', TORNADO_LOGGED, seed] if logged else [PY, seed]
            serve(BLOG + ('' if logged else ', no access log'), cmd, seed_dir, child_env())
        env = child_env(CARS_STORE='sqlite', CARS_DB_PATH=os.path.join(tmp, 'serve.db'))
        ours = serve(OURS, [PY, '-m', 'devserver'], ROOT, env)
        serve(OURS + ', no access log', [PY, '-m', 'devserver', '--no-access-log'], ROOT, env)
        serve('stock chalice local', [os.path.join(os.path.dirname(PY), 'chalice'), 'local',
                                      '--no-autoreload'], ROOT, env)
        # make run and chalice local share one cars.db.
        ours_car = '/api/v1/cars/%s' % post_car(ours, CAR)
        urls = {}
        for name, (_, base) in servers.items():
            if name.startswith('blog'):
                urls[name] = base + '/api/v1/cars/%s' % post_car(base, dict(CAR, id='1234'))
            else:
                urls[name] = base + ours_car
        seconds = 3 if args.quick else 8
        samples = {name: [] for name in servers}
        for _ in range(1 if args.quick else 3):
            for name, url in urls.items():
                samples[name].append(wrk(url, seconds, servers[name][0].pid))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    # Best of the rounds: load from other processes only ever makes a run worse.
    best = {name: (max(r for r, _, _ in s), min(p for _, p, _ in s), min(c for _, _, c in s))
            for name, s in samples.items()}
    if not seed:
        add('serve', 'blog comparison not run: see the note below the table', '', '', None)
    for suffix, note in (('', ', access log on'), (', no access log', ', no access log')):
        blog = best.get(BLOG + suffix)
        if blog:
            blog_rps, blog_p50, blog_cpu = blog
            add('serve', 'blog%s, req/s (reference)' % note, '%.0f/s' % blog_rps, '', None)
            add('serve', 'blog%s, p50 latency (reference)' % note, us(blog_p50), '', None)
            add('serve', 'blog%s, server CPU per request (reference)' % note, us(blog_cpu), '',
                None)
        names = [OURS + suffix] + (['stock chalice local'] if not suffix else [])
        for name in names:
            rps, p50, cpu = best[name]
            is_ours = name.startswith('make run')
            label = name + ('' if suffix or not is_ours else ', access log on')
            if blog:
                add('serve', '%s, req/s' % label, '%.0f/s' % rps, '%.0f/s' % blog_rps,
                    rps / blog_rps, '>= 1.0x' if is_ours else None,
                    rps / blog_rps >= 1.0 if is_ours else None)
            else:
                add('serve', '%s, req/s' % label, '%.0f/s' % rps, '', None)
            add('serve', '%s, p50 latency' % label, us(p50), us(blog_p50) if blog else '',
                p50 / blog_p50 if blog else None,
                '< 5 ms' if is_ours else None, p50 < 0.005 if is_ours else None)
            add('serve', '%s, server CPU per request' % label, us(cpu),
                us(blog_cpu) if blog else '', cpu / blog_cpu if blog else None)
    bench_pipelined_pressure(args, tmp)


def _read_answer(sock, buf):
    """(status, rest of buf) after one Content-Length-framed response off a socket."""
    while b'\r\n\r\n' not in buf:
        chunk = sock.recv(262144)
        if not chunk:
            raise RuntimeError('connection closed before a response')
        buf += chunk
    head, _, buf = buf.partition(b'\r\n\r\n')
    length = int(re.search(rb'(?im)^content-length:\s*(\d+)', head).group(1))
    while len(buf) < length:
        chunk = sock.recv(262144)
        if not chunk:
            raise RuntimeError('connection closed inside a body')
        buf += chunk
    return int(head.split()[1]), buf[length:]


def _slowest_small_get(port, path, n):
    """Wall seconds of the slowest of n GETs of path, one after another on one connection."""
    import socket
    request = b'GET %s HTTP/1.1\r\nHost: bench\r\n\r\n' % path.encode()
    with socket.create_connection(('127.0.0.1', port), timeout=60) as sock:
        rest, slowest = b'', 0.0
        for _ in range(n):
            began = time.perf_counter()
            sock.sendall(request)
            status, rest = _read_answer(sock, rest)
            slowest = max(slowest, time.perf_counter() - began)
            if status != 200:
                raise RuntimeError('GET %s answered %d' % (path, status))
    return slowest


def bench_pipelined_pressure(args, tmp):
    """The slowest of 20 small GETs while 50 pipelined 1,000-car pages are outstanding.

    The pages come from another connection, all sent at once; a reader thread
    takes the answers as they come. Beside it, the same 20 GETs on an idle server.
    """
    import socket
    import threading
    path = os.path.join(tmp, 'pressure.db')
    ids = fill_sqlite(path, 1000)
    port = free_port()
    proc = start([PY, '-m', 'devserver', '--port', str(port)], ROOT,
                 child_env(CARS_STORE='sqlite', CARS_DB_PATH=path),
                 'http://127.0.0.1:%d/' % port)
    small = '/api/v1/cars/%s' % ids[0]
    pages = b'GET /api/v1/cars?limit=1000 HTTP/1.1\r\nHost: bench\r\n\r\n' * 50
    idle, loaded, overlapped = [], [], True
    try:
        for _ in range(1 if args.quick else 3):
            idle.append(_slowest_small_get(port, small, 20))
            answered = []
            with socket.create_connection(('127.0.0.1', port), timeout=60) as pipe:
                def read_pages():
                    rest = b''
                    for _ in range(50):
                        status, rest = _read_answer(pipe, rest)
                        answered.append(status)
                reader = threading.Thread(target=read_pages)
                pipe.sendall(pages)
                reader.start()
                loaded.append(_slowest_small_get(port, small, 20))
                overlapped = overlapped and len(answered) < 50
                reader.join(120)
            if answered != [200] * 50:
                raise RuntimeError('pipelined pages answered %r' % answered)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    idle_s, loaded_s = min(idle), min(loaded)
    add('serve', 'slowest of 20 GETs, idle server (reference)', us(idle_s), '', None)
    add('serve', 'slowest of 20 GETs beside 50 pipelined 1,000-car pages'
        + ('' if overlapped else ' (the pages finished first!)'),
        us(loaded_s), us(idle_s), loaded_s / idle_s, '< 50 ms', loaded_s < 0.050 and overlapped)


# --- scale ------------------------------------------------------------------------------

def bench_scale(args, tmp):
    os.environ.update(CARS_STORE='sqlite', CARS_AUTH_TOKENS='')
    os.environ.pop('AWS_LAMBDA_FUNCTION_NAME', None)
    small = os.path.join(tmp, 'small.db')
    large = os.path.join(tmp, 'large.db')
    fill_sqlite(small, 100)
    ids = fill_sqlite(large, 6561)
    import app
    one = '/api/v1/cars/{car_id}'
    car_id = ids[50]  # present in both stores

    def with_db(path, event):
        def run():
            os.environ['CARS_DB_PATH'] = path
            response = app.app(event, Context())
            if response['statusCode'] != 200:
                raise AssertionError(response)
        return run

    get = proxy_event('GET', '/api/v1/cars/' + car_id, one, {'car_id': car_id})
    page = proxy_event('GET', '/api/v1/cars', '/api/v1/cars', query={'limit': '100'})
    cases = {'get100': (with_db(small, get), None), 'get6561': (with_db(large, get), None),
             'page100': (with_db(small, page), None), 'page6561': (with_db(large, page), None)}
    for fn, _ in cases.values():
        fn()
    n, rounds = (100, 5) if args.quick else (300, 15)
    r = interleaved(cases, n, rounds)
    for label, a, b in (('GET one car', 'get100', 'get6561'),
                        ('GET a page of 100', 'page100', 'page6561')):
        ratio = r[b] / r[a]
        add('scale', '%s, 6,561 cars vs 100' % label, us(r[b]), us(r[a]), ratio, '<= 1.2x',
            ratio <= 1.2)


SECTIONS = {'warm': bench_warm, 'cold': bench_cold, 'dynamodb': bench_dynamodb,
            'restore': bench_restore, 'serve': bench_serve, 'scale': bench_scale}


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return '%s, %d cores, Python %s, %s' % (cpu, os.cpu_count() or 0,
                                            platform.python_version(), platform.system())


def table():
    lines = ['| section | measure | value | reference | ratio | target | |',
             '|---|---|---|---|---|---|---|']
    lines += ['| %s |' % ' | '.join(r) for r in rows]
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', default=','.join(SECTIONS),
                        help='comma-separated sections (%s)' % ', '.join(SECTIONS))
    parser.add_argument('--quick', action='store_true', help='fewer rounds, for a smoke run')
    parser.add_argument('--strict', action='store_true',
                        help='exit with status 1 when a target is missed')
    parser.add_argument('--tornado-seed', metavar='PATH', default=None,
                        help="the blog's seed_tornado.py, the reference of the serve section "
                             '(not part of this repository); without it, serve measures '
                             '`make run` and `chalice local` alone')
    args = parser.parse_args(argv)
    if args.tornado_seed:
        args.tornado_seed = os.path.abspath(os.path.expanduser(args.tornado_seed))
        if not os.path.isfile(args.tornado_seed):
            parser.error('--tornado-seed: no file at %s' % args.tornado_seed)
    sections = [name.strip() for name in args.only.split(',') if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        parser.error('--only: unknown section(s) %s; choose from %s'
                     % (', '.join(unknown), ', '.join(SECTIONS)))
    sys.path.insert(0, ROOT)
    tmp = tempfile.mkdtemp(prefix='cars-bench-')
    try:
        for name in sections:
            print('== %s' % name, flush=True)
            SECTIONS[name](args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header = '%s on %s' % (datetime.date.today().isoformat(), machine())
    text = '%s\n\n%s\n' % (header, table())
    if 'serve' in sections and not args.tornado_seed:
        text += '\nNote: %s.\n' % SEED_HELP
    print('\n' + text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, time.strftime('%Y%m%d-%H%M%S.md')), 'w') as f:
        f.write(text)
    missed = any(r[-1] == 'MISSED' for r in rows)
    return 1 if missed and args.strict else 0


if __name__ == '__main__':
    sys.exit(main())
