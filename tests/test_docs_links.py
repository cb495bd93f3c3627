"""The documentation stands on its own: every relative link in README.md and docs/*.md
resolves to a file of this repository (and an `#anchor` to a heading of it), and every
repository path the pages name in `code` exists.
"""
import os
import re
import subprocess
import unicodedata
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')


def pages():
    out = [os.path.join(ROOT, 'README.md')]
    out += sorted(os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith('.md'))
    return out


def rel(path):
    return os.path.relpath(path, ROOT)


# --- reading Markdown ------------------------------------------------------------------

FENCE = re.compile(r'^ {0,3}(```+|~~~+)')
CODE_SPAN = re.compile(r'(`+)(.+?)\1')
# [text](target "title") and ![alt](target); the target may be in <...>.
INLINE_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+"[^"]*")?\s*\)')
REFERENCE_DEFINITION = re.compile(r'^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)')
HEADING = re.compile(r'^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks."""
    fence = None
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            match = FENCE.match(line)
            if match:
                marker = match.group(1)
                if fence is None:
                    fence = marker
                    continue
                if marker[0] == fence[0] and len(marker) >= len(fence):
                    fence = None
                    continue
            if fence is None:
                yield number, line.rstrip('\n')


def without_code_spans(line):
    return CODE_SPAN.sub('', line)


def links(path):
    """(line number, target) of every inline link, image and reference definition."""
    for number, line in prose_lines(path):
        text = without_code_spans(line)
        for match in INLINE_LINK.finditer(text):
            yield number, match.group(1).strip('<>')
        match = REFERENCE_DEFINITION.match(text)
        if match:
            yield number, match.group(1).strip('<>')


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)  # a link's text stays
    text = re.sub(r'<[^>]+>', '', text)                       # inline HTML goes
    text = text.strip().lower()
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in '-_ ' or category[0] in 'LN' or category == 'Mn':
            kept.append(ch)
    return ''.join(kept).replace(' ', '-')


def anchors(path):
    """The anchors of a Markdown file's headings, repeats numbered as GitHub does."""
    seen = {}
    out = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else '%s-%d' % (base, count))
    return out


def is_external(target):
    return bool(re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target)) or target.startswith('//')


def git_ignored(path):
    """True when git ignores `path` (generated files are not the repository's)."""
    try:
        result = subprocess.run(['git', 'check-ignore', '-q', path], cwd=ROOT,
                                capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


# --- the tests -------------------------------------------------------------------------

def test_the_pages_exist():
    names = {rel(p) for p in pages()}
    for name in ('README.md', 'docs/api.md', 'docs/design.md', 'docs/deployment.md',
                 'docs/operations.md', 'docs/development.md', 'docs/performance.md'):
        assert name in names


@pytest.mark.parametrize('page', pages(), ids=rel)
def test_every_relative_link_resolves_inside_the_repository(page):
    broken = []
    for number, target in links(page):
        if is_external(target):
            continue
        path_part, _, anchor = target.partition('#')
        path_part = urllib.parse.unquote(path_part)
        where = '%s:%d: %s' % (rel(page), number, target)
        if path_part:
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path_part))
            if os.path.commonpath([resolved, ROOT]) != ROOT:
                broken.append(where + ' (outside the repository)')
                continue
            if not os.path.exists(resolved):
                broken.append(where + ' (no such file)')
                continue
            if git_ignored(resolved):
                broken.append(where + ' (ignored by git: not part of the repository)')
                continue
        else:
            resolved = page
        if anchor and resolved.endswith('.md') and os.path.isfile(resolved):
            if anchor not in anchors(resolved):
                broken.append(where + ' (no heading with anchor #%s in %s)'
                              % (anchor, rel(resolved)))
    assert not broken, '\n'.join(broken)


# Paths of this repository named in `code`: the top-level files, and anything under the
# tracked folders (patterns with * or <placeholders> are descriptions, not paths).
REPO_PATH = re.compile(
    r'^(?:app\.py|devserver\.py|Makefile|pytest\.ini|package\.json|package-lock\.json|'
    r'requirements(?:-dev)?\.txt|(?:\.chalice|\.ci|bench|chalicelib|deploy|docs|tests)'
    r'(?:/[\w.-]+)*/?)$')


@pytest.mark.parametrize('page', pages(), ids=rel)
def test_every_repository_path_named_in_code_exists(page):
    missing = []
    for number, line in prose_lines(page):
        for match in CODE_SPAN.finditer(line):
            text = match.group(2).strip()
            if not REPO_PATH.match(text):
                continue
            path = os.path.join(ROOT, text)
            # Generated places (out/, bench/results/) are named but not kept.
            if not os.path.exists(path) and not git_ignored(path):
                missing.append('%s:%d: `%s`' % (rel(page), number, text))
    assert not missing, '\n'.join(missing)


@pytest.mark.parametrize('page', pages(), ids=rel)
def test_no_machine_specific_paths(page):
    found = []
    for number, line in prose_lines(page):
        for pattern in (r'/work/', r'/home/\w', r'/Users/\w', r'[A-Z]:\\\\'):
            if re.search(pattern, line):
                found.append('%s:%d: %s' % (rel(page), number, line.strip()))
    assert not found, '\n'.join(found)


# --- the checker itself ----------------------------------------------------------------------

@pytest.mark.parametrize('heading,anchor', [
    ('Finding one request: Logs Insights', 'finding-one-request-logs-insights'),
    ('The IAM check: check_policy', 'the-iam-check-check_policy'),
    ("CORS on the gateway's own answers", 'cors-on-the-gateways-own-answers'),
    ('Safe retries: `Idempotency-Key`', 'safe-retries-idempotency-key'),
    ('A [linked](x.md) heading', 'a-linked-heading'),
])
def test_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor


def test_links_skip_code_and_find_images_and_anchors(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('# Title\n\nSee [a](a.md#x), ![pic](img.png) and `[not](code.md)`.\n'
                    '```\n[not](fenced.md)\n```\n[ref]: <b.md>\n', encoding='utf-8')
    assert [t for _, t in links(str(page))] == ['a.md#x', 'img.png', 'b.md']
    assert anchors(str(page)) == {'title'}


# --- the reference stays the code's ------------------------------------------------------

def test_api_reference_lists_exactly_the_problem_catalogue():
    from chalicelib.http import problems
    with open(os.path.join(DOCS, 'api.md'), encoding='utf-8') as f:
        text = f.read()
    listed = set(re.findall(r'^\| `([a-z]+(?:-[a-z]+)*)` \| (\d{3}) \|', text, re.M))
    listed = {(slug, int(status)) for slug, status in listed}
    emitted = {(slug, status) for slug, status, _ in problems.PROBLEM_TYPES}
    assert listed == emitted
