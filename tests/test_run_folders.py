"""Fault injection on run folders: every way a crash, a second launch or a hand edit used to make a folder mix two
runs or report another run's number. Each test failed on the code before `advdpnp.runs` and passes with it.
Runs are tiny (digits, width 4, a few steps), so the whole file takes about a minute on 2 cores."""
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import ROOT
from advdpnp.config import RunConfig, make_config
from advdpnp.evaluate import evaluate_run
from advdpnp.grid import Grid, GridRun, run_grid
from advdpnp.files import file_sha256
from advdpnp.runs import CheckpointError, RunFolder, RunLockedError, load_run
import advdpnp.runs as runs
import advdpnp.train as T

RESUME, RESUME_PREV = RunFolder.RESUME, RunFolder.RESUME_PREV
CONFIG = dict(method='adv_dpnp', epochs=3, n_train=128, n_test=40, width=4, batch_size=32, attack_steps=2, eval_steps=2)
STEPS_PER_EPOCH = 128 // 32

# A run in a subprocess that can be killed with SIGKILL at a chosen moment:
#   step N   - inside the N-th training step
#   config   - halfway through writing config.json (the temporary file holds half the bytes)
#   hold     - inside the first step, until the file <out_dir>/release exists (holds the run folder meanwhile)
SCRIPT = textwrap.dedent('''
    import json, os, signal, sys, time
    from pathlib import Path
    import advdpnp.runs as R
    import advdpnp.train as T
    from advdpnp.config import RunConfig
    out_dir, fault, at, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    calls = {'n': 0}
    def die(): os.kill(os.getpid(), signal.SIGKILL)
    real_examples, real_write_json = T.training_examples, R.write_json
    def examples(*a, **k):
        calls['n'] += 1
        if fault == 'step' and calls['n'] == at: die()
        if fault == 'hold' and calls['n'] == 1:
            Path(out_dir, 'started').write_text(str(os.getpid()))
            deadline = time.time() + 120
            while not Path(out_dir, 'release').exists() and time.time() < deadline: time.sleep(0.05)
        return real_examples(*a, **k)
    def write_json(path, obj):
        if fault == 'config' and Path(path).name == 'config.json':
            text = json.dumps(obj)
            def half(p):
                with open(p, 'w') as f: f.write(text[:len(text) // 2]); f.flush(); os.fsync(f.fileno())
                die()
            return R.atomic_write(path, half)
        return real_write_json(path, obj)
    T.training_examples, R.write_json = examples, write_json
    T.train(RunConfig(out_dir=out_dir, name='run', **{**%s, **overrides}), progress=False)
''' % repr(CONFIG))


def launch(tmp_path, out_dir, fault='none', at=0, wait=True, **overrides):
    script = tmp_path / 'run.py'
    script.write_text(SCRIPT)
    args = [sys.executable, str(script), str(out_dir), fault, str(at), json.dumps(overrides)]
    if not wait: return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True)


def weights(run_dir):
    return torch.load(run_dir / 'checkpoint.pt', weights_only=True)['model']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "The uninterrupted run every resumed run must equal bit for bit."
    tmp = tmp_path_factory.mktemp('reference')
    done = launch(tmp, tmp / 'runs')
    assert done.returncode == 0, done.stderr[-2000:]
    return weights(tmp / 'runs' / 'run')


