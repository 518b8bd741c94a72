"nbs/train.ipynb through papermill at smoke scale (the way users and `make demo` run it)."
import json

import nbformat
import papermill
import pytest

from conftest import write_tiny_imagefolder
from advdpnp.stats import binomial_bounds


def run_train_notebook(root, tmp_path, **parameters):
    out = tmp_path / 'executed.ipynb'
    papermill.execute_notebook(str(root / 'nbs' / 'train.ipynb'), str(out), parameters=parameters,
                               cwd=str(root), progress_bar=False, kernel_name='python3')
    return out


def test_digits_smoke_run_writes_the_run_folder(root, tmp_path):
    out = run_train_notebook(root, tmp_path, dataset='digits', preset='smoke', epochs=2, n_train=300, n_test=100,
                             width=8, out_dir=str(tmp_path / 'runs'), name='nb')
    run = tmp_path / 'runs' / 'nb'
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ['config.json', 'checkpoint.pt', 'history.csv', 'metrics.json', 'training_curves.png'])
    metrics = json.loads((run / 'metrics.json').read_text())
    assert metrics['preset'] == 'smoke' and metrics['method'] == 'adv_dpnp' and metrics['n_test'] == 100
    assert metrics['eps'] == 0.2 and metrics['attack']['steps'] == 20
    assert 0.0 <= metrics['pgd20_acc'] <= 1.0
    assert binomial_bounds(round(metrics['clean_acc'] * 100), 100)[0] > 0.1     # above chance after 2 epochs (level 0.001)
    config = json.loads((run / 'config.json').read_text())
    assert (config['epochs'], config['width'], config['preset']) == (2, 8, 'smoke')
    outputs = [o for c in nbformat.read(out, as_version=4).cells if c.cell_type == 'code' for o in c.outputs]
    assert any('clean_acc' in o.get('data', {}).get('text/plain', '') for o in outputs)   # the metrics are shown ...
    assert any('image/png' in o.get('data', {}) for o in outputs)      # ... and the training curves


def test_imagefolder_run(root, tmp_path):
    data = write_tiny_imagefolder(tmp_path / 'folder')
    run_train_notebook(root, tmp_path, dataset='imagefolder', data_dir=str(data), preset='smoke', method='dpnp',
                       arch='preact_resnet18', width=4, epochs=1, n_train=12, n_test=9, batch_size=4,
                       out_dir=str(tmp_path / 'runs'), name='folder')
    metrics = json.loads((tmp_path / 'runs' / 'folder' / 'metrics.json').read_text())
    assert (metrics['dataset'], metrics['n_train'], metrics['n_test'], metrics['arch']) == ('imagefolder', 12, 9, 'preact_resnet18')


@pytest.mark.parametrize('parameters, message', [
    ({'eps': 8}, 'eps=8 must lie in [0, 1]'),
    ({'method': 'madry'}, "method='madry' is not valid; choose one of ['ce', 'dpnp', 'adv_dpnp', 'pgd_at', 'trades', 'mart']"),
    ({'epochs': 'ten'}, "epochs='ten' must be an integer"),
    ({'n_train': 5000}, 'n_train=5000 is larger than digits has (1437)'),
    ({'epoch': 1}, "unknown notebook parameter 'epoch' (did you mean 'epochs'?)"),   # papermill alone only warns
])
def test_bad_parameters_fail_before_any_work(root, tmp_path, parameters, message):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        run_train_notebook(root, tmp_path, dataset='digits', preset='smoke', out_dir=str(tmp_path / 'runs'), **parameters)
    assert message in str(error.value) and 'ConfigError' in error.value.ename
    assert not (tmp_path / 'runs').exists()   # nothing was written


def test_fractions_are_accepted_for_numeric_parameters(root, tmp_path):
    run_train_notebook(root, tmp_path, dataset='digits', preset='smoke', epochs=1, n_train=64, n_test=20, width=4,
                       attack_steps=1, eval_steps=1, eps='51/255', out_dir=str(tmp_path / 'runs'), name='frac')
    assert json.loads((tmp_path / 'runs' / 'frac' / 'config.json').read_text())['eps'] == 51 / 255


def test_command_line_runs_the_notebook_and_documents_every_parameter(root, tmp_path):
    import subprocess, sys
    from advdpnp.config import FIELDS
    cli = [sys.executable, '-c', 'import sys; from advdpnp.cli import main; sys.exit(main())']
    helped = subprocess.run([*cli, 'train', '--help'], cwd=root, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    text = ' '.join(helped.stdout.split())
    for f in FIELDS: assert f'--{f} ' in text, f
    assert 'fractions work: -p eps 8/255' in text and '[float, default None]' in text
    wrong = subprocess.run([*cli, 'train', '--epoch', '1'], cwd=root, capture_output=True, text=True)
    assert wrong.returncode == 2 and '--epoch (did you mean --epochs?)' in wrong.stderr
    done = subprocess.run([*cli, 'train', '--dataset', 'digits', '--preset', 'smoke', '--method', 'ce', '--epochs', '1',
                           '--n_train', '64', '--n_test', '20', '--width', '4', '--eval_steps', '1',
                           '--out_dir', str(tmp_path / 'runs'), '--name', 'cli', '--output', str(tmp_path / 'cli.ipynb')],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / 'runs' / 'cli' / 'metrics.json').read_text())['epochs'] == 1
    assert (tmp_path / 'cli.ipynb').exists()
