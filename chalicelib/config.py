"""Settings read from the environment, in one place.

Every module reads its settings through `env()`. A Lambda container and a
local server never change their environment after start-up, so each value is
read once and remembered: an `os.environ` lookup costs about a microsecond (a
missing key raises inside), which a request would otherwise pay a dozen times.
Code that changes the environment at run time (the CLI's --store, benchmarks)
calls `reload()`; `chalicelib.store.reset()` does. The test suite turns the
memory off (`REMEMBER = False`), since tests change settings between requests.
"""
import os

STORES = ('sqlite', 'dynamodb')
REMEMBER = True
_remembered = {}
# Bumped by reload(), so values derived from settings elsewhere know to go stale.
generation = 0


def env(name, default=None):
    """The environment variable `name`, or `default` when it is unset."""
    try:
        value = _remembered[name]
    except KeyError:
        value = os.environ.get(name)
        if REMEMBER:
            _remembered[name] = value
    return default if value is None else value


def reload():
    """Forget remembered values: the environment has changed."""
    global generation
    _remembered.clear()
    generation += 1


class ConfigError(Exception):
    """The deployment is misconfigured (not a client error)."""


def store_kind():
    kind = env('CARS_STORE', '').strip().lower()
    if not kind:
        # Inside Lambda there is no writable, durable disk for sqlite.
        return 'dynamodb' if env('AWS_LAMBDA_FUNCTION_NAME') else 'sqlite'
    if kind not in STORES:
        raise ConfigError('CARS_STORE must be one of %s, not %r' % (', '.join(STORES), kind))
    return kind


def db_path():
    return env('CARS_DB_PATH') or 'cars.db'


def table_name():
    name = env('CARS_TABLE')
    if not name:
        raise ConfigError('CARS_TABLE must name the DynamoDB table')
    return name


def dynamodb_endpoint():
    # boto3 honours AWS_ENDPOINT_URL_DYNAMODB itself since 1.28; passing it
    # explicitly keeps older runtimes and tools that build clients by hand right.
    return env('AWS_ENDPOINT_URL_DYNAMODB') or None
