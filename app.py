"""The car inventory API: Chalice routes that translate HTTP into domain calls.

The car rules are in chalicelib/domain/, the stores in chalicelib/store/, the
event handlers' work in chalicelib/automation/, settings in chalicelib/config.py,
logs and metrics in chalicelib/observability.py. HTTP concerns are in
chalicelib/http/, a module per job:

- paths: the URL paths, written once
- problems: problem+json answers, and the catalogue of every problem type
- middleware: the route id rule; Chalice's own errors as problems
- request: reading bodies (JSON, forms), query parameters and headers
- preconditions: ETags, If-Match and If-None-Match
- cursors: listing cursors and the next page's Link
- auth, cors: bearer tokens; CORS headers and preflights
- openapi, docs: the OpenAPI document and its HTML page
"""
from chalice import Chalice, Rate, Response

from chalicelib import config, observability
from chalicelib.automation import bulk_import, export, ingest, publish
from chalicelib.domain import cars, idempotency
from chalicelib.http import auth, cors, middleware, paths
from chalicelib.http.cursors import make_cursor, next_link, read_cursor
from chalicelib.http.preconditions import (car_response, create_precondition, etag,
                                           not_modified, only_if_absent, write_precondition)
from chalicelib.http.problems import Problem, from_domain_error, handles_errors, log
from chalicelib.http.request import JSON, query_params, read_body, url_path
from chalicelib.store import get_store
from chalicelib.store.base import ABSENT_ONLY

# configure_logs=False: Chalice would give the `cars` logger a stdout handler
# of its own at ERROR and stop propagation, so the Lambda runtime's JSON
# handler on the root logger would never see an INFO or WARNING line.
app = Chalice(app_name='cars', configure_logs=False)
# The API sends and accepts text only (JSON, forms, HTML, plain text). With no
# binary media types, Chalice skips matching every request's Accept and every
# response's Content-Type against its 16 defaults, on every request.
app.api.binary_types = []
# Outermost first: every handler's log lines carry its request or event ids
# and its metrics are flushed (observability); CORS headers go on every
# answer, errors included; the token check runs after the id rule, just
# before the views.
app.register_middleware(observability.middleware, 'all')
app.register_middleware(cors.middleware, 'http')
app.register_middleware(middleware.middleware, 'http')
app.register_middleware(auth.middleware, 'http')


@app.authorizer(ttl_seconds=60)
def token_authorizer(auth_request):
    return auth.authorize(auth_request)


# Attached only where the stage keeps its tokens in SSM (see chalicelib/http/auth.py);
# elsewhere auth.middleware alone checks tokens, with problem bodies.
WRITE_AUTH = token_authorizer if auth.gateway_enforced() else None
READ_AUTH = WRITE_AUTH if auth.reads_protected() else None

# No Content-Type check by Chalice: it would refuse form posts, and a GET that
# happens to carry a Content-Type header. read_body decides for the routes
# that read a body, so every 415 has the same problem body. (An empty list also
# spares every request Chalice's media-type matching.)
ANY_BODY = []
# Every GET route has HEAD too (RFC 9110 9.3.2): the same view; middleware.py
# sends its status and headers without the body.
GET = ['GET', 'HEAD']


@app.route('/', methods=GET, content_types=ANY_BODY)
def index():
    return Response(body='Hello, world', headers={'Content-Type': 'text/plain; charset=utf-8'})


@app.route(paths.HEALTH, methods=GET, content_types=ANY_BODY)
@handles_errors
def health():
    kind = config.store_kind()
    try:
        get_store().ping()
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        log.warning('health check failed: %s', e)
        raise Problem(503, 'the %s store is not reachable' % kind, 'store-unavailable')
    return {'status': 'ok', 'store': kind}


@app.route(paths.CARS, methods=GET, content_types=ANY_BODY, authorizer=READ_AUTH)
@handles_errors
def list_cars():
    request = app.current_request
    params = query_params(request)
    filters, limit, cursor = cars.validate_list_params(params)
    after = read_cursor(cursor, filters) if cursor else None
    # The store may stop before `limit` matches (a bounded read): the page is
    # then short, even empty, and `next` resumes after the last id it read.
    records, resume_after = get_store().list(filters, after, limit)
    body = {'cars': [cars.public(r) for r in records], 'next': None}
    headers = {}
    if resume_after is not None:
        body['next'] = make_cursor(resume_after, filters)
        headers['Link'] = next_link(url_path(request, paths.CARS), params, body['next'])
    return Response(body=body, headers=headers)


