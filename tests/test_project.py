"Project plumbing: packaging files agree, notebooks keep what papermill needs, README is generated."
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import yaml
from packaging.specifiers import SpecifierSet

from advdpnp.config import FIELDS, notebook_parameter_cell, parameter_help

PAPERMILL_NOTEBOOKS = ['train.ipynb', 'evaluate.ipynb', 'paper.ipynb', 'benchmark.ipynb', 'study.ipynb']


def test_environment_yml_matches_pyproject(root):
    env = yaml.safe_load((root / 'environment.yml').read_text())
    project = tomllib.loads((root / 'pyproject.toml').read_text())['project']
    conda = [d for d in env['dependencies'] if isinstance(d, str)]
    pip = [d for d in env['dependencies'] if isinstance(d, dict)]
    python = next(d for d in conda if d.startswith('python='))
    assert python.split('=')[1] + '.0' in SpecifierSet(project['requires-python'])
    # Every Python package comes from pyproject.toml through `pip install -e .[dev]`; a conda package
    # beside python and pip would be a second, drifting list of dependencies.
    assert sorted(d.split('=')[0] for d in conda) == ['pip', 'python']
    assert pip == [{'pip': ['-e .[dev]']}]
    assert 'dev' in project['optional-dependencies']


def test_dependencies_are_pinned(root):
    project = tomllib.loads((root / 'pyproject.toml').read_text())['project']
    deps = project['dependencies'] + project['optional-dependencies']['dev']
    assert all('==' in d for d in deps), [d for d in deps if '==' not in d]
    names = {d.split('==')[0] for d in deps}
    assert {'torch', 'torchvision', 'nbdev', 'papermill', 'pyautoattack', 'seaborn', 'scikit-learn', 'tqdm'} <= names
    assert 'torch==2.14.1' in deps and 'torchvision==0.29.1' in deps


def test_no_settings_ini(root):
    assert not (root / 'settings.ini').exists()  # nbdev 3 refuses it; settings live in pyproject.toml
    assert 'nbdev' in tomllib.loads((root / 'pyproject.toml').read_text())['tool']


