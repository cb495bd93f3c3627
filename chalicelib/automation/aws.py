"""The AWS resources automation uses: the bucket and topic settings, and boto3 clients.

boto3 is imported by the first `client` call: nothing on the sqlite path (the
API, the CLI) loads it.
"""
import os

from chalicelib import config


def bucket_name():
    name = os.environ.get('CARS_BUCKET')
    if not name:
        raise config.ConfigError('CARS_BUCKET must name the import/export bucket')
    return name


def topic_arn():
    arn = os.environ.get('CARS_EVENTS_TOPIC_ARN')
    if not arn:
        raise config.ConfigError('CARS_EVENTS_TOPIC_ARN must name the change events topic')
    return arn


def client(service):
    import boto3
    return boto3.client(service)
