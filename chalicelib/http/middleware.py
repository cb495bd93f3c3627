"""The middleware every HTTP request passes: the route id rule, and problem
bodies for Chalice's own errors."""
from chalicelib.domain import cars
from chalicelib.http.problems import as_problem, problem_response


def middleware(event, get_response):
    # The seed routed ids with [0-9]{4}; Chalice captures any segment, so the
    # rule is enforced here, once, for every method.
    params = getattr(event, 'uri_params', None) or {}
    if 'car_id' in params and not cars.is_route_id(params['car_id']):
        return problem_response(404, 'no such resource: a car id is exactly 4 digits',
                                'car-not-found')
    response = get_response(event)
    return as_problem(response)