def test_overwrite_then_evaluate_reports_the_new_model(tmp_path):
    "Retraining a folder removes the old model's evaluation; AutoAttack's state is tied to the new checkpoint."
    kw = dict(epochs=2, n_train=256, n_test=40, width=8, eval_steps=2, out_dir=str(tmp_path), name='run', device='cpu')
    first = T.train(RunConfig(method='pgd_at', attack_steps=3, **kw), progress=False)
    evaluate_run(first.run_dir, attacks=('pgd', 'autoattack'), n_eval=20, soundness=False, progress=False)
    old_sha, state = first.metrics['checkpoint_sha256'], RunFolder(first.run_dir).autoattack_state(0.2, 'standard', 0)
    assert json.loads(state.read_text())['model'] == old_sha
    second = T.train(RunConfig(method='ce', overwrite=True, **kw), progress=False)
    assert not (second.run_dir / RunFolder.EVALUATIONS).exists()              # the old evaluations and AutoAttack state are gone
    new_sha = second.metrics['checkpoint_sha256']
    assert new_sha != old_sha and new_sha == file_sha256(second.run_dir / 'checkpoint.pt')
    result = evaluate_run(second.run_dir, attacks=('pgd', 'autoattack'), n_eval=20, soundness=False, progress=False)
    assert result['checkpoint_sha256'] == new_sha
    assert json.loads(state.read_text())['model'] == new_sha
    assert result['model_card']['checkpoint_sha256'] == new_sha
    assert [e['checkpoint_sha256'] for e in RunFolder(second.run_dir).evaluations()] == [new_sha]
    per_point = result['per_point']
    assert all(c or not a for c, a in zip(per_point['clean'], per_point['autoattack']))   # robust implies correct


def test_a_killed_overwrite_leaves_no_finished_folder(tmp_path):
    "The old metrics.json and checkpoint.pt go before the new run trains: a kill leaves an unfinished folder."
    finished = launch(tmp_path, tmp_path / 'runs', method='ce')
    assert finished.returncode == 0, finished.stderr[-2000:]
    killed = launch(tmp_path, tmp_path / 'runs', 'step', 2, method='ce', lr=0.02, overwrite=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / 'runs' / 'run'
    assert not (run_dir / 'metrics.json').exists() and not (run_dir / 'checkpoint.pt').exists()
    assert json.loads((run_dir / 'config.json').read_text())['lr'] == 0.02
    with pytest.raises(FileNotFoundError, match='the run has not finished'): load_run(run_dir)
    with pytest.raises(FileNotFoundError, match='the run has not finished'):
        evaluate_run(run_dir, attacks='pgd', soundness=False, progress=False)


def test_a_second_launch_into_a_busy_folder_stops_with_a_clear_error(tmp_path):
    holder = launch(tmp_path, tmp_path / 'runs', 'hold', wait=False, method='ce')
    try:
        started, deadline = tmp_path / 'runs' / 'started', time.time() + 120
        while not started.exists() and time.time() < deadline and holder.poll() is None: time.sleep(0.05)
        assert started.exists(), holder.communicate()[1][-2000:]
        cfg = RunConfig(out_dir=str(tmp_path / 'runs'), name='run', **{**CONFIG, 'method': 'ce', 'lr': 0.2})
        with pytest.raises(RunLockedError, match=f'in use by another process \\(pid {holder.pid} '): T.train(cfg, progress=False)
        with pytest.raises(RunLockedError, match='in use by another process'):
            evaluate_run(cfg.run_dir, attacks='pgd', soundness=False, progress=False)
        assert runs.run_status(cfg.run_dir) == 'training'
        assert runs.list_runs(tmp_path / 'runs').set_index('run').loc['run', 'status'] == 'training'
    finally:
        (tmp_path / 'runs' / 'release').write_text('')
        _, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err[-2000:]
    run_dir = tmp_path / 'runs' / 'run'
    assert json.loads((run_dir / 'config.json').read_text())['lr'] == CONFIG.get('lr', 0.05)   # the holder's run, whole
    assert json.loads((run_dir / 'metrics.json').read_text())['checkpoint_sha256'] == file_sha256(run_dir / 'checkpoint.pt')
    assert runs.run_status(run_dir) == 'finished' and not (run_dir / '.lock').exists()


def test_a_kill_during_the_config_write_still_resumes_to_identical_weights(tmp_path, reference):
    run_dir = tmp_path / 'runs' / 'run'
    killed = launch(tmp_path, tmp_path / 'runs', 'step', STEPS_PER_EPOCH + 2)             # in epoch 2: resume.pt = epoch 1
    assert killed.returncode == -signal.SIGKILL
    config = (run_dir / 'config.json').read_bytes()
    killed = launch(tmp_path, tmp_path / 'runs', 'config')                                # dies writing config.json
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run_dir / 'config.json').read_bytes() == config                               # atomic: the old file is whole
    resumed = launch(tmp_path, tmp_path / 'runs')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(weights(run_dir), reference)
    assert not list(run_dir.glob('.*.tmp'))


