"""Delete the published versions that neither serve traffic nor a rollback needs.

    python deploy/prune.py --stack cars-prod --region eu-west-3 [--keep 3] [--dry-run]

`make prune STAGE=prod` runs it, and `make deploy` runs it after a release
that succeeded. SAM retains every version it publishes, and with SnapStart
each one's snapshot is charged for as long as the version exists. For each
function with a `live` alias it keeps every version an alias sends traffic
to (a canary's too), every version above the live one (a release under way,
or one CodeDeploy rolled back), the version the live one replaced and the
--keep highest below the live one (what `make rollback` goes back to); it
deletes the rest and prints
`<function>: deleted 1, 2; live 6, kept 3, 4, 5`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from versions import (aliased_versions, history, live_alias,  # noqa: E402
                      published_versions, stack_functions, stack_resources)

DEFAULT_KEEP = 3


def plan(lambda_client, functions, keep=DEFAULT_KEEP, previous=None):
    """[(logical id, function name, live version, versions to delete, versions kept)].

    `previous`: (logical id, live version) -> the version it replaced, or None
    (versions.history); that one is kept too.
    """
    out = []
    for logical_id, name in sorted(functions.items()):
        alias = live_alias(lambda_client, name)
        if alias is None:
            continue
        live = int(alias['FunctionVersion'])
        versions = published_versions(lambda_client, name)
        below = [v for v in versions if v < live]
        kept = set(below[-keep:] if keep else []) | aliased_versions(lambda_client, name)
        kept |= {v for v in versions if v >= live}
        replaced = previous(logical_id, live) if previous else None
        if replaced is not None:
            kept.add(replaced)
        out.append((logical_id, name, live, [v for v in versions if v not in kept],
                    [v for v in versions if v in kept and v != live]))
    return out


def prune(lambda_client, steps, dry_run=False, say=print):
    for logical_id, name, live, delete, kept in steps:
        if not dry_run:
            for version in delete:
                lambda_client.delete_function(FunctionName=name, Qualifier=str(version))
        say('%s: %s; live %d%s%s' % (
            logical_id, 'deleted ' + _numbers(delete) if delete else 'nothing to delete', live,
            ', kept ' + _numbers(kept) if kept else '',
            ' (dry run, nothing deleted)' if dry_run and delete else ''))


def _numbers(versions):
    return ', '.join(str(v) for v in versions)


def main(argv=None, session=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stack', required=True)
    parser.add_argument('--region', required=True)
    parser.add_argument('--keep', type=int, default=DEFAULT_KEEP, metavar='N',
                        help='versions kept below the live one, for make rollback '
                             '(default %d)' % DEFAULT_KEEP)
    parser.add_argument('--dry-run', action='store_true')
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error('--keep must be at least 1: make rollback needs a version to go back to')
    if session is None:
        import boto3
        session = boto3.session.Session(region_name=args.region)
    lambda_client = session.client('lambda')
    resources = stack_resources(session.client('cloudformation'), args.stack)
    steps = plan(lambda_client, stack_functions(resources), args.keep,
                 history(session, resources))
    if not steps:
        print('prune: no function of %s has a live alias; nothing deleted' % args.stack)
        return 0
    prune(lambda_client, steps, args.dry_run)
    return 0


if __name__ == '__main__':
    sys.exit(main())
