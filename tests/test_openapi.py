"""The served OpenAPI document: valid OpenAPI 3.1, complete, and built from the car rules."""
import ast
import datetime
import glob
import json
import os
import subprocess
import sys

import pytest
from chalice.test import Client
from openapi_spec_validator import validate

import app as app_module
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
def served_and_next_year():
    """The document of a server with write protection on (reads open), and next
    calendar year read just before and just after the fetch (both, so that a
    New Year's midnight during the fetch cannot fail a test)."""
    before = datetime.date.today().year + 1
    doc = fetch(CARS_AUTH_TOKENS='doc-token')[0]
    return doc, {before, datetime.date.today().year + 1}


@pytest.fixture(scope='module')
def served(served_and_next_year):
    return served_and_next_year[0]


@pytest.fixture(scope='module')
def served_year_max(served_and_next_year):
    """The latest `year` the contract allows: next calendar year."""
    return served_and_next_year[1]


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


# --- the car and the listing as docs/api.md states them ---------------------------------
# Written out from the contract ("The car", "Listing: pages and filters"), not
# recomputed from chalicelib/domain/cars.py: the document must say what the docs say.

FIELDS = {'make', 'model', 'year', 'trans', 'color'}
LIST_PARAMS = {'limit', 'cursor', 'make', 'model', 'trans', 'color', 'year', 'year_min',
               'year_max'}
YEAR_MIN = 1886
# Each field's schema must accept `ok` and refuse `bad`, per the contract's rule.
FIELD_CASES = {
    # 1-64 characters once leading and trailing white space is trimmed; no control characters.
    # No control (Cc) or invisible format (Cf) characters.
    'make': {'ok': ['Toyota', 'a', 'a' * 64, '  ' + 'a' * 64 + ' ', 'Mercedes Benz'],
             'bad': ['', '   ', 'a' * 65, 'To\x00yota', 'To\nyota', 'Mu\x85ller',
                     'Fo\u200brd', '\ufeffFord', 'a\u202egnp.exe', '\u00ad', 7, None]},
    # at most 32 characters after trimming, or null; blank reads as null.
    'trans': {'ok': [None, '', '   ', 'automatic', 'a' * 32, ' ' + 'a' * 32 + ' '],
              'bad': ['a' * 33, 'man\tual', 'man\u200dual', 5]},
    # exactly 4 digits 1-9.
    'id': {'ok': ['1111', '8273', '9999'],
           'bad': ['1230', '0123', '123', '12345', '12a4', 1234, None]},
}
FIELD_CASES['model'] = FIELD_CASES['make']
FIELD_CASES['color'] = FIELD_CASES['trans']


def year_cases(year_max):
    # An integer from 1886 up to next calendar year; a string of digits and nothing
    # else is accepted (" 2015" is not); 2015.0 is 2015; true is not a year.
    # ("2015\n" is not a year either, but Python's jsonschema matches `$` before a
    # final newline, unlike JSON Schema's ECMA-262 regexes, so it is not asked here.)
    return {'ok': [YEAR_MIN, 2015, year_max, 2015.0, '2015', str(YEAR_MIN), str(year_max)],
            'bad': [YEAR_MIN - 1, year_max + 1, '1885', str(year_max + 1), '20x5', '',
                    ' 2015', '2015 ', True, 2015.5, None]}


def schema_checker(schema):
    from jsonschema import Draft202012Validator  # the dialect of OpenAPI 3.1
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_schema_decides(schema, cases, what):
    checker = schema_checker(schema)
    for value in cases['ok']:
        assert checker.is_valid(value), (what, value)
    for value in cases['bad']:
        assert not checker.is_valid(value), (what, value)


def test_car_body_schema_states_the_documented_fields_and_which_are_required(served):
    new = served['components']['schemas']['CarNew']
    assert set(new['properties']) == FIELDS | {'id'}
    assert sorted(new['required']) == ['make', 'model', 'year']
    assert new['additionalProperties'] is False
    patch = served['components']['schemas']['CarPatch']
    assert set(patch['properties']) == FIELDS
    assert not patch.get('required')
    assert patch['additionalProperties'] is False
    checker = schema_checker(new)
    assert checker.is_valid({'id': '8273', 'make': 'Toyota', 'model': 'Corolla',
                             'year': 2015, 'trans': 'automatic', 'color': 'blue'})
    assert checker.is_valid({'make': 'Ford', 'model': 'Focus', 'year': '2012'})
    assert not checker.is_valid({'make': 'Ford', 'model': 'Focus'})
    assert not checker.is_valid({'make': 'Ford', 'model': 'Focus', 'year': 2012,
                                 'price': 100})


