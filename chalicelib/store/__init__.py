"""The car store: one small interface (`base.Store`), two implementations.

`get_store()` picks the implementation named by CARS_STORE and imports only
that one, so the sqlite path never imports boto3.
"""
import threading

from chalicelib import config

_lock = threading.Lock()
_stores = {}
_configured = (None, None)  # (config.generation, the configured store)


def get_store(kind=None):
    """The process-wide store for `kind` (default: the configured one)."""
    global _configured
    if kind is None and _configured[0] == config.generation:
        return _configured[1]
    store = _store(kind or config.store_kind())
    if kind is None and config.REMEMBER:
        # Remembered settings change only through config.reload(), which bumps
        # the generation; until then the answer stays the same.
        _configured = (config.generation, store)
    return store


def _store(kind):
    key = (kind, config.db_path() if kind == 'sqlite' else config.table_name())
    store = _stores.get(key)
    if store is None:
        with _lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = _create(kind, key[1])
    return store


def _create(kind, where):
    if kind == 'sqlite':
        from chalicelib.store.sqlite import SqliteStore
        return SqliteStore(where)
    from chalicelib.store.dynamodb import DynamoDBStore
    return DynamoDBStore(where)


def reset():
    """Forget the stores made so far (tests and the CLI switch configuration)."""
    config.reload()
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
