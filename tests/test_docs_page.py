"""The docs page, rendered by headless Chromium, shows every route, offline.

Needs the Debian packages chromium and chromium-driver (`make chromium`
installs them). Set DOCS_PAGE_SCREENSHOT=docs/docs-page.png to refresh the
README's screenshot.
"""
import html.parser
import os
import re
import shutil
import subprocess

import pytest
from chalice.test import Client

import app as app_module
from chalicelib.http import openapi
import missing_tools
from servers import LocalServer

pytestmark = [pytest.mark.http]

METHODS = ('get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace')


def chromium():
    path = shutil.which('chromium') or shutil.which('chromium-browser')
    if path is None:
        missing_tools.skip_or_fail('the docs page in a browser',
                                   'chromium is not installed (make chromium)')
    return path


def run_chromium(tmp_path, *args):
    command = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
               '--no-first-run', '--disable-background-networking',
               '--disable-component-update', '--disable-sync', '--hide-scrollbars',
               '--user-data-dir=%s' % (tmp_path / 'profile'),
               # Nothing but the loopback server is reachable: the page must work offline.
               # (Chromium never sends loopback requests through a proxy.)
               '--proxy-server=http://127.0.0.1:9'
               ] + list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


class Sections(html.parser.HTMLParser):
    """Collects the ids and (method, path) of the rendered sections."""

    def __init__(self):
        super().__init__()
        self.ids = set()
        self.operations = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if 'id' in attrs:
            self.ids.add(attrs['id'])
        if tag == 'section' and 'data-method' in attrs:
            self.operations.add((attrs['data-path'], attrs['data-method'].lower()))


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('docs')
    env = {'CARS_STORE': 'sqlite', 'CARS_DB_PATH': str(tmp / 'cars.db')}
    with LocalServer(env=env, kind='dev') as s:
        yield s


def test_docs_page_in_chromium_shows_every_route_and_problem_anchor(server, tmp_path):
    result = run_chromium(tmp_path, '--dump-dom', server.url + '/api/v1/docs')
    assert result.returncode == 0, result.stderr[-3000:]
    page = Sections()
    page.feed(result.stdout)
    doc = openapi.document()
    routes = {(path, method) for path, item in doc['paths'].items()
              for method in item if method in METHODS}
    app_routes = {(path, method.lower()) for path, entries in app_module.app.routes.items()
                  for method in entries}
    assert routes == app_routes
    assert page.operations == routes
    for problem in doc['x-problem-types']:
        assert 'problem-%s' % problem['slug'] in page.ids
    for name in doc['components']['schemas']:
        assert 'schema-%s' % name in page.ids


def test_docs_page_screenshot(server, tmp_path):
    target = os.environ.get('DOCS_PAGE_SCREENSHOT') or str(tmp_path / 'docs-page.png')
    result = run_chromium(tmp_path, '--window-size=1200,1600',
                          '--screenshot=%s' % os.path.abspath(target),
                          server.url + '/api/v1/docs')
    assert result.returncode == 0, result.stderr[-3000:]
    with open(target, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_docs_page_is_self_contained_html():
    with Client(app_module.app) as client:
        response = client.http.get('/api/v1/docs')
    assert response.status_code == 200
    assert response.headers['Content-Type'].startswith('text/html')
    text = response.body.decode('utf-8')
    # No scripts, no external stylesheets, fonts or images: it works offline.
    for needle in ('<script', '<link', 'src=', 'http://', 'https://', '@import'):
        assert needle not in text, needle


def test_docs_page_shows_no_schema_as_nothing_not_as_null():
    # HEAD's answers name a media type without a schema (there is no body).
    with Client(app_module.app) as client:
        text = client.http.get('/api/v1/docs').body.decode('utf-8')
    shown_as_null = re.findall(r'<code>[\w.+-]+/[\w.+-]+</code> <code>null</code>', text)
    assert shown_as_null == []
