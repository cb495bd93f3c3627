"""Point each function's `live` alias back at its previous version.

    python deploy/rollback.py --stack cars-prod --region eu-west-3 [--dry-run]
        [--to APIHandler=41 ...] [--only APIHandler ...]

`make rollback STAGE=prod` runs it. For every function of the stack with a
`live` alias: the alias's version now (get-alias), the version it replaced,
and the alias moved there, all traffic at once. The version it replaced is
the one CodeDeploy's last successful deployment to it moved traffic from;
without such a record (the first version, or an alias moved by hand) it is
the highest published version below. It prints `<function>: live <now> ->
<previous>`, saying which way it was found. `--to Function=N` picks the
version instead; `--dry-run` only prints.

It refuses while a canary is under way (the alias has a weighted second
version): stop that deployment instead (`aws deploy stop-deployment
--deployment-id <id> --auto-rollback-enabled`), which rolls it back.

The stack still names the newer version: the next `make deploy` that
changes a function publishes a new version and shifts the alias to it as
usual; a deploy that changes nothing leaves the alias where this put it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ids import LIVE_ALIAS  # noqa: E402 - deploy/ is not a package
from versions import (history, live_alias, published_versions, stack_functions,  # noqa: E402
                      stack_resources)


class RollbackError(Exception):
    pass


BY_HISTORY = 'the version it replaced'
BY_NUMBER = 'the highest below it (no CodeDeploy record of what it replaced)'
BY_HAND = 'chosen with --to'


def plan(lambda_client, functions, targets=None, previous=None):
    """[(logical id, function name, version now, version to go to, how it was chosen)].

    `targets`: {logical id: version} chosen by hand. `previous`: (logical id,
    live version) -> the version it replaced, or None (versions.history).
    Raises RollbackError when a function is mid-canary or has no earlier version.
    """
    targets = targets or {}
    out, problems = [], []
    for logical_id, name in sorted(functions.items()):
        alias = live_alias(lambda_client, name)
        if alias is None:
            continue
        now = int(alias['FunctionVersion'])
        weights = (alias.get('RoutingConfig') or {}).get('AdditionalVersionWeights') or {}
        if weights:
            problems.append('%s: a deployment is shifting traffic (%s); stop it with '
                            '`aws deploy stop-deployment --deployment-id <id> '
                            '--auto-rollback-enabled`' % (logical_id, weights))
            continue
        versions = published_versions(lambda_client, name)
        if logical_id in targets:
            to, how = int(targets[logical_id]), BY_HAND
            if to not in versions:
                problems.append('%s: no version %d (has %s)' % (logical_id, to, versions))
                continue
        else:
            to, how = (previous(logical_id, now) if previous else None), BY_HISTORY
            if to is not None and to not in versions:
                problems.append('%s: live %d replaced version %d, which is deleted; pick '
                                'one with --to (has %s)' % (logical_id, now, to, versions))
                continue
            if to is None:
                earlier = [v for v in versions if v < now]
                if not earlier:
                    problems.append('%s: live is version %d, there is no earlier one'
                                    % (logical_id, now))
                    continue
                to, how = earlier[-1], BY_NUMBER
        out.append((logical_id, name, now, to, how))
    unknown = set(targets) - {p[0] for p in out} - {p.split(':')[0] for p in problems}
    problems += ['%s: not a function of this stack with a %s alias' % (f, LIVE_ALIAS)
                 for f in sorted(unknown)]
    if problems:
        raise RollbackError('\n'.join(problems))
    return out


def roll_back(lambda_client, steps, dry_run=False, say=print):
    for logical_id, name, now, to, how in steps:
        if not dry_run:
            lambda_client.update_alias(FunctionName=name, Name=LIVE_ALIAS,
                                       FunctionVersion=str(to),
                                       RoutingConfig={'AdditionalVersionWeights': {}})
        say('%s: %s %d -> %d, %s%s' % (logical_id, LIVE_ALIAS, now, to, how,
                                       ' (dry run, nothing changed)' if dry_run else ''))


def _target(text):
    function, _, version = text.partition('=')
    if not function or not version.isdigit():
        raise argparse.ArgumentTypeError('expected Function=N, e.g. APIHandler=41')
    return function, int(version)


def main(argv=None, session=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stack', required=True)
    parser.add_argument('--region', required=True)
    parser.add_argument('--to', type=_target, action='append', default=[],
                        metavar='FUNCTION=N', help='this version instead of the previous one')
    parser.add_argument('--only', action='append', default=[], metavar='FUNCTION',
                        help='roll back only these functions (logical ids)')
    parser.add_argument('--dry-run', action='store_true')
    args = parser.parse_args(argv)
    if session is None:
        import boto3
        session = boto3.session.Session(region_name=args.region)
    lambda_client = session.client('lambda')
    resources = stack_resources(session.client('cloudformation'), args.stack)
    functions = stack_functions(resources)
    if args.only:
        functions = {k: v for k, v in functions.items() if k in args.only}
    try:
        steps = plan(lambda_client, functions, dict(args.to), history(session, resources))
    except RollbackError as e:
        print('rollback: nothing changed:\n%s' % e, file=sys.stderr)
        return 1
    if not steps:
        print('rollback: no function of %s has a %s alias' % (args.stack, LIVE_ALIAS),
              file=sys.stderr)
        return 1
    roll_back(lambda_client, steps, args.dry_run)
    return 0


if __name__ == '__main__':
    sys.exit(main())