def test_nbdev_clean_keeps_the_parameters_tag(root, tmp_path):
    shutil.copy(root / 'pyproject.toml', tmp_path)
    (tmp_path / 'nbs').mkdir()
    nb = nbformat.read(root / 'nbs' / 'train.ipynb', as_version=4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    cell.metadata['collapsed'] = True            # junk that nbdev-clean must remove
    cell.metadata['ExecuteTime'] = {'start': 'x'}
    nbformat.write(nb, tmp_path / 'nbs' / 'train.ipynb')
    nbdev_clean = Path(sys.executable).parent / 'nbdev-clean'
    subprocess.run([str(nbdev_clean), '--fname', 'nbs/train.ipynb'], cwd=tmp_path, check=True)
    cleaned = nbformat.read(tmp_path / 'nbs' / 'train.ipynb', as_version=4)
    cells = [c for c in cleaned.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1 and 'collapsed' not in cells[0].metadata and 'ExecuteTime' not in cells[0].metadata


def test_train_notebook_exposes_every_config_field(root):
    params = papermill.inspect_notebook(str(root / 'nbs' / 'train.ipynb'))
    assert set(FIELDS) <= set(params)
    assert params['preset']['default'] == "'paper'"   # the default is what a GPU user runs


def test_each_parameter_is_documented_once(root):
    "The train notebook's parameters cell is the text generated from RunConfig's field comments, so its help (papermill --help-notebook, advdpnp train --help) cannot drift from them."
    nb = nbformat.read(root / 'nbs' / 'train.ipynb', as_version=4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    assert cell.source == notebook_parameter_cell(), ('regenerate the parameters cell of nbs/train.ipynb from '
                                                      'advdpnp.config.notebook_parameter_cell()')
    params = papermill.inspect_notebook(str(root / 'nbs' / 'train.ipynb'))
    helps = parameter_help()
    assert all(params[f]['help'].startswith(helps[f]) for f in FIELDS)


# Every component notebook shows a figure and states its computation as an equation, except the plumbing below, whose
# examples are text by nature (a configuration, atomic files, a terminal, SLURM's answers): a new notebook needs both.
TEXT_ONLY_NOTEBOOKS = {'00_config': 'run parameters', '00a_files': 'atomic files and hashes', '09d_cluster': 'SLURM',
                       '11_cli': 'the terminal'}
NO_EQUATION_NOTEBOOKS = {'00a_files', '04b_runs', '09d_cluster', '11_cli'}
MAX_NOTEBOOK_KB = 400


def test_notebooks_are_clean_with_python3_kernel(root):
    for path in sorted((root / 'nbs').glob('*.ipynb')):
        nb = json.loads(path.read_text())
        assert nb['metadata']['kernelspec']['name'] == 'python3', path.name
        for cell in nb['cells']: assert cell.get('execution_count') is None, path.name


def test_run_notebooks_have_no_outputs(root):
    # papermill entry points are run, not read: their executed copies go to runs/, never into the repository
    for name in PAPERMILL_NOTEBOOKS + ['index.ipynb']:
        nb = json.loads((root / 'nbs' / name).read_text())
        assert not any(cell.get('outputs') for cell in nb['cells']), name


def test_component_notebooks_show_a_figure_and_stay_small_and_quiet(root):
    # a reader opening a component notebook sees its idea without running it: small, deterministic outputs
    for path in sorted((root / 'nbs').glob('[0-9][0-9]*_*.ipynb')):
        assert path.stat().st_size <= MAX_NOTEBOOK_KB * 1024, f'{path.name} is {path.stat().st_size // 1024} KB'
        outputs = [o for c in json.loads(path.read_text())['cells'] for o in c.get('outputs', [])]
        noisy = [o for o in outputs if o['output_type'] == 'stream' and o.get('name') == 'stderr']
        assert not noisy, f'{path.name}: progress bars or warnings saved as outputs: {"".join(noisy[0]["text"])[:80]!r}'
        assert not any(o['output_type'] == 'error' for o in outputs), path.name
        if path.stem not in TEXT_ONLY_NOTEBOOKS:
            assert any('image/png' in o.get('data', {}) for o in outputs), f'{path.name} shows no figure'


def test_make_outputs_runs_notebooks_as_nbdev_test_does(root, tmp_path):
    # `make outputs` must not run `#| eval: false` cells (12_device's __main__ guard would parse the kernel's argv)
    spec = importlib.util.spec_from_file_location('execute_notebooks', root / '.ci' / 'execute_notebooks.py')
    execute_notebooks = importlib.util.module_from_spec(spec); spec.loader.exec_module(execute_notebooks)
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    kept = nbformat.v4.new_output('stream', name='stdout', text='saved before\n')
    nb.cells = [nbformat.v4.new_code_cell("import os; x = 41"),
                nbformat.v4.new_code_cell("#| eval: false\nraise SystemExit(2)", outputs=[kept]),
                nbformat.v4.new_code_cell("print(x + 1, os.path.basename(os.getcwd()))")]
    (tmp_path / 'nbs').mkdir(); path = tmp_path / 'nbs' / 'toy.ipynb'; nbformat.write(nb, path)
    assert execute_notebooks.execute(path) == [nb.cells[1].id]
    cells = nbformat.read(path, as_version=4).cells
    assert (cells[1].source, cells[1].outputs[0]['text']) == ("#| eval: false\nraise SystemExit(2)", 'saved before\n')
    assert cells[2].outputs[0]['text'] == '42 nbs\n'                 # run in the notebook's folder, as nbdev-test does


def test_component_notebooks_state_their_computation_as_an_equation(root):
    for path in sorted((root / 'nbs').glob('[0-9][0-9]*_*.ipynb')):
        if path.stem in NO_EQUATION_NOTEBOOKS: continue
        prose = '\n'.join(''.join(c['source']) for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'markdown')
        assert '$$' in prose, f'{path.name} states no computation as a displayed equation in its prose'


def test_papermill_notebooks_are_skipped_by_nbdev_test(root):
    for name in PAPERMILL_NOTEBOOKS:
        first = nbformat.read(root / 'nbs' / name, as_version=4).cells[0]
        assert first.cell_type == 'raw' and 'skip_exec: true' in first.source, name


def test_readme_is_generated_from_index(root):
    from nbconvert import MarkdownExporter
    body, _ = MarkdownExporter().from_filename(str(root / 'nbs' / 'index.ipynb'))
    assert (root / 'README.md').read_text().strip() == body.strip(), 'run `make readme`'


def test_every_component_notebook_exports_its_module(root):
    for path in sorted((root / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        first = nbformat.read(path, as_version=4).cells[0].source
        module = first.split('default_exp')[1].strip()
        assert (root / 'advdpnp' / f'{module}.py').exists(), path.name


QUOTED = re.compile(r'(?<![\d.])(\d+\.\d) ± (\d+\.\d)(?!\d)')
INTERVAL = re.compile(r'\[([+−-]?\d+\.\d), ([+−-]?\d+\.\d)\]')
DELTA = re.compile(r'Δ ([+−-]?\d+\.\d)(?!\d)')


def quoted_results(root: Path, folder: str, pattern=QUOTED) -> list:
    "(file, match) of every `pattern` quoted in prose about `paper_figures/<folder>/`: a notebook's paragraph that names it, and paper_figures/README.md's section whose heading names (`<folder>/`) (format examples in backticks aside)."
    names, texts = re.compile(rf'paper_figures/{re.escape(folder)}(?![\w-])'), []
    for path in sorted((root / 'nbs').glob('*.ipynb')):
        for cell in json.loads(path.read_text())['cells']:
            if cell['cell_type'] == 'markdown':
                texts += [(path.name, p) for p in re.split(r'\n\s*\n', ''.join(cell['source'])) if names.search(p)]
    readme = (root / 'paper_figures' / 'README.md').read_text()
    texts += [('paper_figures/README.md', s) for s in re.split(r'\n(?=#+ )', readme) if s.startswith('#') and f'(`{folder}/`)' in s.splitlines()[0]]
    return [(name, m) for name, text in texts for m in pattern.finditer(re.sub(r'`[^`\n]*`', '', text))]


def test_quoted_cpu_results_are_the_committed_ones(root):
    "Numbers quoted about the CPU table and the frontier are in their committed tables: regenerating paper_figures/cpu/ or frontier-cpu/ makes stale prose fail here."
    for folder, quoting in (('cpu', 2), ('frontier-cpu', 1)):
        quoted = [(n, m.group(0)) for n, m in quoted_results(root, folder)]
        assert len({n for n, _ in quoted}) >= quoting, (folder, quoted)   # the prose quotes it: the test is not vacuous
        committed = {m.group(0) for p in (root / 'paper_figures' / folder).glob('*.md') for m in QUOTED.finditer(p.read_text())}
        stale = sorted({q for q in quoted if q[1] not in committed})
        assert not stale, f'quoted but not in paper_figures/{folder}/*.md (update the prose): {stale}'


def test_quoted_frontier_verdicts_are_the_committed_ones(root):
    "Every interval '[low, high]' and every 'Δ x' quoted about the frontier is in frontier_claims.csv (any of its intervals: paired, unpaired, of the draws in range), to one decimal."
    number = lambda t: round(float(t.replace('−', '-')), 1) + 0.0
    claims = pd.read_csv(root / 'paper_figures' / 'frontier-cpu' / 'frontier_claims.csv')
    columns = [(lo, lo.replace('low', 'high')) for lo in claims.columns if 'low' in lo]
    assert len(columns) == 4, columns     # paired, unpaired, and each of the draws in range
    intervals = {(number(str(r[lo])), number(str(r[hi]))) for _, r in claims.iterrows() for lo, hi in columns if np.isfinite(r[lo]) and np.isfinite(r[hi])}
    deltas = {number(str(d)) for d in claims['difference'].dropna()}
    quoted = [(n, m.group(0), tuple(map(number, m.groups())), intervals) for n, m in quoted_results(root, 'frontier-cpu', INTERVAL)]
    quoted += [(n, m.group(0), number(m.group(1)), deltas) for n, m in quoted_results(root, 'frontier-cpu', DELTA)]
    assert len(quoted) >= 4, 'the frontier section quotes too few numbers: the test would be vacuous'
    stale = sorted({(n, q) for n, q, v, known in quoted if v not in known})
    assert not stale, f'quoted but not in paper_figures/frontier-cpu/frontier_claims.csv (update the prose): {stale}'
