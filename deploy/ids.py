"""Logical ids in the stage template that several deploy modules and the tests name.

The functions, roles and event sources are Chalice's names for app.py's
handlers; the rest are this stack's own resources (deploy/resources.py).
"""

# The functions Chalice makes of app.py: the API function (every route, under
# Chalice's own name) and one per authorizer or event handler, named after the
# handler (chalice.utils.to_cfn_resource_name: ingest_queue -> IngestQueue).
API_HANDLER = 'APIHandler'
TOKEN_AUTHORIZER = 'TokenAuthorizer'
INGEST_QUEUE = 'IngestQueue'
IMPORT_UPLOAD = 'ImportUpload'
PUBLISH_CHANGES = 'PublishChanges'
SCHEDULED_EXPORT = 'ScheduledExport'

# app.py's handler name -> its function; every other function in app.py is an
# API view, served by API_HANDLER.
HANDLERS = {
    'token_authorizer': TOKEN_AUTHORIZER,
    'ingest_queue': INGEST_QUEUE,
    'import_upload': IMPORT_UPLOAD,
    'publish_changes': PUBLISH_CHANGES,
    'scheduled_export': SCHEDULED_EXPORT,
    'pre_traffic_check': 'PreTrafficCheck',
}

# Function -> the role Chalice makes for it (`<handler>_role` in CamelCase; the
# API function's handler is `api_handler`).
ROLES = {
    API_HANDLER: 'ApiHandlerRole',
    TOKEN_AUTHORIZER: 'TokenAuthorizerRole',
    INGEST_QUEUE: 'IngestQueueRole',
    IMPORT_UPLOAD: 'ImportUploadRole',
    PUBLISH_CHANGES: 'PublishChangesRole',
    SCHEDULED_EXPORT: 'ScheduledExportRole',
    'PreTrafficCheck': 'PreTrafficCheckRole',
}

# CodeDeploy's pre-traffic hook (app.py's `pre_traffic_check`, a plain
# @app.lambda_function; chalicelib/release/pretraffic.py): it tests the new
# versions before any traffic reaches them. It is not aliased itself: CodeDeploy
# invokes it by name, and it is never in the traffic path.
PRE_TRAFFIC_CHECK = 'PreTrafficCheck'
HOOK_HANDLER = 'pre_traffic_check'
# The functions that serve traffic: each one has versions and the `live`
# alias, and everything invokes it through the alias (deploy/release_template.py).
FUNCTIONS = sorted(f for f in ROLES if f != PRE_TRAFFIC_CHECK)

# Versions and the alias (SAM's AutoPublishAlias): `<Function>.Alias` and
# `<Function>.Version` are SAM's references to them; the resources SAM makes
# are `<Function>Alias<alias>` and `<Function>Version<hash>`.
LIVE_ALIAS = 'live'
# What SAM's DeploymentPreference makes: one CodeDeploy application for the
# stack, one deployment group per function.
CODEDEPLOY_APPLICATION = 'ServerlessDeploymentApplication'
CODEDEPLOY_ROLE = 'CarsCodeDeployRole'


def alias_resource(function):
    return '%sAlias%s' % (function, LIVE_ALIAS)


def deployment_group(function):
    return '%sDeploymentGroup' % function

# The event sources Chalice gives the event handlers' functions.
INGEST_EVENT = 'IngestQueueSqsEventSource'
IMPORT_EVENT = 'ImportUploadEvent'
PUBLISH_EVENT = 'PublishChangesDynamodbEventSource'
EXPORT_EVENT = 'ScheduledExportEvent'
# The EventBridge rules the SAM transform makes of the two rule event sources.
IMPORT_RULE = IMPORT_UPLOAD + IMPORT_EVENT
EXPORT_RULE = SCHEDULED_EXPORT + EXPORT_EVENT

# The REST API in front of API_HANDLER.
REST_API = 'RestAPI'

# This stack's own resources, named Cars* so they cannot collide with Chalice's.
TABLE = 'CarsTable'
QUEUE = 'CarsIngestQueue'
BUCKET = 'CarsBucket'
TOPIC = 'CarsChangesTopic'
# Import/export events EventBridge could not deliver, or that failed every
# asynchronous try of their function.
EVENTS_DEAD_LETTERS = 'CarsEventsDeadLetterQueue'
# Stream batches PublishChanges failed on every retry (Lambda sends where in
# the stream they were, not the records: they stay readable for 24 hours).
CHANGES_DEAD_LETTERS = 'CarsChangesDeadLetterQueue'
