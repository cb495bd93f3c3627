"""Settings, read from the environment in one place.

Every module reads its settings through `env()` or the accessors below; each
call reads os.environ, so a changed environment applies at once.
"""
import os

STORES = ('sqlite', 'dynamodb')


def env(name, default=None):
    """The environment variable `name`, or `default` when it is unset."""
    return os.environ.get(name, default)


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