@pytest.mark.parametrize('schema_name', ['CarNew', 'CarPatch'])
def test_car_field_schemas_state_the_documented_rules(served, served_year_max, schema_name):
    properties = served['components']['schemas'][schema_name]['properties']
    for name in sorted(set(FIELD_CASES) & set(properties)):
        assert_schema_decides(properties[name], FIELD_CASES[name], (schema_name, name))
    assert properties['make']['type'] == properties['model']['type'] == 'string'
    if schema_name == 'CarNew':
        assert properties['id'] == dict(properties['id'], type='string',
                                        pattern='^[1-9]{4}$')
    for name in ('trans', 'color'):
        assert {'type': 'null'} in properties[name]['anyOf'], name
    integers = [s for s in properties['year']['anyOf'] if s.get('type') == 'integer']
    assert len(integers) == 1
    assert integers[0]['minimum'] == YEAR_MIN
    assert integers[0]['maximum'] in served_year_max
    year_max = integers[0]['maximum']
    assert_schema_decides(properties['year'], year_cases(year_max), (schema_name, 'year'))


def test_listing_parameters_state_the_documented_ranges(served, served_year_max):
    params = {p['name']: p for p in served['paths']['/api/v1/cars']['get']['parameters']}
    assert set(params) == LIST_PARAMS
    for name, param in params.items():
        assert (param['in'], param['required']) == ('query', False), name
    # limit: cars per page, 1-1000, default 100.
    limit = params['limit']['schema']
    assert (limit['type'], limit['minimum'], limit['maximum']) == ('integer', 1, 1000)
    assert 'default 100' in params['limit']['description']
    # year, year_min, year_max: a whole number from 1886 to next year.
    for name in ('year', 'year_min', 'year_max'):
        schema = params[name]['schema']
        assert (schema['type'], schema['minimum']) == ('integer', YEAR_MIN), name
        assert schema['maximum'] in served_year_max, name
    # An empty cursor is a 400.
    assert params['cursor']['schema'] == {'type': 'string', 'minLength': 1}
    # Text filters: at most 64 characters, without control or format characters.
    for name in ('make', 'model', 'trans', 'color'):
        schema = params[name]['schema']
        assert (schema['type'], schema['maxLength']) == ('string', 64), name
        assert_schema_decides(schema, {'ok': ['', 'toyota', 'x' * 64],
                                       'bad': ['x' * 65, 'toy\x00ota', 'toy\nota',
                                               'toy\u200bota', '\ufefftoyota']}, name)


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


# --- HEAD, and headers a client generator can type ---------------------------------------

def test_every_get_has_a_head_with_its_statuses_and_headers_and_no_body_schema(served):
    gets = {path for path, method in operations(served) if method == 'get'}
    heads = {path for path, method in operations(served) if method == 'head'}
    assert gets == heads and gets
    for path in gets:
        get, head = served['paths'][path]['get'], served['paths'][path]['head']
        assert head['operationId'] == get['operationId'] + 'Head'
        assert head.get('parameters') == get.get('parameters'), path
        assert head.get('security') == get.get('security'), path
        assert set(head['responses']) == set(get['responses']), path
        for status, response in head['responses'].items():
            got = get['responses'][status]
            assert response.get('headers') == got.get('headers'), (path, status)
            # The media types are the Content-Type sent; no schema: there is no body.
            assert list(response.get('content', {})) == list(got.get('content', {}))
            assert all(media == {} for media in response.get('content', {}).values())
    ids = [served['paths'][p][m]['operationId'] for p, m in operations(served)]
    assert len(ids) == len(set(ids))


def test_write_if_none_match_is_a_string_that_only_star_matches(served):
    # A `const` here made openapi-python-client skip every write ("Literal['*'] |
    # Unset is not allowed in header"); a one-value string enum says the same, and
    # is typed by client generators and fuzzers alike.
    star = served['components']['schemas']['IfNoneMatchStar']
    assert (star['type'], star['enum']) == ('string', ['*'])
    assert_schema_decides(star, {'ok': ['*'], 'bad': ['', '**', ' *', '"a"', 'x*', 0]},
                          'IfNoneMatchStar')
    checked = 0
    for path, method in operations(served):
        if method not in ('post', 'put', 'patch', 'delete'):
            continue
        for param in served['paths'][path][method].get('parameters', []):
            if param['name'] == 'If-None-Match':
                assert param['schema'] == {'$ref': '#/components/schemas/IfNoneMatchStar'}
                checked += 1
    assert checked == 5
