"""A Python client generated from the served OpenAPI document works.

openapi-python-client (requirements-dev.txt) generates a client from
GET /api/v1/openapi.json, as a consumer of the API would. The generator must
generate every operation without a warning (it skips an operation whose
parameters it cannot type, and says so only in its output), and the generated
package must drive the API over real HTTP (`make run`'s server) on both stores:
create, read, conditional writes with their 412s, a 422, replace, list, HEAD,
delete and the 404 after it.
"""
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from servers import LocalServer
from stores import server_env
from test_openapi import fetch

BIN = os.path.dirname(sys.executable)
GENERATOR = os.path.join(BIN, 'openapi-python-client')
PACKAGE = 'cars_api_client'
TOKEN = 'generated-client-token'
METHODS = ('get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace')
# What the generator prints when it leaves something out or cannot type it.
COMPLAINTS = re.compile(r'warning|skipp|will not be generated|not allowed|unsupported|'
                        r'error|could not|unable', re.IGNORECASE)

pytestmark = pytest.mark.slow


def served_document(**settings):
    """The document as a server with these auth settings (and no others) serves it."""
    return fetch(**settings)[0]


def generate(doc, where):
    """Run the generator on `doc` into `where`/cars_api_client; its combined output."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / 'openapi.json'
    path.write_text(json.dumps(doc))
    # Its post hooks (ruff) are found on PATH: the venv's own, offline.
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get('PATH', ''))
    result = subprocess.run(
        [GENERATOR, 'generate', '--path', str(path), '--output-path', str(where / PACKAGE),
         '--meta', 'none', '--fail-on-warning', '--overwrite'],
        cwd=str(where), env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def snake(operation_id):
    return re.sub(r'(?<=[a-z0-9])(?=[A-Z])', '_', operation_id).lower()


def operations(doc):
    return [(path, method, op) for path, item in doc['paths'].items()
            for method, op in item.items() if method in METHODS]


@pytest.mark.parametrize('settings', [{}, {'CARS_AUTH_TOKENS': TOKEN},
                                      {'CARS_AUTH_TOKENS': TOKEN,
                                       'CARS_AUTH_PROTECT_READS': 'true'}],
                         ids=['open', 'writes-protected', 'reads-protected'])
def test_every_operation_of_the_document_is_generated_without_a_warning(settings, tmp_path):
    doc = served_document(**settings)
    output = generate(doc, tmp_path)
    assert not COMPLAINTS.search(output), output
    api = tmp_path / PACKAGE / 'api'
    ids = [op['operationId'] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    missing = [(path, method, op['operationId']) for path, method, op in operations(doc)
               if not (api / op['tags'][0] / (snake(op['operationId']) + '.py')).is_file()]
    assert not missing, output
    generated = {p.stem for p in api.glob('*/*.py') if p.stem != '__init__'}
    assert generated == {snake(i) for i in ids}
    # Every write is there (these five were once skipped: If-None-Match was a const).
    assert {'create_car', 'put_car', 'update_car_post', 'update_car',
            'delete_car'} <= generated


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    """The client generated from a write-protected server's document, imported."""
    where = tmp_path_factory.mktemp('generated')
    generate(served_document(CARS_AUTH_TOKENS=TOKEN), where)
    sys.path.insert(0, str(where))
    try:
        package = importlib.import_module(PACKAGE)
        modules = {name: importlib.import_module('%s.api.%s' % (PACKAGE, name))
                   for name in ('cars', 'service')}
        for module in list(modules.values()):
            for path in sorted((where / PACKAGE / 'api' / module.__name__.split('.')[-1])
                               .glob('*.py')):
                if path.stem != '__init__':
                    importlib.import_module('%s.%s' % (module.__name__, path.stem))
        yield package
    finally:
        sys.path.remove(str(where))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + '.')]:
            del sys.modules[name]


@pytest.fixture
def protected_server(store_kind, tmp_path):
    """`make run`'s server on the test's store; writes need TOKEN."""
    env = dict(server_env(), CARS_AUTH_TOKENS=TOKEN)
    with LocalServer(env=env, kind='dev', log_path=str(tmp_path / 'server.log')) as s:
        yield s


