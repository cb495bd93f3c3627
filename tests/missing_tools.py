"""What to do when a tool a test needs (java for DynamoDB Local, chromium) is missing.

In CI the test fails. On a developer's machine it is skipped, and the run ends
with a summary line that names what was not tested (conftest.py), so a green
run without DynamoDB Local cannot pass for a full one.
"""
import os

import pytest

PREFIX = 'NOT TESTED'


def in_ci():
    return os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')


def skip_or_fail(what, reason):
    message = '%s (%s): %s' % (PREFIX, what, reason)
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def untested(skipped_reports):
    """{what: count} over skipped reports made by skip_or_fail."""
    counts = {}
    for report in skipped_reports:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix('Skipped: ')
        if reason.startswith(PREFIX + ' ('):
            what = reason[len(PREFIX) + 2:reason.index(')')]
            counts[what] = counts.get(what, 0) + 1
    return counts
