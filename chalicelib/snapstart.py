"""Lambda SnapStart runtime hooks: what goes into the snapshot, what is renewed after it.

With SnapStart (the prod stage's published versions) Lambda initialises a version
once, snapshots the memory, and resumes every new execution environment from that
one snapshot. `register()` hands the two hooks below to the runtime's
`snapshot_restore_py` module; outside the Lambda runtime that module does not
exist and nothing is registered. The hooks are plain functions, so the tests
call them directly (tests/test_snapstart.py). docs/design.md, "SnapStart".

Nothing here imports boto3 unless the configured store is DynamoDB.
"""
import logging
import random

log = logging.getLogger('cars.snapstart')


def before_snapshot():
    """Load what a first request needs, so that it is in the snapshot.

    No request is sent: a connection opened now would be stale after a restore.
    A failure here only costs the first request some time, so it is logged, not
    raised (a raise would fail the version's publication).
    """
    try:
        from chalicelib import config
        from chalicelib.domain import cars
        from chalicelib.http import auth
        kind = config.store_kind()
        if kind == 'dynamodb':
            from chalicelib.store import get_store
            get_store().client  # noqa: B018 - imports boto3 and builds the client
            import encodings.idna  # noqa: F401 - what the first connection imports
        else:
            # The module (and sqlite3) only: a connection must not be shared by
            # the environments restored from one snapshot (local runs, the bench).
            import chalicelib.store.sqlite  # noqa: F401
        if auth.ssm_parameter():
            # The token check's first read builds its client; loading the SSM
            # model now (boto3's default session caches it) makes that cheap.
            import boto3
            boto3.client('ssm')
        if auth.enabled():
            import hmac  # noqa: F401 - the token comparison's import
        cars.list_param_types()  # msgspec and the listing's query rules
    except Exception as e:  # noqa: BLE001 - an optimisation, never a failure
        log.warning('before-snapshot preparation incomplete: %s: %s', type(e).__name__, e)


def after_restore():
    """Renew what must differ between environments restored from one snapshot.

    - `random`: every restored environment starts from the snapshot's generator
      state, so without a reseed all of them would draw the same candidate car
      ids (chalicelib/store/*: random.choice) and the same retry jitter
      (store/dynamodb.py put_many: random.random). Revision and claim tokens
      and event ids use os.urandom, which the kernel serves fresh.
    - the SSM token cache (chalicelib/http/auth.py): its entries are stamped
      with time.monotonic(), a clock that says nothing true across a snapshot;
      the restored environment reads the tokens again on first use.
    """
    # No argument: CPython seeds from os.urandom (the system time only where the
    # OS has no randomness source). Seeding with bytes would hash them with
    # sha512, whose first use loads a module: 0.7 ms of a restore.
    random.seed()
    from chalicelib.http import auth
    auth.clear_cache()


def register():
    """Register the hooks with the Lambda runtime; a no-op anywhere else."""
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
    return True
