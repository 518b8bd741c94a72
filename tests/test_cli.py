"The `advdpnp` command as a new user meets it (issue 26): run from a folder outside the checkout, it talks while it runs, ends with the results, reads paths from where it is typed, and reports every error in one line."
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from advdpnp.config import FIELDS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / 'advdpnp'
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, '-c', 'import sys; from advdpnp.cli import main; sys.exit(main())']
# a run of seconds: one epoch of a 4-channel network on 128 digits
TINY = ['--dataset', 'digits', '--preset', 'smoke', '--epochs', '1', '--n_train', '128', '--n_test', '40', '--width', '4',
        '--attack_steps', '1', '--eval_steps', '2', '--epoch_pgd_points', '20']
KERNEL_NOISE = ('without encryption', 'KeyboardInterrupt', 'IPKernelApp', 'Unable to parse line')


def advdpnp(*argv, cwd):
    "The real command in `cwd`: (exit status, stdout, stderr)."
    done = subprocess.run([*CLI, *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope='module')
def elsewhere(tmp_path_factory):
    "A working folder outside the checkout, and the tiny run trained there with relative paths: (folder, name, the train call's result)."
    cwd = tmp_path_factory.mktemp('elsewhere')
    assert ROOT not in cwd.parents
    name = f'cli-{cwd.name}'                 # a name no run in the checkout has
    return cwd, name, advdpnp('train', *TINY, '--name', name, '--out_dir', 'runs', '--data_dir', 'data', cwd=cwd)


def test_train_talks_and_ends_with_results_and_absolute_paths(elsewhere):
    cwd, name, (code, out, err) = elsewhere
    assert code == 0, err[-3000:]
    assert re.search(r'^epoch 1/1: loss [\d.]+, clean test accuracy [\d.]+, PGD-10 test [\d.]+, .* to go$', out, re.M), out
    metrics = json.loads((cwd / 'runs' / name / 'metrics.json').read_text())
    se = metrics['standard_errors']
    clean = f"{100 * metrics['clean_acc']:.1f} ± {100 * se['clean_acc']:.1f}"
    robust = f"{100 * metrics['pgd_acc']:.1f} ± {100 * se['pgd_acc']:.1f}"
    assert re.search(rf'^test\s+clean\s+{re.escape(clean)}\s+40$', out, re.M), out            # read from the run folder, with n
    assert re.search(rf'^test\s+PGD-2\s+{re.escape(robust)}\s+40\s+PGD-2, step 0.05, ce loss', out, re.M), out
    assert 'smoke preset' in out and 'l-inf eps 0.2000 (51.0/255)' in out
    lines = dict(line.split(': ', 1) for line in out.splitlines()[-3:])
    assert lines['run folder'] == str(cwd / 'runs' / name)
    notebook, log = Path(lines['executed notebook']), Path(lines['log'])
    assert notebook.parent == cwd / 'runs' / 'notebooks' and notebook.name.startswith(f'{name}-train-') and notebook.exists()
    assert log == notebook.with_suffix('.log') and 'epoch 1/1: loss' in log.read_text()
    assert not any(noise in err for noise in KERNEL_NOISE), err
    assert 'Traceback' not in err and err.startswith('advdpnp train: nbs/train.ipynb in a new Jupyter kernel')


def test_paths_are_read_from_the_working_directory_and_nothing_lands_in_the_checkout(elsewhere):
    cwd, name, (code, _, err) = elsewhere
    assert code == 0, err[-3000:]
    config = json.loads((cwd / 'runs' / name / 'config.json').read_text())
    assert (config['out_dir'], config['data_dir']) == (str(cwd / 'runs'), str(cwd / 'data'))
    assert not (ROOT / 'runs' / name).exists()
    assert not list(ROOT.glob(f'*{name}*')) and not list((ROOT / 'runs').rglob(f'*{name}*'))
    assert sorted(p.name for p in cwd.iterdir()) == ['runs']          # digits needs no data folder: none was made


def test_skip_existing_skips_a_finished_run_with_one_line(elsewhere):
    cwd, name, (code, _, err) = elsewhere
    assert code == 0, err[-3000:]
    notebooks = sorted((cwd / 'runs' / 'notebooks').iterdir())
    code, out, err = advdpnp('train', *TINY, '--name', name, '--out_dir', 'runs', '--data_dir', 'data', '--skip_existing', cwd=cwd)
    assert (code, out) == (0, '')
    assert err == f'advdpnp train: skipped {cwd / "runs" / name}: it holds a finished run of these parameters (--overwrite True retrains it)\n'
    code, out, err = advdpnp('train', *TINY, '--name', name, '--out_dir', 'runs', cwd=cwd)     # without: refused, before a kernel
    assert (code, out) == (1, '') and len(err.splitlines()) == 1, err
    assert 'already holds a run' in err and '--overwrite True' in err and '--skip_existing' in err and 'overwrite=' not in err
    code, _, err = advdpnp('train', *TINY, '--epochs', '2', '--name', name, '--out_dir', 'runs', '--skip_existing', cwd=cwd)
    assert code == 1 and "other parameters (field: (there, asked)) {'epochs': (1, 2)}" in err, err
    assert sorted((cwd / 'runs' / 'notebooks').iterdir()) == notebooks            # no kernel ran


def test_bad_values_are_one_line_before_any_kernel(tmp_path):
    code, out, err = advdpnp('train', '--dataset', 'digitz', '--preset', 'smoke', cwd=tmp_path)
    assert code == 2 and "argument --dataset: 'digitz' is not one of digits | cifar10 | cifar100 | svhn | imagefolder (did you mean 'digits'?)" in err
    code, out, err = advdpnp('train', '--dataset', 'digits', '--out_dir', 'runs', cwd=tmp_path)          # no preset: no paper-scale job
    assert code == 1 and err.startswith('advdpnp train: pass --preset smoke (CPU, minutes) or --preset paper (GPU') and len(err.splitlines()) == 1
    code, out, err = advdpnp('train', '--dataset', 'digits', '--preset', 'smoke', '--method', 'dpnp', '--classifier', 'linear',
                             '--out_dir', 'runs', cwd=tmp_path)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("advdpnp train: invalid parameters: --classifier 'linear': method 'dpnp' is defined on the prototype head")
    code, out, err = advdpnp('evaluate', '--run_dir', 'runs/t1', '--attacks', 'pgd', cwd=tmp_path)
    assert code == 1 and err == (f'advdpnp evaluate: --run_dir {tmp_path}/runs/t1: no such folder (a relative path is read '
                                 f'from the current directory, {tmp_path})\n')
    code, out, err = advdpnp('evaluate', '--run_dir', 'x', '--attacks', 'pgd,autoatack', cwd=tmp_path)
    assert code == 2 and "did you mean 'autoattack'?" in err
    assert list(tmp_path.iterdir()) == []                                           # nothing was written


def test_help_is_generated_from_the_notebooks(tmp_path):
    code, out, err = advdpnp('evaluate', '--help', cwd=tmp_path)
    assert code == 0 and '--checkpoint' in out and 'weights_only=True' in ' '.join(out.split()), out   # papermill skipped this line
    assert err == ''
    code, out, _ = advdpnp('train', '--help', cwd=tmp_path)
    text = ' '.join(out.split())
    assert all(f'--{f} ' in text for f in FIELDS) and '--skip_existing' in text and 'fractions work: -p eps 8/255' in text


def test_evaluate_reports_autoattack_progress_and_the_whole_results(elsewhere):
    cwd, name, (code, _, err) = elsewhere
    assert code == 0, err[-3000:]
    code, out, err = advdpnp('evaluate', '--run_dir', f'runs/{name}', '--attacks', 'pgd,autoattack', '--n_eval', '20', cwd=cwd)
    assert code == 0, err[-3000:]
    folder = cwd / 'runs' / name
    result = json.loads(next((folder / 'evaluations').glob('autoattack+pgd-*.json')).read_text())
    for attack in ('clean', 'pgd', 'autoattack'):
        acc, se = result['accuracy'][attack], result['standard_errors'][attack]
        assert re.search(rf'^{attack}\s+{re.escape(f"{100 * acc:.1f} ± {100 * se:.1f}")}\s+20\s', out, re.M), (attack, out)
    assert re.search(r'^worst case \(per point\)\s+[\d.]+ ± [\d.]+\s+20\s', out, re.M), out
    assert 'PGD-20, step 0.05, ce loss' in out and 'AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), seed 0' in out
    for check in result['soundness']['checks']:                       # every check, its detail not cut
        assert f"{'pass' if check['passed'] else 'FAIL'}  {check['check']}: {check['detail']}" in out, check
    assert f'evaluation: {folder}/evaluations/autoattack+pgd-' in out and f'run folder: {folder}' in out
    for attack in ('apgd-ce', 'apgd-t', 'fab-t', 'square'):
        assert re.search(rf'^AutoAttack: {attack} done, \d+ of 20 points still robust', err, re.M), err
    notebook = Path(out.splitlines()[-2].split(': ', 1)[1])
    assert notebook.parent == cwd / 'runs' / 'notebooks' and notebook.name.startswith(f'{name}-evaluate-') and notebook.exists()
    assert not any(noise in err for noise in KERNEL_NOISE) and 'Traceback' not in err, err


def test_an_error_in_the_notebook_is_one_line_with_the_traceback_in_the_log(elsewhere):
    cwd, name, (code, _, err) = elsewhere
    assert code == 0, err[-3000:]
    code, out, err = advdpnp('evaluate', '--run_dir', f'runs/{name}', '--attacks', 'pgd', '--n_eval', '10', '--soundness', 'False',
                             '--eps', '2', cwd=cwd)
    assert code == 1 and out == '', out
    assert 'advdpnp evaluate: ValueError: --eps 2.0 must lie in [0, 1]\n' in err, err
    assert 'Traceback' not in err and 'PapermillExecutionError' not in err
    log = Path(re.search(r'the traceback is in (\S+);', err)[1])
    assert log.parent == cwd / 'runs' / 'notebooks' and 'ValueError' in log.read_text() and 'Traceback' in log.read_text()
