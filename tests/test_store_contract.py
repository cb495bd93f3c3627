"""The store interface (chalicelib/store/base.py), the same tests on every implementation.

`StoreContract` uses only the `store` fixture (and `unreachable_store`, which
it builds beside it), so another module can run it on a store built some other
way (e.g. a table made from the deployment template) by subclassing it and
overriding that fixture.
"""
import os
import subprocess
import sys
import threading

import pytest

from chalicelib.domain import cars, idempotency
from chalicelib.domain.cars import Filters
from chalicelib.store import dynamodb_items, table
from chalicelib.store.base import KeyClaimLost, KeyOutcome

CAR = {'make': 'Toyota', 'model': 'Corolla', 'year': 2015, 'trans': 'automatic',
       'color': 'blue'}


class StoreContract(object):

    def test_create_assigns_a_free_id_and_version_1(self, store):
        record = store.create(CAR)
        assert cars.is_assignable_id(record['id'])
        assert record['version'] == 1 and record['rev']
        assert cars.public(store.get(record['id'])) == dict(CAR, id=record['id'])

    def test_create_with_an_existing_id_raises_car_exists(self, store):
        store.create(CAR, '1234')
        with pytest.raises(cars.CarExists):
            store.create(dict(CAR, color='red'), '1234')
        assert store.get('1234')['color'] == 'blue'

    def test_get_of_a_missing_car_is_none(self, store):
        assert store.get('9999') is None

    def test_update_bumps_version_and_revision_and_clears_nulls(self, store):
        old = store.create(CAR, '1234')
        new = store.update('1234', {'color': None, 'year': 2016})
        assert (new['version'], new['color'], new['year']) == (2, None, 2016)
        assert new['rev'] != old['rev']
        assert store.get('1234')['color'] is None

    def test_update_with_a_stale_revision_changes_nothing(self, store):
        old = store.create(CAR, '1234')
        store.update('1234', {'color': 'red'})
        with pytest.raises(cars.VersionMismatch):
            store.update('1234', {'color': 'green'}, expect=(old['rev'],))
        assert store.get('1234')['color'] == 'red'

    def test_update_with_the_current_revision_succeeds(self, store):
        old = store.create(CAR, '1234')
        assert store.update('1234', {'color': 'red'}, expect=(old['rev'],))['version'] == 2

    def test_update_of_a_missing_car_raises_not_found(self, store):
        with pytest.raises(cars.CarNotFound):
            store.update('1234', {'color': 'red'})
        with pytest.raises(cars.CarNotFound):
            store.update('1234', {'color': 'red'}, expect='*')
        assert store.get('1234') is None

    def test_replace_creates_then_replaces(self, store):
        record, created = store.replace('1234', CAR)
        assert created and record['version'] == 1
        record, created = store.replace('1234', dict(CAR, trans=None))
        assert not created and record['version'] == 2 and record['trans'] is None

    def test_replace_only_if_absent_refuses_an_existing_car(self, store):
        store.replace('1234', CAR)
        with pytest.raises(cars.VersionMismatch):
            store.replace('1234', dict(CAR, color='red'), only_if_absent=True)
        assert store.get('1234')['color'] == 'blue'

    def test_replace_with_a_precondition_needs_the_car(self, store):
        with pytest.raises(cars.VersionMismatch):
            store.replace('1234', CAR, expect='*')
        assert store.get('1234') is None

    def test_delete_returns_the_old_record_and_respects_preconditions(self, store):
        old = store.create(CAR, '1234')
        store.update('1234', {'color': 'red'})
        with pytest.raises(cars.VersionMismatch):
            store.delete('1234', expect=(old['rev'],))
        assert store.delete('1234')['color'] == 'red'
        assert store.get('1234') is None
        with pytest.raises(cars.CarNotFound):
            store.delete('1234')

    def test_list_pages_in_id_order(self, store):
        ids = ['1111', '2222', '3333', '4444', '5555']
        store.put_many([dict(CAR, id=i) for i in reversed(ids)])
        records, more = store.list(Filters(), None, 2)
        assert [r['id'] for r in records] == ids[:2] and more
        records, more = store.list(Filters(), '2222', 2)
        assert [r['id'] for r in records] == ids[2:4] and more
        records, more = store.list(Filters(), '4444', 2)
        assert [r['id'] for r in records] == ids[4:] and not more

    def test_list_filters(self, store):
        store.put_many([dict(CAR, id='1111'), dict(CAR, id='2222', make='Ford', trans=None),
                        dict(CAR, id='3333', year=1999)])
        def ids(filters):
            return [r['id'] for r in store.list(filters, None, 10)[0]]
        assert ids(Filters({'make': 'ford'})) == ['2222']
        assert ids(Filters({'trans': None})) == ['2222']
        assert ids(Filters(year_max=2000)) == ['3333']
        assert ids(Filters({'make': 'toyota'}, year_min=2000)) == ['1111']

    def test_put_many_creates_or_replaces_and_counts(self, store):
        store.create(CAR, '1111')
        assert store.put_many([dict(CAR, id='1111', color='red'), dict(CAR, id='2222')]) == 2
        assert store.get('1111')['color'] == 'red'
        assert store.count() == 2

    @pytest.fixture
    def unreachable_store(self, store, tmp_path, monkeypatch):
        """A store of `store`'s kind configured, as the app is, with a place it
        cannot reach: for sqlite a database path whose directory is a regular
        file; for DynamoDB a table that does not exist on the same endpoint.
        Yields the store, the errors its ping may raise, and for DynamoDB the
        error code the service answers with. A module that
        overrides `store` with another kind overrides this fixture too."""
        from chalicelib import store as store_module
        from chalicelib.store.sqlite import SqliteStore
        if isinstance(store, SqliteStore):
            import sqlite3
            not_a_directory = tmp_path / 'not-a-directory'
            not_a_directory.write_text('a file where the database directory should be')
            monkeypatch.setenv('CARS_DB_PATH', str(not_a_directory / 'cars.db'))
            kind, errors, code = 'sqlite', (OSError, sqlite3.Error), None
        else:
            from botocore.exceptions import ClientError
            monkeypatch.setenv('CARS_TABLE', 'no-such-table-%s' % os.urandom(6).hex())
            kind, errors, code = 'dynamodb', (ClientError,), 'ResourceNotFoundException'
        unreachable = store_module.get_store(kind)
        assert unreachable is not store and type(unreachable) is type(store)
        yield unreachable, errors, code
        store_module.reset()

    def test_ping_answers_on_a_reachable_store_and_raises_on_an_unreachable_one(
            self, store, unreachable_store):
        assert store.ping() is None
        unreachable, errors, code = unreachable_store
        with pytest.raises(errors) as refused:
            unreachable.ping()
        if code:
            assert refused.value.response['Error']['Code'] == code
        # The reachable store still answers: the failure was the other store's.
        assert store.ping() is None

    # --- idempotency keys -------------------------------------------------------

    def test_a_claimed_key_is_in_flight_until_its_outcome_is_recorded(self, store):
        token, previous = store.claim_key('t#k', 'fp')
        assert token and previous is None
        with pytest.raises(idempotency.KeyInFlight):
            store.claim_key('t#k', 'fp')
        with pytest.raises(idempotency.KeyInFlight):
            store.current_key_outcome('t#k', 'fp')
        store.record_key_outcome('t#k', token, {'n': 1})
        assert store.claim_key('t#k', 'fp') == (None, {'n': 1})
        assert store.current_key_outcome('t#k', 'fp') == {'n': 1}
        with pytest.raises(idempotency.KeyReused):
            store.claim_key('t#k', 'another request')
        with pytest.raises(idempotency.KeyReused):
            store.current_key_outcome('t#k', 'another request')

    def test_a_released_key_is_claimed_afresh(self, store):
        token, _ = store.claim_key('t#k', 'fp')
        store.release_key('t#k', token)
        with pytest.raises(idempotency.KeyInFlight):
            store.current_key_outcome('t#k', 'fp')
        again, _ = store.claim_key('t#k', 'fp')
        assert again and again != token

    def test_a_recorded_outcome_is_final(self, store):
        token, _ = store.claim_key('t#k', 'fp')
        store.record_key_outcome('t#k', token, {'n': 1})
        store.record_key_outcome('t#k', token, {'n': 2})
        store.release_key('t#k', token)
        assert store.current_key_outcome('t#k', 'fp') == {'n': 1}

    def test_create_records_the_key_outcome_with_the_car(self, store):
        token, _ = store.claim_key('t#k', 'fp')
        record = store.create(CAR, key_outcome=KeyOutcome('t#k', token,
                                                          lambda r: {'id': r['id']}))
        assert store.current_key_outcome('t#k', 'fp') == {'id': record['id']}
        assert store.get(record['id'])['rev'] == record['rev']

    def test_create_whose_claim_is_lost_writes_no_car(self, store):
        token, _ = store.claim_key('t#k', 'fp')
        store.release_key('t#k', token)
        with pytest.raises(KeyClaimLost):
            store.create(CAR, '1234', key_outcome=KeyOutcome('t#k', token, lambda r: {}))
        assert store.get('1234') is None and store.count() == 0

    def test_create_of_a_taken_id_records_no_key_outcome(self, store):
        store.create(CAR, '1234')
        token, _ = store.claim_key('t#k', 'fp')
        with pytest.raises(cars.CarExists):
            store.create(CAR, '1234', key_outcome=KeyOutcome('t#k', token,
                                                             lambda r: {'id': r['id']}))
        with pytest.raises(idempotency.KeyInFlight):
            store.current_key_outcome('t#k', 'fp')


