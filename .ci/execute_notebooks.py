"""Execute component notebooks in place, as `nbdev-test` runs them, so that their saved outputs (the figures a reader
sees in JupyterLab without running anything) are current: in nbs/ as the working directory, with TQDM_DISABLE=1, and
without the cells flagged `#| eval: false` (nbconvert would run those; `12_device`'s `if __name__ == '__main__'`
would then parse the kernel's arguments and fail). A skipped cell keeps its source and its saved outputs.
Usage: python .ci/execute_notebooks.py nbs/NAME.ipynb [...]   (`make outputs` runs it on every component notebook,
then nbdev-clean)."""
import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

SKIP = re.compile(r'^#\|\s*eval:\s*false\s*$', re.MULTILINE)


def execute(path: Path, timeout: int = 1800) -> list:
    "Run the notebook at `path` in place, skipping its `#| eval: false` cells; returns the ids of the cells skipped."
    nb = nbformat.read(path, as_version=4)
    skipped = {c.id: (c.source, c.outputs) for c in nb.cells if c.cell_type == 'code' and SKIP.search(c.source)}
    for c in nb.cells:
        if c.id in skipped: c.source = ''
    NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
    for c in nb.cells:
        if c.id in skipped: c.source, c.outputs = skipped[c.id]
    nbformat.write(nb, path)
    return list(skipped)


if __name__ == '__main__':
    os.environ['TQDM_DISABLE'] = '1'
    for name in sys.argv[1:]:
        skipped = execute(Path(name).resolve())
        print(f"executed {name}" + (f" (skipped the `#| eval: false` cells {', '.join(skipped)})" if skipped else ''))
