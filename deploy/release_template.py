"""Safe releases in the stage template: versions, the `live` alias, CodeDeploy, SnapStart.

Chalice makes neither versions nor aliases, so they are added on top of `chalice
package`'s SAM template: AutoPublishAlias on every function, every invoker pointed at
the alias, DeploymentPreference (prod: a canary for the API and the authorizer, behind
the pre-traffic hook and the release alarms), CodeDeploy's own narrow role, and
SnapStart in prod. The figures and reasons: docs/deployment.md, "Releases".
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import policies  # noqa: E402 - deploy/ is not a package
from ids import (API_HANDLER, CODEDEPLOY_ROLE, FUNCTIONS, IMPORT_UPLOAD,  # noqa: E402
                 INGEST_QUEUE, LIVE_ALIAS, PRE_TRAFFIC_CHECK, PUBLISH_CHANGES,
                 SCHEDULED_EXPORT, TOKEN_AUTHORIZER, alias_resource)

# How CodeDeploy shifts each function's alias, per stage.
#   prod: the API and the authorizer serve requests, which a weighted alias
#   splits meaningfully: 10% of requests reach the new version for 5 minutes
#   (the alarms' window), then all of them. The event handlers run from a
#   queue, a stream, an upload and a daily schedule: a 10% share of one
#   stream batch or of one daily export tests nothing, and two versions
#   interleaving on the change stream would publish events out of order, so
#   they move at once; their Errors alarm still rolls them back.
#   dev: everything at once (the hook still runs first).
CANARY = 'Canary10Percent5Minutes'
ALL_AT_ONCE = 'AllAtOnce'
DEPLOYMENT_TYPES = {
    'prod': {API_HANDLER: CANARY, TOKEN_AUTHORIZER: CANARY, INGEST_QUEUE: ALL_AT_ONCE,
             IMPORT_UPLOAD: ALL_AT_ONCE, PUBLISH_CHANGES: ALL_AT_ONCE,
             SCHEDULED_EXPORT: ALL_AT_ONCE},
    'dev': {f: ALL_AT_ONCE for f in FUNCTIONS},
}
# SnapStart on published versions: prod only (a snapshot is taken at each
# publish, which makes every deploy slower; dev deploys often and cold starts
# there cost nobody).
SNAPSTART_STAGES = ('prod',)
SNAPSTART = {'ApplyOn': 'PublishedVersions'}

# The hook's environment (chalicelib/release/pretraffic.py reads it).
HOOK_TARGET_API = 'CARS_HOOK_TARGET_API'
HOOK_TARGET_AUTHORIZER = 'CARS_HOOK_TARGET_AUTHORIZER'
HOOK_TOKENS_ON = 'CARS_HOOK_TOKENS_ON'


def alias_ref(function):
    """The `live` alias's ARN (SAM's `<Function>.Alias` reference)."""
    return {'Ref': '%s.Alias' % function}


def version_ref(function):
    """The version this deploy published (SAM's `<Function>.Version`)."""
    return {'Ref': '%s.Version' % function}


def deployment_preference(function, stage, alarms, hook):
    preference = {
        'Type': DEPLOYMENT_TYPES[stage][function],
        'Alarms': [{'Ref': a} for a in alarms],
        'Role': {'Fn::GetAtt': [CODEDEPLOY_ROLE, 'Arn']},
    }
    if hook:
        preference['Hooks'] = {'PreTraffic': {'Ref': PRE_TRAFFIC_CHECK}}
    return preference


def function_overrides(stage, release_alarms, hook=True):
    """Merge-template entries for each function: alias, deployment, SnapStart.

    `release_alarms`: {function: [alarm logical ids that roll its release back]}.
    """
    out = {}
    for function in FUNCTIONS:
        props = {
            'AutoPublishAlias': LIVE_ALIAS,
            # A new version for a change of any property, not only the code:
            # a new environment variable or memory size is released (and
            # rolled back) like code.
            'AutoPublishAliasAllProperties': True,
            'DeploymentPreference': deployment_preference(
                function, stage, release_alarms[function], hook),
        }
        if stage in SNAPSTART_STAGES:
            props['SnapStart'] = dict(SNAPSTART)
        out[function] = {'Properties': props}
    if hook:
        out[PRE_TRAFFIC_CHECK] = {'Properties': {'Environment': {'Variables': {
            HOOK_TARGET_API: version_ref(API_HANDLER),
            HOOK_TARGET_AUTHORIZER: version_ref(TOKEN_AUTHORIZER),
            # Every deployed stage's writes need a token (the template names
            # the token parameter for each stage, see deploy/policies.py).
            HOOK_TOKENS_ON: 'true',
        }}}}
    return out


def codedeploy_role(hook=True):
    """CodeDeploy's service role for this stack's deployments (SAM would
    otherwise make one with the AWS managed AWSCodeDeployRoleForLambda)."""
    return {CODEDEPLOY_ROLE: {'Type': 'AWS::IAM::Role', 'Properties': {
        'AssumeRolePolicyDocument': {'Version': '2012-10-17', 'Statement': [{
            'Effect': 'Allow', 'Principal': {'Service': 'codedeploy.amazonaws.com'},
            'Action': 'sts:AssumeRole'}]},
        'Policies': [{'PolicyName': '%sPolicy' % CODEDEPLOY_ROLE,
                      'PolicyDocument': policies.codedeploy_role_policy(FUNCTIONS, hook)}],
    }}}


# --- the packaged template: every invoker names the alias -----------------------

def alias_sub(function):
    """The alias's ARN inside an Fn::Sub string. SAM resolves `${<Function>.Alias}`
    there too, but cfn-lint reads it as an attribute the function lacks; the
    alias's own logical id (SAM's `<Function>Alias<name>`, whose Ref is its
    ARN) is what the transform writes anyway."""
    return '${%s}' % alias_resource(function)


def _alias_sub(text):
    for function in FUNCTIONS:
        text = text.replace('${%s.Arn}' % function, alias_sub(function))
    return text


def _subs_to_alias(node):
    """`node` with every Fn::Sub's `${<Function>.Arn}` made the alias's ARN."""
    if isinstance(node, list):
        return [_subs_to_alias(n) for n in node]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == 'Fn::Sub' and isinstance(value, str):
                out[key] = _alias_sub(value)
            elif key == 'Fn::Sub' and isinstance(value, list):
                out[key] = [_alias_sub(value[0])] + [_subs_to_alias(v) for v in value[1:]]
            else:
                out[key] = _subs_to_alias(value)
        return out
    return node


def _named_function(node):
    """The function in FUNCTIONS that `node` (Ref / Fn::GetAtt Arn) names, or None."""
    if isinstance(node, dict):
        if set(node) == {'Ref'} and node['Ref'] in FUNCTIONS:
            return node['Ref']
        if set(node) == {'Fn::GetAtt'} and node['Fn::GetAtt'][0] in FUNCTIONS \
                and node['Fn::GetAtt'][1] == 'Arn':
            return node['Fn::GetAtt'][0]
    return None


def point_invokers_at_aliases(template):
    """`chalice package`'s SAM template with every invoker on the `live` alias.

    Chalice writes the API's integration and authorizer URIs as
    `${APIHandler.Arn}` / `${TokenAuthorizer.Arn}` and its invoke permissions
    on the bare function; they become the alias's ARN (`alias_sub`, and
    `{"Ref": "<Function>.Alias"}`). Event sources (SAM Events) follow the alias
    by themselves. Returns a new template.
    """
    out = json.loads(json.dumps(template))
    for resource in out.get('Resources', {}).values():
        props = resource.get('Properties') or {}
        if resource.get('Type') == 'AWS::Serverless::Api' and 'DefinitionBody' in props:
            props['DefinitionBody'] = _subs_to_alias(props['DefinitionBody'])
        if resource.get('Type') == 'AWS::Lambda::Permission':
            function = _named_function(props.get('FunctionName'))
            if function:
                props['FunctionName'] = alias_ref(function)
    return out
