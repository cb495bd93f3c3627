"""The middleware every HTTP request passes: the route id rule, problem
bodies for Chalice's own errors, and HEAD answered as GET without a body."""
from chalicelib.domain import cars
from chalicelib.http.problems import as_problem, problem_response
from chalicelib.http.request import JSON


def middleware(event, get_response):
    response = _answer(event, get_response)
    if not isinstance(response.body, (str, bytes)) and not any(
            name.lower() == 'content-type' for name in response.headers):
        # A body Chalice serializes as JSON: say so here, as API Gateway and the
        # local servers would, so that a HEAD (whose body is gone) says it too.
        response.headers['Content-Type'] = JSON
    if event.method == 'HEAD':
        # Every GET route also has HEAD (RFC 9110 9.3.2): the same view, status
        # and headers, no body. Stripped here, once, after every other step
        # (errors and auth answers included); the server in front sets
        # Content-Length.
        response.body = ''
    return response


def _answer(event, get_response):
    # The seed routed ids with [0-9]{4}; Chalice captures any segment, so the
    # rule is enforced here, once, for every method.
    params = getattr(event, 'uri_params', None) or {}
    if 'car_id' in params and not cars.is_route_id(params['car_id']):
        return problem_response(404, 'no such resource: a car id is exactly 4 digits',
                                'car-not-found')
    response = get_response(event)
    return as_problem(response)
