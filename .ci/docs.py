"""Render every notebook in nbs/ to HTML in _docs/ (nbconvert, no execution: what a reader sees in JupyterLab) and
write _docs/index.html listing them with their one-line summary and the figures each shows. Quarto, nbdev's usual
renderer, cannot be installed offline."""
import html
import json
import re
import sys
from pathlib import Path

from nbconvert import HTMLExporter

root = Path(__file__).resolve().parent.parent
out = root / '_docs'
out.mkdir(exist_ok=True)
exporter = HTMLExporter()
rows = []
for path in sorted((root / 'nbs').glob('*.ipynb')):
    nb = json.loads(path.read_text())
    body, _ = exporter.from_filename(str(path))
    (out / f'{path.stem}.html').write_text(body)
    md = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown']
    title = next((m.group(1) for s in md if (m := re.search(r'^# (.+)$', s, re.M))), path.stem)
    summary = next((m.group(1) for s in md if (m := re.search(r'^> (.+)$', s, re.M))), '')
    figures = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    kind = 'run with papermill' if any('skip_exec: true' in ''.join(c['source']) for c in nb['cells'][:1]) else 'component'
    rows.append((path.stem, title, summary, figures, kind))
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
print(f'{len(rows)} notebooks rendered into {out}/ (index.html); figures per notebook: '
      + ', '.join(f'{s} {f}' for s, _, _, f, _ in rows if f))
