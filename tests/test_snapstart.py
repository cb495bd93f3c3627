"""SnapStart hooks (chalicelib/snapstart.py): two environments restored from one snapshot.

A child process initialises as Lambda does before a snapshot (imports app, runs
`before_snapshot`), then forks twice: each fork is an environment restored from
that snapshot. CPython reseeds `random` in a forked child by itself
(os.register_at_fork), which a restored snapshot does not do, so each fork first
puts back the parent's generator state, as the snapshot holds it. Then it runs
`after_restore` (or, for the control, not) and draws what the stores draw: candidate
car ids (the stores' own expression, `random.choice(cars.ID_DIGITS)` four times;
chalicelib/store/sqlite.py and dynamodb.py) and retry jitter (`random.random()`,
dynamodb.py put_many).
"""
import json
import os
import subprocess
import sys
import types

import pytest

from chalicelib import snapstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESTORE_TWICE = r'''
import json, os, random, sys
sys.path.insert(0, %(root)r)
import app
from chalicelib import snapstart
from chalicelib.domain import cars

snapstart.before_snapshot()
snapshot = random.getstate()
hooks = sys.argv[1] == 'hooks'


def restored():
    random.setstate(snapshot)   # what the snapshot holds (undoes the fork's own reseed)
    if hooks:
        snapstart.after_restore()
    ids = [''.join(random.choice(cars.ID_DIGITS) for _ in range(4)) for _ in range(8)]
    jitter = [random.random() for _ in range(4)]
    return {'ids': ids, 'jitter': jitter}


results = []
for _ in range(2):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with os.fdopen(write, 'w') as f:
            json.dump(restored(), f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        results.append(json.load(f))
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
print(json.dumps({'children': results, 'boto3': 'boto3' in sys.modules}))
'''


def restore_twice(tmp_path, hooks, **env):
    env = dict(os.environ, CARS_STORE='sqlite', CARS_DB_PATH=str(tmp_path / 'cars.db'),
               **env)
    for name in ('CARS_AUTH_SSM_PARAMETER', 'AWS_LAMBDA_FUNCTION_NAME'):
        env.pop(name, None)
    done = subprocess.run([sys.executable, '-c', RESTORE_TWICE % {'root': ROOT},
                           'hooks' if hooks else 'none'],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_two_restored_environments_draw_different_ids_and_jitter(tmp_path):
    out = restore_twice(tmp_path, hooks=True)
    first, second = out['children']
    assert first['ids'] != second['ids']
    assert first['jitter'] != second['jitter']
    assert out['boto3'] is False  # the sqlite path never imports boto3, hooks included


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_control_without_after_restore_both_draw_the_same(tmp_path):
    # Proves the test above would catch a missing reseed.
    first, second = restore_twice(tmp_path, hooks=False)['children']
    assert first == second


def test_after_restore_clears_the_token_cache():
    from chalicelib.http import auth
    auth._ssm_cache['/cars/prod/auth-tokens'] = (0.0, ['cached-token'])
    snapstart.after_restore()
    assert auth._ssm_cache == {}


def test_register_hands_both_hooks_to_the_runtime(monkeypatch):
    registered = []
    fake = types.ModuleType('snapshot_restore_py')
    fake.register_before_snapshot = lambda fn, *a, **k: registered.append(('before', fn))
    fake.register_after_restore = lambda fn, *a, **k: registered.append(('after', fn))
    monkeypatch.setitem(sys.modules, 'snapshot_restore_py', fake)
    assert snapstart.register() is True
    assert registered == [('before', snapstart.before_snapshot),
                          ('after', snapstart.after_restore)]


def test_register_is_a_no_op_outside_lambda(monkeypatch):
    monkeypatch.setitem(sys.modules, 'snapshot_restore_py', None)  # import fails
    assert snapstart.register() is False


BEFORE_SNAPSHOT_DYNAMODB = r'''
import json, sys
sys.path.insert(0, %(root)r)
import app
from chalicelib import snapstart
from chalicelib.store import get_store
before = 'boto3' in sys.modules
snapstart.before_snapshot()
print(json.dumps({'before': before, 'after': 'boto3' in sys.modules,
                  'client': get_store()._client is not None}))
'''


def test_before_snapshot_builds_the_dynamodb_client_without_a_request(tmp_path):
    # Nothing listens on the endpoint: building the client must send nothing.
    env = dict(os.environ, CARS_STORE='dynamodb', CARS_TABLE='cars-snapshot',
               AWS_ENDPOINT_URL_DYNAMODB='http://127.0.0.1:9', AWS_DEFAULT_REGION='us-east-1',
               AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing')
    done = subprocess.run([sys.executable, '-c', BEFORE_SNAPSHOT_DYNAMODB % {'root': ROOT}],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'before-snapshot preparation incomplete' not in done.stderr
    # Importing app does not import boto3 even on DynamoDB; the hook does.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        'before': False, 'after': True, 'client': True}