@app.route(paths.CARS, methods=['POST'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@handles_errors
def create_car():
    request = app.current_request
    try:
        key = idempotency.validate_key(request.headers.get('idempotency-key'))
    except idempotency.InvalidKey as e:
        raise Problem(e.status, str(e), e.slug, errors=[
            {'field': 'Idempotency-Key', 'message': str(e)}])
    absent_only = create_precondition(request)
    fields = cars.validate_new(read_body(request))
    car = {k: fields[k] for k in cars.FIELDS}
    if key is None:
        try:
            return _created(get_store().create(car, fields.get('id')))
        except cars.CarExists as e:
            raise _if_absent(e, absent_only)
    # The car and the key's outcome are one write; a refusal (409) is replayed
    # too, and any other failure frees the key for a retry.
    try:
        outcome, replayed = idempotency.create_once(
            get_store(), key, idempotency.fingerprint(fields), car,
            lambda record: idempotency.outcome_of(_created(record)),
            car_id=fields.get('id'),
            error_outcome=lambda error: _refusal(_if_absent(error, absent_only)))
    except idempotency.IdempotencyError as e:
        raise Problem(e.status, str(e), e.slug)
    return idempotency.response_of(outcome, replayed)


def _created(record):
    location = url_path(app.current_request, paths.car(record['id']))
    return car_response(record, 201, {'Location': location})


def _if_absent(error, absent_only):
    # Under If-None-Match: * a car that exists fails the precondition (412)
    # rather than conflicting (409).
    if absent_only and isinstance(error, cars.CarExists):
        return cars.VersionMismatch(error.car_id, ABSENT_ONLY % error.car_id)
    return error


def _refusal(error):
    if isinstance(error, cars.CarError):
        return idempotency.outcome_of(from_domain_error(error))
    return None


@app.route(paths.CARS, methods=['OPTIONS'], content_types=ANY_BODY)
def cars_preflight():
    return cors.preflight(app.current_request, 'GET, HEAD, POST, OPTIONS')


@app.route(paths.CAR, methods=['OPTIONS'], content_types=ANY_BODY)
def car_preflight(car_id):
    return cors.preflight(app.current_request,
                         'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS')


@app.route(paths.CAR, methods=GET, content_types=ANY_BODY, authorizer=READ_AUTH)
@handles_errors
def get_car(car_id):
    record = get_store().get(car_id)
    if record is None:
        raise cars.CarNotFound(car_id)
    if not_modified(app.current_request, record):
        return Response(body='', status_code=304, headers={'ETag': etag(record)})
    return car_response(record)


@app.route(paths.CAR, methods=['POST', 'PATCH'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@handles_errors
def update_car(car_id):
    request = app.current_request
    changes = cars.validate_patch(read_body(request))
    record = get_store().update(car_id, changes, write_precondition(request),
                                only_if_absent(request))
    return car_response(record)


@app.route(paths.CAR, methods=['PUT'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@handles_errors
def put_car(car_id):
    request = app.current_request
    expect, absent_only = write_precondition(request), only_if_absent(request)
    data = read_body(request)
    if isinstance(data, dict) and 'id' in data:
        if data['id'] != car_id:
            raise cars.InvalidCar([{'field': 'id', 'message': 'must match the id in the path (%s)'
                                    % car_id}])
        data = {k: v for k, v in data.items() if k != 'id'}
    fields = cars.validate_new(data, allow_id=False)
    # Ids with a 0 exist only in data carried over from the seed: they may be
    # replaced but never created.
    if not cars.is_assignable_id(car_id) and get_store().get(car_id) is None:
        raise cars.InvalidCar([{'field': 'id', 'message': 'a new car id must be 4 digits 1-9'}])
    record, created = get_store().replace(
        car_id, {k: fields[k] for k in cars.FIELDS}, expect, absent_only)
    headers = {'Location': url_path(request, paths.car(car_id))} if created else None
    return car_response(record, 201 if created else 200, headers)


@app.route(paths.CAR, methods=['DELETE'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@handles_errors
def delete_car(car_id):
    request = app.current_request
    get_store().delete(car_id, write_precondition(request), only_if_absent(request))
    return Response(body='', status_code=204)


# The document and its page are built on first request and cached, so no
# other route pays for them at cold start.
@app.route(paths.OPENAPI, methods=GET, content_types=ANY_BODY)
@handles_errors
def openapi_document():
    from chalicelib.http import openapi
    return Response(body=openapi.document_json(), headers={'Content-Type': JSON})


@app.route(paths.DOCS, methods=GET, content_types=ANY_BODY)
@handles_errors
def docs_page():
    from chalicelib.http import docs
    return Response(body=docs.page(), headers={'Content-Type': 'text/html; charset=utf-8'})


# --- automation: event handlers ---------------------------------------------------
# Thin: each hands its event to its module in chalicelib/automation/. The queue
# name, the bucket in the EventBridge pattern and the stream ARN are
# placeholders that the deployment template (deploy/resources.py) overrides
# with the real resources; the template also sets ReportBatchItemFailures on
# the queue's event source mapping, which Chalice does not do itself.

@app.on_sqs_message(queue='cars-ingest', batch_size=10)
def ingest_queue(event):
    return ingest.ingest_messages([record.to_dict() for record in event])


@app.on_cw_event(bulk_import.IMPORT_EVENT_PATTERN)
def import_upload(event):
    context = event.context
    return bulk_import.import_object_created(
        event.detail, remaining_ms=context.get_remaining_time_in_millis() if context else None)


@app.on_dynamodb_record(stream_arn=publish.STREAM_ARN_PLACEHOLDER, batch_size=100)
def publish_changes(event):
    return publish.publish_stream_records([record.to_dict() for record in event])


@app.schedule(Rate(1, unit=Rate.DAYS))
def scheduled_export(event):
    return export.export_inventory()


# --- release: SnapStart hooks and the pre-traffic check -----------------------------
# SnapStart (prod's published versions): what the snapshot holds and what every
# restored environment renews (chalicelib/snapstart.py); a no-op outside Lambda.
from chalicelib import snapstart  # noqa: E402

snapstart.register()


# CodeDeploy's BeforeAllowTraffic hook: questions the new version of the API (and
# of the authorizer) before the `live` alias moves (chalicelib/release/pretraffic.py).
@app.lambda_function(name='pre_traffic_check')
def pre_traffic_check(event, context):
    from chalicelib.release import pretraffic
    return pretraffic.handle(event)
