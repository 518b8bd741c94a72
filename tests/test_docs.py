""".ci/docs.py (`make docs`) works offline: a rendered notebook loads MathJax from the copy beside it (a relative URL,
so the folder works from file://) and no script from the network; with a headless Chromium and no network (where
both exist here), the equations of 03_losses are typeset. One notebook only: rendering all 25 takes about 15 s."""
import importlib.util
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

SPEC = importlib.util.spec_from_file_location('docs', ROOT / '.ci' / 'docs.py')
docs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(docs)
NOTEBOOK = ROOT / 'nbs' / '03_losses.ipynb'   # the notebook with the most equations


@pytest.fixture(scope='module')
def rendered(tmp_path_factory):
    "(the output folder, the HTML of 03_losses) rendered as `make docs` does."
    out = tmp_path_factory.mktemp('docs')
    docs.copy_mathjax(out)
    stem, title, *_ = docs.render(NOTEBOOK, out)
    assert (stem, title) == ('03_losses', 'Losses')
    return out, (out / '03_losses.html').read_text()


def test_only_local_scripts(rendered):
    out, page = rendered
    sources = re.findall(r'<script[^>]*\bsrc="([^"]*)"', page)
    assert sources == [docs.MATHJAX_URL], sources                        # MathJax, and nothing else loaded by src
    assert not re.search(r'''\bsrc=["']?(https?:)?//''', page)         # no absolute URL loads anything
    assert not re.search(r'''import\(\s*["'](https?:)?//''', page)     # nor a dynamic import (mermaid's loader)
    assert 'cdnjs' not in page and 'unpkg' not in page


def test_the_mathjax_files_exist(rendered):
    out, page = rendered
    script = out / docs.MATHJAX_URL.split('?')[0]
    assert script.is_file() and script.stat().st_size > 10_000
    config = docs.MATHJAX_URL.split('config=')[1].split(',')
    for name in config: assert (out / docs.MATHJAX_DIR / 'config' / f'{name}.js').is_file(), name
    assert list((out / docs.MATHJAX_DIR / 'fonts' / 'HTML-CSS' / 'STIX-Web' / 'woff').glob('*.woff'))   # the web font set up
    assert 'webFont: "STIX-Web"' in page
    assert r'\mathcal L_{\text{clean}}' in page   # the TeX is in the page for MathJax to typeset


def _browser():
    "A headless Chromium on this machine, or None."
    return next((b for b in ('chromium-headless-shell', 'chromium', 'chromium-browser') if shutil.which(b)), None)


def _offline(command: list) -> list | None:
    "`command` in a new network namespace (no network at all), where `unshare` may make one; else None."
    if not shutil.which('unshare') or subprocess.run(['unshare', '-n', 'true'], capture_output=True).returncode: return None
    return ['unshare', '-n', '--', *command]


@pytest.mark.skipif(_browser() is None, reason='no headless Chromium (apt-get install chromium-headless-shell)')
def test_equations_are_typeset_offline(rendered):
    out, _ = rendered
    command = _offline([_browser(), '--no-sandbox', '--disable-gpu', '--virtual-time-budget=15000', '--dump-dom',
                        (out / '03_losses.html').as_uri()])
    if command is None: pytest.skip('cannot make a network namespace here (unshare -n)')
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="MathJax"') >= 10 and dom.count('class="MathJax_Display"') >= 2   # inline and display maths
    assert 'Math Processing Error' not in dom