@pytest.mark.http
def test_the_generated_client_drives_the_api_over_http(generated, protected_server, store_kind):
    from cars_api_client import AuthenticatedClient, Client as Anonymous
    from cars_api_client.api.cars import (create_car, delete_car, get_car, get_car_head,
                                          list_cars, put_car, update_car, update_car_post)
    from cars_api_client.api.service import health
    from cars_api_client.models import (Car, CarList, CarNew, CarPatch, CarPatchForm,
                                        CarReplace, IfNoneMatchStar, Problem)
    from cars_api_client.types import UNSET

    url = protected_server.url
    with AuthenticatedClient(base_url=url, token=TOKEN) as client, \
            Anonymous(base_url=url) as anonymous:
        assert health.sync(client=anonymous).store.value == store_kind

        # Writes need the token; the client says why not as a Problem.
        r = create_car.sync_detailed(client=anonymous, body=CarNew(
            make='Toyota', model='Corolla', year=2015))
        assert r.status_code == 401 and isinstance(r.parsed, Problem)
        assert r.parsed.status == 401 and 'WWW-Authenticate' in r.headers

        # Create.
        r = create_car.sync_detailed(client=client, body=CarNew(
            make='Toyota', model='Corolla', year=2015, trans='automatic', color='blue'))
        assert r.status_code == 201 and isinstance(r.parsed, Car), r.content
        car = r.parsed
        assert (car.make, car.model, car.year, car.trans, car.color) == (
            'Toyota', 'Corolla', 2015, 'automatic', 'blue')
        assert r.headers['Location'] == '/api/v1/cars/' + car.id

        # Read, with its ETag; 304 when it still matches; HEAD tells the same.
        r = get_car.sync_detailed(car.id, client=anonymous)
        assert r.status_code == 200 and r.parsed == car
        tag = r.headers['ETag']
        r = get_car.sync_detailed(car.id, client=anonymous, if_none_match=tag)
        assert r.status_code == 304 and r.parsed is None
        r = get_car_head.sync_detailed(car.id, client=anonymous)
        assert r.status_code == 200 and r.content == b'' and r.headers['ETag'] == tag

        # PATCH with If-Match: the read's tag.
        r = update_car.sync_detailed(car.id, client=client, body=CarPatch(color='red'),
                                     if_match=tag)
        assert r.status_code == 200 and r.parsed.color == 'red', r.content
        new_tag = r.headers['ETag']
        assert new_tag != tag

        # The stale tag: 412, nothing changes.
        r = update_car.sync_detailed(car.id, client=client, body=CarPatch(color='green'),
                                     if_match=tag)
        assert r.status_code == 412 and isinstance(r.parsed, Problem)
        assert r.parsed.status == 412

        # A bad body: 422, naming the field.
        r = update_car.sync_detailed(car.id, client=client, body=CarPatch(year=1800),
                                     if_match=new_tag)
        assert r.status_code == 422 and isinstance(r.parsed, Problem), r.content
        assert [e.field for e in r.parsed.errors] == ['year']
        assert get_car.sync(car.id, client=anonymous).color == 'red'

        # The seed's update, as a form.
        r = update_car_post.sync_detailed(car.id, client=client,
                                          body=CarPatchForm(color='white'))
        assert r.status_code == 200 and r.parsed.color == 'white', r.content

        # PUT replaces: fields left out become null.
        r = put_car.sync_detailed(car.id, client=client, body=CarReplace(
            make='Honda', model='Civic', year=2020), if_match=r.headers['ETag'])
        assert r.status_code == 200 and isinstance(r.parsed, Car), r.content
        assert (r.parsed.make, r.parsed.trans, r.parsed.color) == ('Honda', None, None)

        # If-None-Match: * (the header that once cost the writes): create only.
        assert str(IfNoneMatchStar.STAR) == '*'
        other = '5678' if car.id != '5678' else '5679'
        r = put_car.sync_detailed(other, client=client, body=CarReplace(
            make='Ford', model='Focus', year=2012), if_none_match=IfNoneMatchStar.STAR)
        assert r.status_code == 201 and r.headers['Location'].endswith(other), r.content
        r = put_car.sync_detailed(other, client=client, body=CarReplace(
            make='Ford', model='Focus', year=2013), if_none_match=IfNoneMatchStar.STAR)
        assert r.status_code == 412 and isinstance(r.parsed, Problem)
        r = create_car.sync_detailed(client=client, if_none_match=IfNoneMatchStar.STAR,
                                     body=CarNew(id=other, make='Ford', model='Focus', year=2014))
        assert r.status_code == 412 and isinstance(r.parsed, Problem)

        # List: filtered, and page by page.
        r = list_cars.sync_detailed(client=anonymous, make='honda')
        assert r.status_code == 200 and isinstance(r.parsed, CarList)
        assert [c.id for c in r.parsed.cars] == [car.id] and r.parsed.next_ is None
        seen, cursor = [], UNSET
        while True:
            page = list_cars.sync(client=anonymous, limit=1, cursor=cursor)
            seen += [c.id for c in page.cars]
            if page.next_ is None:
                break
            cursor = page.next_
        assert seen == sorted([car.id, other])
        r = list_cars.sync_detailed(client=anonymous, limit=0)
        assert r.status_code == 400 and isinstance(r.parsed, Problem)

        # DELETE, then a 404.
        r = delete_car.sync_detailed(car.id, client=client)
        assert r.status_code == 204 and r.content == b''
        r = get_car.sync_detailed(car.id, client=anonymous)
        assert r.status_code == 404 and isinstance(r.parsed, Problem)
        assert r.parsed.status == 404
        r = delete_car.sync_detailed(car.id, client=client)
        assert r.status_code == 404 and isinstance(r.parsed, Problem)
