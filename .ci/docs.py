"""Render every notebook in nbs/ to HTML in _docs/ (nbconvert, no execution: what a reader sees in JupyterLab) and
write _docs/index.html listing them with their one-line summary and the figures each shows. Quarto, nbdev's usual
renderer, cannot be installed offline.

Everything works offline and from file://: MathJax 2.7 is copied from the installed `jupyter-server-mathjax`
package (the files JupyterLab's server uses) into _docs/mathjax/ and loaded by a relative URL; the template drops
require.js and mermaid.js, which nbconvert would fetch from a CDN and no notebook here needs."""
import html
import json
import re
import shutil
import sys
from pathlib import Path

import jinja2
from nbconvert import HTMLExporter

root = Path(__file__).resolve().parent.parent
MATHJAX_DIR = 'mathjax'   # under the output folder, so the pages load it by a relative URL
# The package ships MathJax's HTML-CSS output with the STIX-Web fonts only (as the Jupyter server configures it).
MATHJAX_URL = f'{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'
MATHJAX_FONTS = ('<script type="text/x-mathjax-config">\nMathJax.Hub.Config({"HTML-CSS": {availableFonts: [], '
                 'preferredFont: null, webFont: "STIX-Web", imageFont: null}});\n</script>')
OFFLINE_TEMPLATE = ("{%- extends 'index.html.j2' -%}\n"
                    "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}\n"
                    "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"
                    "{%- block html_head_js_mathjax -%}" + MATHJAX_FONTS + "{{ super() }}{%- endblock html_head_js_mathjax -%}\n")


def mathjax_source() -> Path:
    "The MathJax files of the installed jupyter-server-mathjax package (a dev dependency)."
    try:
        from jupyter_server_mathjax.app import STATIC_ASSETS_PATH
    except ImportError:
        sys.exit("docs: jupyter-server-mathjax is not installed; run `make install` (it is in pyproject's dev extra)")
    return Path(STATIC_ASSETS_PATH)


def copy_mathjax(out: Path) -> Path:
    "MathJax into out/mathjax/ (replacing an older copy); the folder."
    target = out / MATHJAX_DIR
    if target.exists(): shutil.rmtree(target)
    shutil.copytree(mathjax_source(), target)
    return target


def exporter() -> HTMLExporter:
    "nbconvert's lab HTML exporter with local MathJax and no CDN scripts."
    return HTMLExporter(extra_loaders=[jinja2.DictLoader({'offline.html.j2': OFFLINE_TEMPLATE})],
                        template_file='offline.html.j2', mathjax_url=MATHJAX_URL)


def render(path: Path, out: Path, html_exporter: HTMLExporter | None = None) -> tuple:
    "Write out/<stem>.html of notebook `path`; (stem, title, summary, figures, kind) for the index."
    nb = json.loads(path.read_text())
    body, _ = (html_exporter or exporter()).from_filename(str(path))
    (out / f'{path.stem}.html').write_text(body)
    md = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown']
    title = next((m.group(1) for s in md if (m := re.search(r'^# (.+)$', s, re.M))), path.stem)
    summary = next((m.group(1) for s in md if (m := re.search(r'^> (.+)$', s, re.M))), '')
    figures = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    kind = 'run with papermill' if any('skip_exec: true' in ''.join(c['source']) for c in nb['cells'][:1]) else 'component'
    return path.stem, title, summary, figures, kind


def write_index(out: Path, rows: list) -> None:
    "out/index.html: one row per rendered notebook."
    items = '\n'.join(f'<tr><td><a href="{s}.html">{html.escape(s)}</a></td><td>{html.escape(t)}</td><td>{k}</td>'
                      f'<td>{f}</td><td>{html.escape(d)}</td></tr>' for s, t, d, f, k in rows)
    (out / 'index.html').write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>advdpnp notebooks</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}td{{padding:.3em .6em;vertical-align:top}}
tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>advdpnp: the notebooks</h1><p>Rendered from <code>nbs/</code> without executing them: component notebooks show
their saved figures; papermill notebooks are run, not read (their executed copies go to <code>runs/</code>).</p>
<table><tr><th>notebook</th><th>title</th><th>kind</th><th>figures</th><th>summary</th></tr>
{items}</table></body></html>
""")


def main(out: Path = root / '_docs') -> None:
    out.mkdir(exist_ok=True)
    copy_mathjax(out)
    html_exporter = exporter()
    rows = [render(path, out, html_exporter) for path in sorted((root / 'nbs').glob('*.ipynb'))]
    write_index(out, rows)
    print(f'{len(rows)} notebooks rendered into {out}/ (index.html, MathJax in {MATHJAX_DIR}/); figures per notebook: '
          + ', '.join(f'{s} {f}' for s, _, _, f, _ in rows if f))


if __name__ == '__main__':
    main()
