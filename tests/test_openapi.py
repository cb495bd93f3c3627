"""The served OpenAPI document: valid OpenAPI 3.1, complete, and built from the car rules."""
import ast
import glob
import json
import os
import subprocess
import sys

import pytest
from chalice.test import Client
from openapi_spec_validator import validate

import app as app_module
from chalicelib import cars, openapi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace')


@pytest.fixture(scope='module')
def served():
    with Client(app_module.app) as client:
        response = client.http.get('/api/v1/openapi.json')
    assert response.status_code == 200
    assert response.headers['Content-Type'].startswith('application/json')
    return json.loads(response.body)


def operations(doc):
    return {(path, method) for path, item in doc['paths'].items()
            for method in item if method in METHODS}


def test_served_document_is_valid_openapi_3_1(served):
    assert served['openapi'].startswith('3.1')
    validate(served)


def test_document_has_every_route_and_method_of_the_app_and_no_other(served):
    routes = {(path, method.lower()) for path, entries in app_module.app.routes.items()
              for method in entries}
    assert operations(served) == routes


def test_served_document_answers_with_and_without_trailing_slash():
    with Client(app_module.app) as client:
        assert client.http.get('/api/v1/openapi.json/').status_code == 200
        assert client.http.get('/api/v1/docs/').status_code == 200


def test_body_schemas_are_the_msgspec_types_that_validate_requests(served):
    import msgspec
    types, _ = cars._field_types()
    schemas = served['components']['schemas']
    for name in cars.FIELDS + ('id',):
        expected = msgspec.json.schema(types[name])
        assert schemas['CarNew']['properties'][name] == expected, name
    assert schemas['CarNew']['required'] == ['make', 'model', 'year']
    assert schemas['CarNew']['additionalProperties'] is False
    assert set(schemas['CarPatch']['properties']) == set(cars.FIELDS)
    assert not schemas['CarPatch'].get('required')


def test_listing_parameters_are_the_msgspec_types_that_validate_them(served):
    import msgspec
    params = {p['name']: p for p in served['paths']['/api/v1/cars']['get']['parameters']}
    assert set(params) == set(cars.LIST_PARAMS)
    for name, (typ, _) in cars.list_param_types().items():
        assert params[name]['schema'] == msgspec.json.schema(typ), name


def test_create_and_update_bodies_are_described_as_json_and_form(served):
    for path, method in [('/api/v1/cars', 'post'), ('/api/v1/cars/{car_id}', 'post'),
                         ('/api/v1/cars/{car_id}', 'patch'), ('/api/v1/cars/{car_id}', 'put')]:
        content = served['paths'][path][method]['requestBody']['content']
        assert set(content) == {'application/json', 'application/x-www-form-urlencoded'}


def test_every_error_response_is_a_problem_and_writes_need_a_bearer_token(served):
    assert served['components']['securitySchemes']['bearer']['scheme'] == 'bearer'
    for path, method in operations(served):
        op = served['paths'][path][method]
        for status, response in op['responses'].items():
            if int(status) >= 400:
                assert list(response['content']) == ['application/problem+json'], (path, status)
        if method in ('post', 'put', 'patch', 'delete'):
            assert op['security'] == [{'bearer': []}], (path, method)
            assert {'401', '403'} <= set(op['responses']), (path, method)
        else:
            assert 'security' not in op, (path, method)


def test_write_headers_are_documented(served):
    car = served['paths']['/api/v1/cars/{car_id}']
    create = served['paths']['/api/v1/cars']['post']
    assert 'ETag' in car['get']['responses']['200']['headers']
    assert '304' in car['get']['responses']
    assert {'If-Match'} <= {p['name'] for p in car['patch']['parameters']}
    assert {'If-Match', 'If-None-Match'} <= {p['name'] for p in car['put']['parameters']}
    assert 'If-None-Match' in {p['name'] for p in car['get']['parameters']}
    assert 'Idempotency-Key' in {p['name'] for p in create['parameters']}
    assert {'ETag', 'Location'} <= set(create['responses']['201']['headers'])
    listing = served['paths']['/api/v1/cars']['get']['responses']['200']
    assert 'Link' in listing['headers']


def _slugs_in_code():
    """Problem slugs the code can emit: Problem(...)/problem_response(...) arguments,
    slug= keywords and `slug = '...'` class attributes."""
    slugs = set()
    for path in glob.glob(os.path.join(ROOT, 'chalicelib', '**', '*.py'), recursive=True) + [
            os.path.join(ROOT, 'app.py')]:
        if path.endswith('openapi.py'):
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, 'id', None) or getattr(node.func, 'attr', None)
                args = list(node.args)
                if name in ('Problem', 'problem_response', 'AuthError') and len(args) >= 3:
                    if isinstance(args[2], ast.Constant) and isinstance(args[2].value, str):
                        slugs.add(args[2].value)
                for kw in node.keywords:
                    if kw.arg == 'slug' and isinstance(kw.value, ast.Constant) \
                            and isinstance(kw.value.value, str):
                        slugs.add(kw.value.value)
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    getattr(node.targets[0], 'id', None) == 'slug' and \
                    isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                slugs.add(node.value.value)
    return slugs


def test_every_problem_type_the_code_emits_is_documented(served):
    documented = {p['slug'] for p in served['x-problem-types']}
    emitted = _slugs_in_code()
    assert {'invalid-car', 'car-not-found', 'malformed-body'} <= emitted
    # The base class's slug is never sent: every raised error is a subclass.
    emitted.discard('idempotency-error')
    assert emitted <= documented, sorted(emitted - documented)
    for problem in served['x-problem-types']:
        assert problem['type'] == '/api/v1/docs#problem-%s' % problem['slug']


def test_document_is_cached_and_costs_nothing_at_import():
    assert openapi.document() is openapi.document()
    code = ('import sys, app; '
            'assert "chalicelib.openapi" not in sys.modules; '
            'assert "chalicelib.docs" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)
