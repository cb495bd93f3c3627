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
from chalicelib.domain import cars
from chalicelib.http import openapi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace')
AUTH_SETTINGS = ('CARS_AUTH_TOKENS', 'CARS_AUTH_SSM_PARAMETER', 'CARS_AUTH_PROTECT_READS',
                 'CARS_AUTH_DISABLED', 'AWS_LAMBDA_FUNCTION_NAME')


def fetch(**settings):
    """The document as a server with these auth settings (and no others) serves it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in AUTH_SETTINGS:
            mp.delenv(name, raising=False)
        for name, value in settings.items():
            mp.setenv(name, value)
        with Client(app_module.app) as client:
            response = client.http.get('/api/v1/openapi.json')
            page = client.http.get('/api/v1/docs')
    assert response.status_code == 200 and page.status_code == 200
    assert response.headers['Content-Type'].startswith('application/json')
    return json.loads(response.body), page.body.decode('utf-8')


@pytest.fixture(scope='module')
def served():
    """The document of a server with write protection on (reads open)."""
    return fetch(CARS_AUTH_TOKENS='doc-token')[0]


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
            assert not {'401', '403'} & set(op['responses']), (path, method)


def demands(doc):
    """{(path, method): needs a token?} and whether any 401/403 is documented, per operation."""
    out = {}
    for path, method in operations(doc):
        op = doc['paths'][path][method]
        out[path, method] = ('security' in op, bool({'401', '403'} & set(op['responses'])))
    return out


@pytest.mark.parametrize('settings', [{}, {'CARS_AUTH_DISABLED': 'true',
                                           'AWS_LAMBDA_FUNCTION_NAME': 'cars-dev'},
                                      {'CARS_AUTH_PROTECT_READS': 'true'}])
def test_with_open_writes_the_document_demands_no_token(settings):
    doc, page = fetch(**settings)
    validate(doc)
    assert set(demands(doc).values()) == {(False, False)}
    assert 'securitySchemes' not in doc['components']
    assert 'writes need no token' in doc['info']['description']
    assert 'bearer token</span>' not in page


@pytest.mark.parametrize('settings', [{'CARS_AUTH_TOKENS': 'a,b'},
                                      {'CARS_AUTH_SSM_PARAMETER': '/cars/test/auth-tokens'},
                                      {'AWS_LAMBDA_FUNCTION_NAME': 'cars-dev'}])
def test_where_a_token_is_configured_writes_demand_it_and_reads_do_not(settings):
    doc, page = fetch(**settings)
    validate(doc)
    for (path, method), demand in demands(doc).items():
        write = path.startswith('/api/v1/cars') and method in ('post', 'put', 'patch', 'delete')
        assert demand == (write, write), (path, method)
    assert 'bearer token</span>' in page


def test_a_stage_that_protects_reads_says_so_for_the_car_reads_only():
    doc, _ = fetch(CARS_AUTH_TOKENS='a', CARS_AUTH_PROTECT_READS='true')
    validate(doc)
    for (path, method), demand in demands(doc).items():
        protected = path.startswith('/api/v1/cars') and method != 'options'
        assert demand == (protected, protected), (path, method)
    assert 'Every request to `/api/v1/cars...`' in doc['info']['description']


def test_the_document_follows_the_settings_and_is_built_once_per_settings(monkeypatch):
    for name in AUTH_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    open_doc = openapi.document()
    assert 'security' not in open_doc['paths']['/api/v1/cars']['post']
    assert openapi.document() is open_doc
    monkeypatch.setenv('CARS_AUTH_TOKENS', 'a')
    assert openapi.document()['paths']['/api/v1/cars']['post']['security'] == [{'bearer': []}]
    assert '"security"' in openapi.document_json()


def test_write_headers_are_documented(served):
    car = served['paths']['/api/v1/cars/{car_id}']
    create = served['paths']['/api/v1/cars']['post']
    assert 'ETag' in car['get']['responses']['200']['headers']
    assert '304' in car['get']['responses']
    for method in ('post', 'patch', 'delete'):
        assert {'If-Match', 'If-None-Match'} <= {p['name'] for p in car[method]['parameters']}
        assert {'400', '404', '412'} <= set(car[method]['responses'])
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
            'assert "chalicelib.http.openapi" not in sys.modules; '
            'assert "chalicelib.http.docs" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)
