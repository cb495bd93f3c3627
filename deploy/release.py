"""How a release ended: wait for the stack's CodeDeploy deployments and say so.

    python deploy/release.py --stack cars-prod --region eu-west-3 --since 2026-12-03T16:00:00Z

`make deploy` runs it after `aws cloudformation deploy`, whether that
succeeded or not. CloudFormation itself waits for each alias's CodeDeploy
deployment (the alias's UpdatePolicy), and rolls the stack back when one
fails; this prints, per function, how its deployment ended: succeeded, or
stopped and rolled back and why (CodeDeploy's errorInformation and
rollbackInfo). Deployments still running are waited for until --timeout.

Exit status: 0 when every deployment since --since succeeded (or there was
none: nothing changed), 1 when one failed or was stopped, 2 when the deadline
passed first.
"""
import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from versions import stack_codedeploy, stack_resources  # noqa: E402 - deploy/ is not a package

TERMINAL = {'Succeeded', 'Failed', 'Stopped'}
# The deploy's start is the caller's clock; CodeDeploy's createTime is AWS's.
CLOCK_SKEW = datetime.timedelta(minutes=1)
# Canary10Percent5Minutes: the hook, 5 minutes at 10%, the shift, with room.
DEFAULT_TIMEOUT = 30 * 60


def deployments_since(codedeploy, application, groups, since):
    """{deployment id: function} of the deployments created since `since`
    (`groups`: {deployment group name: function})."""
    out = {}
    for group, logical_id in sorted(groups.items()):
        kwargs = {'applicationName': application, 'deploymentGroupName': group,
                  'createTimeRange': {'start': since}}
        while True:
            page = codedeploy.list_deployments(**kwargs)
            for deployment_id in page.get('deployments', []):
                out[deployment_id] = logical_id
            if not page.get('nextToken'):
                break
            kwargs['nextToken'] = page['nextToken']
    return out


def wait(codedeploy, deployment_ids, timeout=DEFAULT_TIMEOUT, poll=10,
         clock=time.monotonic, sleep=time.sleep):
    """{deployment id: deploymentInfo} once each is Succeeded, Failed or
    Stopped, or when `timeout` seconds have passed (then some are not)."""
    deadline = clock() + timeout
    infos = {}
    while True:
        for deployment_id in deployment_ids:
            if infos.get(deployment_id, {}).get('status') not in TERMINAL:
                infos[deployment_id] = codedeploy.get_deployment(
                    deploymentId=deployment_id)['deploymentInfo']
        if all(i.get('status') in TERMINAL for i in infos.values()) or clock() >= deadline:
            return infos
        sleep(max(0, min(poll, deadline - clock())))


def describe(function, info):
    """One line (or a few) on how one function's deployment ended."""
    status = info.get('status')
    line = '%s: deployment %s %s' % (function, info.get('deploymentId'), status)
    overview = info.get('deploymentOverview') or {}
    if status == 'Succeeded':
        return line + ' (all traffic on the new version)'
    if status not in TERMINAL:
        return line + ' (still running at the deadline; see `aws deploy get-deployment '\
            '--deployment-id %s`)' % info.get('deploymentId')
    lines = [line]
    error = info.get('errorInformation') or {}
    if error:
        lines.append('  why: %s %s' % (error.get('code', ''), error.get('message', '')))
    rollback = info.get('rollbackInfo') or {}
    if rollback.get('rollbackDeploymentId'):
        lines.append('  rolled back by deployment %s: %s' % (
            rollback['rollbackDeploymentId'], rollback.get('rollbackMessage', '')))
    elif rollback.get('rollbackTriggeringDeploymentId'):
        lines.append('  this is the rollback of %s' % rollback['rollbackTriggeringDeploymentId'])
    elif info.get('autoRollbackConfiguration', {}).get('enabled'):
        lines.append('  traffic stays on (or returns to) the previous version')
    if overview:
        lines.append('  overview: %s' % ', '.join('%s %s' % (k, v) for k, v in
                                                  sorted(overview.items()) if v))
    return '\n'.join(lines)


def report(infos, functions):
    """(exit status, text) for the deployments' end states."""
    if not infos:
        return 0, 'release: no CodeDeploy deployment (no function changed)'
    lines = [describe(functions[d], infos[d]) for d in sorted(infos, key=lambda d: functions[d])]
    statuses = {i.get('status') for i in infos.values()}
    if statuses <= {'Succeeded'}:
        return 0, '\n'.join(['release: succeeded'] + lines)
    if statuses & {'Failed', 'Stopped'}:
        return 1, '\n'.join(['release: FAILED and rolled back'] + lines)
    return 2, '\n'.join(['release: still deploying at the deadline'] + lines)


def run(cloudformation, codedeploy, stack, since, timeout=DEFAULT_TIMEOUT, **wait_args):
    application, groups = stack_codedeploy(stack_resources(cloudformation, stack))
    if application is None:
        return 0, 'release: stack %s has no CodeDeploy application' % stack
    functions = deployments_since(codedeploy, application, groups, since - CLOCK_SKEW)
    infos = wait(codedeploy, list(functions), timeout, **wait_args)
    return report(infos, functions)


def _time(text):
    value = datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--stack', required=True)
    parser.add_argument('--region', required=True)
    parser.add_argument('--since', required=True, type=_time,
                        help='when the deploy started (ISO 8601, UTC)')
    parser.add_argument('--timeout', type=int, default=DEFAULT_TIMEOUT, help='seconds')
    args = parser.parse_args(argv)
    import boto3
    session = boto3.session.Session(region_name=args.region)
    status, text = run(session.client('cloudformation'), session.client('codedeploy'),
                       args.stack, args.since, args.timeout)
    print(text)
    return status


if __name__ == '__main__':
    sys.exit(main())
