"""The car store: one interface (`base.Store`), two implementations.

`get_store()` picks the implementation the configuration names and imports
only that one, so the sqlite path never imports boto3.
"""
import threading

from chalicelib import config

_lock = threading.Lock()
# One store per (kind, database file or table): each holds connections or a client.
_stores = {}


def get_store(kind=None):
    """The process-wide store for `kind` (default: the configured one)."""
    kind = kind or config.store_kind()
    where = config.db_path() if kind == 'sqlite' else config.table_name()
    store = _stores.get((kind, where))
    if store is None:
        with _lock:
            store = _stores.get((kind, where))
            if store is None:
                store = _stores[(kind, where)] = _open(kind, where)
    return store


def _open(kind, where):
    if kind == 'sqlite':
        from chalicelib.store.sqlite import SqliteStore
        return SqliteStore(where)
    from chalicelib.store.dynamodb import DynamoDBStore
    return DynamoDBStore(where)


def reset():
    """Close and forget the stores made so far (tests and the CLI switch configuration)."""
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