class TestStoreContract(StoreContract):
    """Runs on sqlite and on DynamoDB Local (the `store` fixture is parametrized)."""


def test_the_dynamodb_key_attributes_are_the_tables():
    schema = table.cloudformation_properties()['KeySchema']
    assert [(k['AttributeName'], k['KeyType']) for k in schema] == [
        (dynamodb_items.PK, 'HASH'), (dynamodb_items.SK, 'RANGE')]


def test_the_sqlite_store_and_the_stream_decoding_import_no_boto3(tmp_path):
    # The API imports the stream decoding through its event handler; on sqlite
    # neither it nor the store may pull in boto3 (the largest import there is).
    code = '\n'.join([
        'import sys',
        'from chalicelib.domain import idempotency',
        'from chalicelib.store import dynamodb_items, get_store',
        'store = get_store("sqlite")',
        'car = {"make": "Kia", "model": "Rio", "year": 2012, "trans": None, "color": None}',
        'idempotency.create_once(store, "k", "fp", car, lambda r: {"id": r["id"]})',
        'store.changes_after(0)',
        'loaded = sorted(m for m in ("boto3", "botocore") if m in sys.modules)',
        'assert not loaded, loaded',
    ])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CARS_DB_PATH=str(tmp_path / 'cars.db'))
    result = subprocess.run([sys.executable, '-c', code], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_sixteen_threads_opening_a_new_sqlite_file_together_are_never_refused(tmp_path):
    # Connections that each switched a new file to WAL were, now and then,
    # refused at once ("database is locked"), whatever the busy timeout: about
    # 1 new file in 75 here. 400 new files make a pass by luck unlikely.
    from chalicelib.store.sqlite import SqliteStore
    errors = []
    for n in range(400):
        store = SqliteStore(str(tmp_path / ('cars-%d.db' % n)))
        barrier = threading.Barrier(16)

        def claim(i, store=store, barrier=barrier):
            barrier.wait()
            try:
                store.claim_key('t#%d' % i, 'fp')
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                errors.append((n, repr(error)))
            finally:
                store.close()
        threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
