"""The stack's functions, their published versions and their aliases, read
through the AWS APIs (deploy/rollback.py and deploy/prune.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ids import LIVE_ALIAS  # noqa: E402 - deploy/ is not a package


def stack_functions(cloudformation, stack):
    """{logical id: function name} of the stack's Lambda functions."""
    out = {}
    paginator = cloudformation.get_paginator('list_stack_resources')
    for page in paginator.paginate(StackName=stack):
        for resource in page['StackResourceSummaries']:
            if resource['ResourceType'] == 'AWS::Lambda::Function' and \
                    resource.get('PhysicalResourceId'):
                out[resource['LogicalResourceId']] = resource['PhysicalResourceId']
    return out


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