def test_a_truncated_config_still_resumes_from_the_checkpoint(tmp_path, reference):
    "A config.json cut short (as the old non-atomic writer left it) does not make a resumable run impossible."
    run_dir = tmp_path / 'runs' / 'run'
    killed = launch(tmp_path, tmp_path / 'runs', 'step', STEPS_PER_EPOCH + 2)
    assert killed.returncode == -signal.SIGKILL
    text = (run_dir / 'config.json').read_text()
    (run_dir / 'config.json').write_text(text[:len(text) // 2])
    resumed = launch(tmp_path, tmp_path / 'runs')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'config.json is damaged; resuming with the parameters saved in resume.pt' in resumed.stderr
    assert_same_weights(weights(run_dir), reference)
    assert json.loads((run_dir / 'config.json').read_text())['method'] == CONFIG['method']   # rewritten whole


def test_an_empty_resume_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    run_dir = tmp_path / 'runs' / 'run'
    killed = launch(tmp_path, tmp_path / 'runs', 'step', 2 * STEPS_PER_EPOCH + 2)         # in epoch 3: resume.pt = epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(run_dir / RESUME_PREV, weights_only=True)['epoch'] == 1
    (run_dir / RESUME).write_bytes(b'')                                                   # 0 bytes
    resumed = launch(tmp_path, tmp_path / 'runs')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'is empty (0 bytes)' in resumed.stderr and 'trying the previous checkpoint' in resumed.stderr
    assert_same_weights(weights(run_dir), reference)


def test_an_interrupted_grid_resumes_the_partial_run_from_its_checkpoint(tmp_path, monkeypatch):
    params = dict(dataset='digits', preset='smoke', method='ce', seed=0, epochs=3, n_train=128, n_test=40, width=4,
                  batch_size=32, eval_steps=2, name='run', out_dir=str(tmp_path / 'grid'), device='cpu')
    grid = Grid('micro', 'one run', tmp_path / 'grid', 'imagefolder', runs={'run': GridRun('run', params)})
    epochs_run, real_epoch = [], T.train_epoch

    def counting_epoch(*args, **kwargs):
        epochs_run.append(args[5])
        if interrupt and args[5] == 2: raise KeyboardInterrupt              # the grid is stopped in the third epoch
        return real_epoch(*args, **kwargs)

    def execute(notebook, output, p, cwd):                                  # train.ipynb's work, without papermill
        assert notebook.name == 'train.ipynb'
        T.train(make_config(p['preset'], p['dataset'], **{k: v for k, v in p.items() if k not in ('dataset', 'preset')}),
                progress=False)

    monkeypatch.setattr(T, 'train_epoch', counting_epoch)
    interrupt = True
    with pytest.raises(KeyboardInterrupt): run_grid(grid, root=ROOT, progress=False, execute=execute)
    assert torch.load(grid.run_dir('run') / RESUME, weights_only=True)['epoch'] == 2
    interrupt, epochs_run[:] = False, []
    run_grid(grid, root=ROOT, progress=False, execute=execute)
    assert epochs_run == [2]                                                # only the missing epoch was trained
    uninterrupted = T.train(make_config('smoke', 'digits', **{**{k: v for k, v in params.items() if k not in ('dataset', 'preset')},
                                                              'out_dir': str(tmp_path / 'plain')}), progress=False)
    assert_same_weights(weights(grid.run_dir('run')), uninterrupted.model.state_dict())


def test_load_run_refuses_a_checkpoint_its_folder_does_not_describe(tmp_path):
    kw = dict(method='ce', epochs=1, n_train=64, n_test=20, width=4, batch_size=32, eval_steps=2, device='cpu')
    a = T.train(RunConfig(out_dir=str(tmp_path), name='a', **kw), progress=False).run_dir
    old = (a / 'checkpoint.pt').read_bytes()
    T.train(RunConfig(out_dir=str(tmp_path), name='a', overwrite=True, lr=0.01, **kw), progress=False)
    b = T.train(RunConfig(out_dir=str(tmp_path), name='b', seed=1, **kw), progress=False).run_dir
    (a / 'checkpoint.pt').write_bytes(old)                                  # the weights of the run it replaced
    with pytest.raises(CheckpointError, match="'lr': \\(0.05, 0.01\\)"): load_run(a)   # its saved config says so
    cfg_a = json.loads((a / 'config.json').read_text())
    (a / 'config.json').write_text(json.dumps({**cfg_a, 'lr': 0.05}))      # and with config.json edited to match it,
    with pytest.raises(CheckpointError, match='checkpoint.pt was modified or corrupted after training'): load_run(a)
    ckpt = torch.load(b / 'checkpoint.pt', weights_only=True)
    del ckpt['classes']
    torch.save(ckpt, b / 'checkpoint.pt')
    metrics = json.loads((b / 'metrics.json').read_text())
    (b / 'metrics.json').write_text(json.dumps({**metrics, 'checkpoint_sha256': file_sha256(b / 'checkpoint.pt')}))
    with pytest.raises(CheckpointError, match=r"lacks \['classes'\]"): load_run(b)
    config = json.loads((a / 'config.json').read_text())
    T.train(RunConfig(out_dir=str(tmp_path), name='a', overwrite=True, **kw), progress=False)
    (a / 'config.json').write_text(json.dumps({**config, 'alpha': 7.0}))    # a hand edit of a field the weights depend on
    with pytest.raises(CheckpointError, match=r"'alpha': \(5.0, 7.0\)"): load_run(a)


def test_evaluation_fails_before_any_work_on_an_unwritable_folder(tmp_path, monkeypatch):
    run_dir = T.train(RunConfig(method='ce', epochs=1, n_train=64, n_test=20, width=4, batch_size=32, eval_steps=2,
                                out_dir=str(tmp_path), name='run', device='cpu'), progress=False).run_dir
    real_open, loaded = os.open, []
    def read_only(path, *args, **kwargs):                                   # root ignores chmod: refuse the write here
        if str(path).startswith(str(run_dir)) and args and args[0] & os.O_CREAT: raise PermissionError(13, 'Permission denied')
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(runs.os, 'open', read_only)
    import advdpnp.evaluate as E
    monkeypatch.setattr(E, 'load_run_test_points', lambda *a, **k: loaded.append(1))
    with pytest.raises(PermissionError, match='cannot be opened .*fix its permissions or copy the run folder somewhere writable'):
        evaluate_run(run_dir, attacks='pgd', soundness=False, progress=False)
    assert not loaded and not (run_dir / RunFolder.EVALUATIONS).exists()


def test_a_foreign_autoattack_state_is_refused_with_its_name(tmp_path):
    run_dir = T.train(RunConfig(method='ce', epochs=1, n_train=64, n_test=20, width=4, batch_size=32, eval_steps=2,
                                out_dir=str(tmp_path), name='run', device='cpu'), progress=False).run_dir
    state = RunFolder(run_dir).autoattack_state(0.2, 'standard', 0)             # the digits eps and the run's seed
    state.write_text('[]')
    with pytest.raises(ValueError, match=f'{state.name} holds list'):
        evaluate_run(run_dir, attacks='autoattack', n_eval=10, soundness=False, progress=False)
    state.write_text('{"attacks": ["apgd-ce"], "robust": [true]}')   # the old format
    with pytest.raises(ValueError, match='is not an advdpnp AutoAttack state'):
        evaluate_run(run_dir, attacks='autoattack', n_eval=10, soundness=False, progress=False)


def test_artifacts_are_readable_like_any_file_the_user_writes(tmp_path):
    old = os.umask(0o002)
    try:
        run_dir = T.train(RunConfig(method='ce', epochs=1, n_train=64, n_test=20, width=4, batch_size=32, eval_steps=2,
                                    out_dir=str(tmp_path), name='run', device='cpu'), progress=False).run_dir
        evaluate_run(run_dir, attacks='pgd', soundness=False, progress=False)
    finally:
        os.umask(old)
    (evaluation,) = (run_dir / RunFolder.EVALUATIONS).glob('pgd-*.json')
    for path in [run_dir / name for name in RunFolder.TRAIN_FILES] + [evaluation]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path.name
