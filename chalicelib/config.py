"""Settings read from the environment, in one place.

Read on every call rather than cached at import: tests and the CLI change the
environment between calls, and the cost is a dict lookup.
"""
import os

STORES = ('sqlite', 'dynamodb')


class ConfigError(Exception):
    """The deployment is misconfigured (not a client error)."""


def store_kind():
    kind = os.environ.get('CARS_STORE', '').strip().lower()
    if not kind:
        # Inside Lambda there is no writable, durable disk for sqlite.
        return 'dynamodb' if os.environ.get('AWS_LAMBDA_FUNCTION_NAME') else 'sqlite'
    if kind not in STORES:
        raise ConfigError('CARS_STORE must be one of %s, not %r' % (', '.join(STORES), kind))
    return kind


def db_path():
    return os.environ.get('CARS_DB_PATH') or 'cars.db'


def table_name():
    name = os.environ.get('CARS_TABLE')
    if not name:
        raise ConfigError('CARS_TABLE must name the DynamoDB table')
    return name


def dynamodb_endpoint():
    # boto3 honours AWS_ENDPOINT_URL_DYNAMODB itself since 1.28; passing it
    # explicitly keeps older runtimes and tools that build clients by hand right.
    return os.environ.get('AWS_ENDPOINT_URL_DYNAMODB') or None
