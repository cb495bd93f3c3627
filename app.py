"""The car inventory API: Chalice routes that translate HTTP into domain calls.

Behaviour lives in chalicelib: the car rules in cars.py, the stores in store/,
HTTP concerns (problems, ETags, cursors) in http.py.
"""
from chalice import Chalice, Rate, Response

from chalicelib import automation, config, http, observability
from chalicelib.domain import cars, idempotency
from chalicelib.http import auth, cors
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
app.register_middleware(http.middleware, 'http')
app.register_middleware(auth.middleware, 'http')


@app.authorizer(ttl_seconds=60)
def token_authorizer(auth_request):
    return auth.authorize(auth_request)


# Attached only where the stage keeps its tokens in SSM (see chalicelib/http/auth.py);
# elsewhere auth.middleware alone checks tokens, with problem bodies.
WRITE_AUTH = token_authorizer if auth.gateway_enforced() else None
READ_AUTH = WRITE_AUTH if auth.reads_protected() else None

CARS = '/api/v1/cars'
CAR = '/api/v1/cars/{car_id}'
# No Content-Type check by Chalice: it would refuse form posts, and a GET that
# happens to carry a Content-Type header. http.read_body decides for the routes
# that read a body, so every 415 has the same problem body. (An empty list also
# spares every request Chalice's media-type matching.)
ANY_BODY = []


@app.route('/', methods=['GET'], content_types=ANY_BODY)
def index():
    return Response(body='Hello, world', headers={'Content-Type': 'text/plain; charset=utf-8'})


@app.route('/api/v1/health', methods=['GET'], content_types=ANY_BODY)
@http.handles_errors
def health():
    kind = config.store_kind()
    try:
        get_store().ping()
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        http.log.warning('health check failed: %s', e)
        raise http.Problem(503, 'the %s store is not reachable' % kind, 'store-unavailable')
    return {'status': 'ok', 'store': kind}


@app.route(CARS, methods=['GET'], content_types=ANY_BODY, authorizer=READ_AUTH)
@http.handles_errors
def list_cars():
    request = app.current_request
    params = http.query_params(request)
    filters, limit, cursor = cars.validate_list_params(params)
    after = http.read_cursor(cursor, filters) if cursor else None
    records, more = get_store().list(filters, after, limit)
    body = {'cars': [cars.public(r) for r in records], 'next': None}
    headers = {}
    if more and records:
        body['next'] = http.make_cursor(records[-1]['id'], filters)
        headers['Link'] = http.next_link(http.url_path(request, CARS), params, body['next'])
    return Response(body=body, headers=headers)


@app.route(CARS, methods=['POST'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@http.handles_errors
def create_car():
    request = app.current_request
    try:
        key = idempotency.validate_key(request.headers.get('idempotency-key'))
    except idempotency.InvalidKey as e:
        raise http.Problem(e.status, str(e), e.slug, errors=[
            {'field': 'Idempotency-Key', 'message': str(e)}])
    absent_only = http.create_precondition(request)
    fields = cars.validate_new(http.read_body(request))
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
        raise http.Problem(e.status, str(e), e.slug)
    return idempotency.response_of(outcome, replayed)


def _created(record):
    location = http.url_path(app.current_request, '%s/%s' % (CARS, record['id']))
    return http.car_response(record, 201, {'Location': location})


def _if_absent(error, absent_only):
    # Under If-None-Match: * a car that exists fails the precondition (412)
    # rather than conflicting (409).
    if absent_only and isinstance(error, cars.CarExists):
        return cars.VersionMismatch(error.car_id, ABSENT_ONLY % error.car_id)
    return error


def _refusal(error):
    if isinstance(error, cars.CarError):
        return idempotency.outcome_of(http.from_domain_error(error))
    return None


@app.route(CARS, methods=['OPTIONS'], content_types=ANY_BODY)
def cars_preflight():
    return cors.preflight(app.current_request, 'GET, POST, OPTIONS')


@app.route(CAR, methods=['OPTIONS'], content_types=ANY_BODY)
def car_preflight(car_id):
    return cors.preflight(app.current_request, 'GET, POST, PUT, PATCH, DELETE, OPTIONS')


@app.route(CAR, methods=['GET'], content_types=ANY_BODY, authorizer=READ_AUTH)
@http.handles_errors
def get_car(car_id):
    record = get_store().get(car_id)
    if record is None:
        raise cars.CarNotFound(car_id)
    if http.not_modified(app.current_request, record):
        return Response(body='', status_code=304, headers={'ETag': http.etag(record)})
    return http.car_response(record)


@app.route(CAR, methods=['POST', 'PATCH'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@http.handles_errors
def update_car(car_id):
    request = app.current_request
    changes = cars.validate_patch(http.read_body(request))
    record = get_store().update(car_id, changes, http.write_precondition(request),
                                http.only_if_absent(request))
    return http.car_response(record)


@app.route(CAR, methods=['PUT'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@http.handles_errors
def put_car(car_id):
    request = app.current_request
    expect, absent_only = http.write_precondition(request), http.only_if_absent(request)
    data = http.read_body(request)
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
    headers = {'Location': http.url_path(request, '%s/%s' % (CARS, car_id))} if created else None
    return http.car_response(record, 201 if created else 200, headers)


@app.route(CAR, methods=['DELETE'], content_types=ANY_BODY, authorizer=WRITE_AUTH)
@http.handles_errors
def delete_car(car_id):
    request = app.current_request
    get_store().delete(car_id, http.write_precondition(request), http.only_if_absent(request))
    return Response(body='', status_code=204)


# The document and its page are built on first request and cached, so no
# other route pays for them at cold start.
@app.route('/api/v1/openapi.json', methods=['GET'], content_types=ANY_BODY)
@http.handles_errors
def openapi_document():
    from chalicelib.http import openapi
    return Response(body=openapi.document_json(), headers={'Content-Type': http.JSON})


@app.route('/api/v1/docs', methods=['GET'], content_types=ANY_BODY)
@http.handles_errors
def docs_page():
    from chalicelib.http import docs
    return Response(body=docs.page(), headers={'Content-Type': 'text/html; charset=utf-8'})


# --- automation: event handlers ---------------------------------------------------
# Thin: each hands its event to chalicelib/automation/. The queue name, the
# bucket in the EventBridge pattern and the stream ARN are placeholders that
# the deployment template overrides with the real resources; the template also
# sets ReportBatchItemFailures on the queue's event source mapping, which
# Chalice does not do itself.

@app.on_sqs_message(queue='cars-ingest', batch_size=10)
def ingest_queue(event):
    return automation.ingest_messages([record.to_dict() for record in event])


@app.on_cw_event(automation.IMPORT_EVENT_PATTERN)
def import_upload(event):
    context = event.context
    return automation.import_object_created(
        event.detail, remaining_ms=context.get_remaining_time_in_millis() if context else None)


@app.on_dynamodb_record(stream_arn=automation.STREAM_ARN_PLACEHOLDER, batch_size=100)
def publish_changes(event):
    return automation.publish_stream_records([record.to_dict() for record in event])


@app.schedule(Rate(1, unit=Rate.DAYS))
def scheduled_export(event):
    return automation.export_inventory()
