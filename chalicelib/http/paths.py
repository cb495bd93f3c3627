"""The API's URL paths, written once: the routes, the auth and logging checks,
the OpenAPI document and the problem `type` links all read them here."""
API = '/api/v1'
CARS = API + '/cars'
CAR = CARS + '/{car_id}'
HEALTH = API + '/health'
OPENAPI = API + '/openapi.json'
DOCS = API + '/docs'


def car(car_id):
    """The path of one car."""
    return '%s/%s' % (CARS, car_id)
