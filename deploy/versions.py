"""The stack's functions, their published versions, their aliases and the
CodeDeploy deployments that moved them, read through the AWS APIs
(deploy/release.py, deploy/rollback.py and deploy/prune.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ids import CODEDEPLOY_APPLICATION, LIVE_ALIAS  # noqa: E402 - deploy/ is not a package

GROUP = 'DeploymentGroup'
# batch_get_deployments takes at most this many ids at once.
BATCH = 25


def stack_resources(cloudformation, stack):
    """The stack's resource summaries (list-stack-resources, every page)."""
    paginator = cloudformation.get_paginator('list_stack_resources')
    return [resource for page in paginator.paginate(StackName=stack)
            for resource in page['StackResourceSummaries']]


def stack_functions(resources):
    """{logical id: function name} of the stack's Lambda functions."""
    return {r['LogicalResourceId']: r['PhysicalResourceId'] for r in resources
            if r['ResourceType'] == 'AWS::Lambda::Function' and r.get('PhysicalResourceId')}


def published_versions(lambda_client, function):
    """The function's published version numbers, ascending ($LATEST left out)."""
    versions = []
    paginator = lambda_client.get_paginator('list_versions_by_function')
    for page in paginator.paginate(FunctionName=function):
        versions += [int(v['Version']) for v in page['Versions'] if v['Version'].isdigit()]
    return sorted(versions)


def live_alias(lambda_client, function):
    """The alias, or None when the function has no `live` alias (the hook)."""
    try:
        return lambda_client.get_alias(FunctionName=function, Name=LIVE_ALIAS)
    except lambda_client.exceptions.ResourceNotFoundException:
        return None


def aliased_versions(lambda_client, function):
    """Every version some alias of the function sends traffic to, weighted ones included."""
    out = set()
    paginator = lambda_client.get_paginator('list_aliases')
    for page in paginator.paginate(FunctionName=function):
        for alias in page['Aliases']:
            out.add(alias['FunctionVersion'])
            out.update((alias.get('RoutingConfig') or {}).get('AdditionalVersionWeights') or {})
    return {int(v) for v in out if v.isdigit()}


def stack_codedeploy(resources):
    """(application name, {deployment group name: its function}) of the
    stack's CodeDeploy resources, or (None, {}) when it has none."""
    application, groups = None, {}
    for resource in resources:
        kind = resource['ResourceType']
        if kind == 'AWS::CodeDeploy::Application' and \
                resource['LogicalResourceId'] == CODEDEPLOY_APPLICATION:
            application = resource.get('PhysicalResourceId')
        elif kind == 'AWS::CodeDeploy::DeploymentGroup' and resource.get('PhysicalResourceId'):
            # SAM names a function's group <Function>DeploymentGroup.
            name = resource['LogicalResourceId']
            groups[resource['PhysicalResourceId']] = name[:-len(GROUP)] \
                if name.endswith(GROUP) else name
    return application, groups


def previous_live(codedeploy, application, group, live):
    """The version `live` replaced, when a CodeDeploy deployment that succeeded moved
    the alias to it; None when none did (the stack's first version, or an alias
    moved by hand or by make rollback).

    A version CodeDeploy rolled back never served all traffic: this is the one
    that did before `live`, whatever the numbers between. Versions only grow,
    so the release that made `live` live moved the alias up to it.
    """
    ids, kwargs = [], {'applicationName': application, 'deploymentGroupName': group,
                       'includeOnlyStatuses': ['Succeeded']}
    while True:
        page = codedeploy.list_deployments(**kwargs)
        ids += page.get('deployments', [])
        if not page.get('nextToken'):
            break
        kwargs['nextToken'] = page['nextToken']
    infos = []
    for start in range(0, len(ids), BATCH):
        infos += codedeploy.batch_get_deployments(
            deploymentIds=ids[start:start + BATCH]).get('deploymentsInfo', [])
    # Newest first: the release that made `live` live is usually the latest.
    for info in sorted(infos, key=lambda i: i['createTime'], reverse=True):
        deployment_id = info['deploymentId']
        for target in codedeploy.list_deployment_targets(
                deploymentId=deployment_id).get('targetIds', []):
            function = codedeploy.get_deployment_target(
                deploymentId=deployment_id, targetId=target)['deploymentTarget'].get(
                'lambdaTarget', {}).get('lambdaFunctionInfo', {})
            current = function.get('currentVersion') or ''
            # A move to a lower version is a rollback (the stack's own, after
            # another function failed), not the release that made `live` live.
            if function.get('targetVersion') == str(live) and current.isdigit() \
                    and int(current) < live:
                return int(current)
    return None


def history(session, resources):
    """previous_live for the stack's functions (`resources`: stack_resources): a
    function (logical id, live) -> version or None; None for every function when
    the stack has no CodeDeploy."""
    application, groups = stack_codedeploy(resources)
    group_of = {function: group for group, function in groups.items()}
    codedeploy = session.client('codedeploy') if application else None

    def previous(logical_id, live):
        if codedeploy is None or logical_id not in group_of:
            return None
        return previous_live(codedeploy, application, group_of[logical_id], live)
    return previous
