"""The docs page: the OpenAPI document as one self-contained HTML page (no
scripts or external assets, so it works offline), with an anchor
`#problem-<slug>` for each problem type, which problem bodies link to.
"""
import html
import json
import re

from chalicelib.http import openapi, paths

_cache = {}

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:980px;margin:0 auto;padding:1.5rem 1.25rem 4rem}
h1{margin:.2rem 0}h2{margin-top:2.5rem;border-bottom:2px solid #dde3ea;padding-bottom:.3rem}
code,pre{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
code{background:#eef1f5;padding:0 .25em;border-radius:3px}
pre{background:#f1f4f8;padding:.7rem;border-radius:6px;overflow:auto;white-space:pre-wrap;word-break:break-all}
nav ul{columns:2;padding-left:1.2rem}
section.op{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:.4rem 1rem 1rem;margin:1rem 0}
.m{display:inline-block;min-width:4.2em;text-align:center;font-weight:700;color:#fff;border-radius:4px;padding:0 .4em;margin-right:.4em}
.get{background:#2f7d32}.post{background:#1565c0}.put{background:#8e5b00}.patch{background:#6a3fa0}.delete{background:#b3261e}.options{background:#546e7a}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{border:1px solid #dde3ea;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f4f8}
.lock{font-size:.85em;color:#8e5b00}
:target{outline:3px solid #ffb300;outline-offset:3px}
"""

_CODE = re.compile(r'`([^`]+)`')


def page():
    """The page as a str, built once per document."""
    doc = openapi.document()
    # Compared by identity while the cache holds the document: an id() alone
    # could be reused by the next document once the settings change.
    cached = _cache.get('page')
    if cached is None or cached[0] is not doc:
        cached = _cache['page'] = (doc, render(doc))
    return cached[1]


def _md(text):
    """The little Markdown the document uses: `code` spans."""
    return _CODE.sub(lambda m: '<code>%s</code>' % m.group(1), html.escape(text or '',
                                                                          quote=False))


def _op_anchor(method, path):
    return 'op-%s-%s' % (method, re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-') or 'root')


def _schema_text(schema):
    return json.dumps(schema, indent=2, ensure_ascii=False)


def _ref_link(schema):
    if schema is None:  # a media type with no body (HEAD's answers)
        return ''
    ref = schema.get('$ref', '')
    if ref.startswith('#/components/schemas/'):
        name = ref.rsplit('/', 1)[1]
        return '<a href="#schema-%s">%s</a>' % (name, name)
    return '<code>%s</code>' % html.escape(json.dumps(schema, ensure_ascii=False))


def _parameters(params):
    if not params:
        return ''
    rows = ''.join(
        '<tr><td><code>%s</code></td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>' % (
            html.escape(p['name']), p['in'], 'yes' if p.get('required') else 'no',
            _ref_link(p.get('schema')), _md(p.get('description')))
        for p in params)
    return ('<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th>'
            '<th>schema</th><th>description</th></tr>%s</table>' % rows)


def _body(body):
    if not body:
        return ''
    rows = ''.join('<tr><td><code>%s</code></td><td>%s</td></tr>'
                   % (html.escape(mime), _ref_link(media.get('schema')))
                   for mime, media in body.get('content', {}).items())
    return ('<h4>Request body</h4><p>%s</p><table><tr><th>media type</th><th>schema</th></tr>'
            '%s</table>' % (_md(body.get('description')), rows))


def _responses(responses):
    rows = []
    for status, resp in sorted(responses.items()):
        content = ', '.join('<code>%s</code> %s' % (html.escape(m), _ref_link(c.get('schema')))
                            for m, c in resp.get('content', {}).items())
        headers = ', '.join('<code>%s</code>' % html.escape(h) for h in resp.get('headers', {}))
        rows.append('<tr><td><b>%s</b></td><td>%s</td><td>%s</td><td>%s</td></tr>'
                    % (status, _md(resp.get('description')), content, headers))
    return ('<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th>'
            '<th>headers</th></tr>%s</table>' % ''.join(rows))


def render(doc):
    info = doc['info']
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width,initial-scale=1">',
           '<title>%s</title><style>%s</style></head><body><main>'
           % (html.escape(info['title']), CSS),
           '<h1>%s <small>%s</small></h1>' % (html.escape(info['title']),
                                             html.escape(info['version'])),
           '<p>%s</p>' % _md(info.get('description')),
           '<p>The machine-readable document: <a href="%s"><code>%s</code></a> '
           '(OpenAPI %s).</p>' % (paths.OPENAPI, paths.OPENAPI, doc['openapi'])]
    ops = [(path, method, op) for path, item in doc['paths'].items()
           for method, op in item.items() if method != 'parameters']
    out.append('<nav><h2 id="routes">Routes</h2><ul>')
    for path, method, op in ops:
        out.append('<li><a href="#%s"><span class="m %s">%s</span><code>%s</code></a> %s</li>'
                   % (_op_anchor(method, path), method, method.upper(), html.escape(path),
                      _md(op.get('summary'))))
    out.append('<li><a href="#problems">Problem types</a></li>'
               '<li><a href="#schemas">Schemas</a></li></ul></nav>')
    out.append('<h2>Operations</h2>')
    for path, method, op in ops:
        item = doc['paths'][path]
        lock = (' <span class="lock" title="needs Authorization: Bearer">'
                '&#128274; bearer token</span>' if op.get('security') else '')
        out.append('<section class="op" id="%s" data-method="%s" data-path="%s">'
                   % (_op_anchor(method, path), method.upper(), html.escape(path)))
        out.append('<h3><span class="m %s">%s</span><code>%s</code>%s</h3><p>%s</p>'
                   % (method, method.upper(), html.escape(path), lock, _md(op.get('summary'))))
        if op.get('description'):
            out.append('<p>%s</p>' % _md(op['description']))
        out.append(_parameters(item.get('parameters', []) + op.get('parameters', [])))
        out.append(_body(op.get('requestBody')))
        out.append(_responses(op['responses']))
        out.append('</section>')
    out.append('<h2 id="problems">Problem types</h2><p>Every error is an '
               '<code>application/problem+json</code> body; its <code>type</code> links to '
               'one of these (or is <code>about:blank</code>, meaning no more than its '
               'status).</p>')
    for problem in doc.get('x-problem-types', []):
        out.append('<section class="op" id="problem-%s"><h3><code>%s</code> <small>%d</small>'
                   '</h3><p>%s</p><p>type: <code>%s</code></p></section>'
                   % (problem['slug'], problem['slug'], problem['status'],
                      _md(problem['description']), html.escape(problem['type'])))
    out.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in doc['components']['schemas'].items():
        out.append('<section id="schema-%s"><h3>%s</h3><p>%s</p><pre>%s</pre></section>'
                   % (name, name, _md(schema.get('description')),
                      html.escape(_schema_text(schema))))
    out.append('</main></body></html>')
    return ''.join(out)
