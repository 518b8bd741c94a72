"""The fault test: a training run killed with SIGKILL (mid-epoch, and during a checkpoint write) and then
resumed ends with exactly the weights, history and metrics of an uninterrupted run with the same seed."""
import json
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from conftest import ROOT

# Adv-DPNP on digits: 4 epochs of 8 steps; PGD random starts, augmentation order and data order all draw
# from the random states that the checkpoint must restore.
CONFIG = dict(method='adv_dpnp', epochs=4, n_train=256, n_test=60, width=4, batch_size=32, attack_steps=2, eval_steps=3)

SCRIPT = textwrap.dedent('''
    import io, os, signal, sys
    import torch
    import advdpnp.train as T
    from advdpnp.config import RunConfig
    out_dir, fault, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = {'n': 0}
    def die(): os.kill(os.getpid(), signal.SIGKILL)
    if fault == 'step':            # SIGKILL inside the `at`-th training step
        real_examples = T.training_examples
        def examples(*a, **k):
            calls['n'] += 1
            if calls['n'] == at: die()
            return real_examples(*a, **k)
        T.training_examples = examples
    elif fault == 'write':         # SIGKILL halfway through writing the `at`-th checkpoint
        real_save = torch.save
        def save(obj, f, *a, **k):
            calls['n'] += 1
            if calls['n'] == at and str(f).endswith('.tmp'):
                buf = io.BytesIO(); real_save(obj, buf, *a, **k)
                with open(f, 'wb') as fh: fh.write(buf.getvalue()[:len(buf.getvalue()) // 2]); fh.flush(); os.fsync(fh.fileno())
                die()
            return real_save(obj, f, *a, **k)
        torch.save = save
    T.train(RunConfig(out_dir=out_dir, name='run', **%s), progress=False)
''' % repr(CONFIG))


def run(tmp_path, out_dir, fault='none', at=0):
    script = tmp_path / 'run.py'
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(out_dir), fault, str(at)], cwd=ROOT, capture_output=True, text=True)


def final_state(run_dir):
    ckpt = torch.load(run_dir / 'checkpoint.pt', weights_only=True)
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    history = pd.read_csv(run_dir / 'history.csv').drop(columns='seconds')
    return ckpt['model'], {k: metrics[k] for k in ('clean_acc', 'pgd3_acc')}, history


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reference')
    done = run(tmp, tmp / 'runs')
    assert done.returncode == 0, done.stderr[-2000:]
    return final_state(tmp / 'runs' / 'run')


def assert_same(run_dir, reference):
    weights, metrics, history = final_state(run_dir)
    ref_weights, ref_metrics, ref_history = reference
    assert weights.keys() == ref_weights.keys()
    for k in weights: assert torch.equal(weights[k], ref_weights[k]), k
    assert metrics == ref_metrics
    pd.testing.assert_frame_equal(history, ref_history)


@pytest.mark.parametrize('fault, at, resumes_after', [
    ('step', 8 * 2 + 4, 2),   # SIGKILL in the middle of epoch 3: resume from epoch 2
    ('write', 3, 2),          # SIGKILL while writing the epoch-3 checkpoint: epoch 2's is intact
])
def test_kill_and_resume_equals_uninterrupted(tmp_path, reference, fault, at, resumes_after):
    killed = run(tmp_path, tmp_path / 'runs', fault, at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / 'runs' / 'run'
    assert not (run_dir / 'metrics.json').exists()
    state = torch.load(run_dir / 'resume.pt', weights_only=True)
    assert state['epoch'] == resumes_after
    resumed = run(tmp_path, tmp_path / 'runs')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(run_dir, reference)
    assert not list(run_dir.glob('*.tmp')) and not list(run_dir.glob('.*.tmp'))


def test_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    killed = run(tmp_path, tmp_path / 'runs', 'step', 8 * 3 + 2)          # dies in epoch 4: resume.pt = epoch 3
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / 'runs' / 'run'
    (run_dir / 'resume.pt').write_bytes(b'not a checkpoint')           # damaged: resume.prev.pt (epoch 2) must be used
    config = (run_dir / 'config.json').read_bytes()
    resumed = run(tmp_path, tmp_path / 'runs')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'resume.pt is truncated or corrupted' in resumed.stderr and 'trying the previous checkpoint' in resumed.stderr
    assert_same(run_dir, reference)
    assert (run_dir / 'config.json').read_bytes() == config
