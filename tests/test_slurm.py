"""The grid on a real SLURM (`advdpnp.cluster`), not a mock: `bash .ci/slurm_up.sh` starts a one-node SLURM on this
machine (no accounting, so `sacct` knows nothing), and `pytest -m slurm tests/test_slurm.py` runs these tests on it.
They are skipped without a controller that answers, and unless `-m slurm` selects them: `make test` starts no daemon.

- the micro grid through SLURM gives the same weights, metrics and per-point results as the same grid run locally;
- a run requeued in the middle of its training, once by submitit's time-limit path (USR2) and once by the scheduler
  (`scontrol requeue`), resumes each time from its last epoch checkpoint and ends with the uninterrupted weights;
- a failing job and a cancelled one are named with their logs, the others finish, and nothing waits forever
  although `sacct` (submitit's own source of job states) has nothing to say.
Each test prints what it saw (job ids, states, epochs); `pytest -s` shows it."""
import json
import math
import os
import re
import subprocess
import time

import pytest
import torch

from conftest import ROOT, write_tiny_imagefolder
from advdpnp.cluster import (SlurmGridError, missing_slurm_commands, queued_states, resume_epoch, submit_grid,
                             watch_grid)
from advdpnp.grid import Grid, GridRun, build_grid, grid_evaluation, run_grid, select_parts
from advdpnp.runs import RunFolder

pytestmark = pytest.mark.slurm
CPU1 = {'cpus_per_job': 1}          # one core, one torch thread per job: the same arithmetic as a local run with threads=1


@pytest.fixture(autouse=True)
def slurm(request):
    "Skip unless `-m slurm` selects these tests and a SLURM controller answers here."
    if not re.search(r'(?<!not )\bslurm\b', request.config.getoption('markexpr') or ''):
        pytest.skip('SLURM tests run only with -m slurm (after bash .ci/slurm_up.sh)')
    missing = missing_slurm_commands()
    if missing: pytest.skip(f'no SLURM here ({missing} not on PATH): bash .ci/slurm_up.sh')
    ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True, timeout=30)
    if ping.returncode or 'UP' not in ping.stdout: pytest.skip(f'slurmctld does not answer ({ping.stdout.strip()}): bash .ci/slurm_up.sh')


def wait_for(what, condition, timeout=300, every=0.2):
    "The first true value of `condition()`, polled every `every` seconds; a failure after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition(): return value
        time.sleep(every)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')


def squeue_line(job_id):
    return subprocess.run(['squeue', '-h', '-j', job_id, '-o', '%T|%r'], capture_output=True, text=True).stdout.strip()


def release(job_id):
    "After a requeue SLURM holds a batch job for about two minutes (Reason=BeginTime): start it now instead (a test's shortcut)."
    wait_for(f'job {job_id} to be pending again', lambda: squeue_line(job_id).startswith('PENDING'), timeout=120)
    subprocess.run(['scontrol', 'update', f'JobId={job_id}', 'StartTime=now'], check=True)


def same_state_dicts(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(run_dir): return torch.load(run_dir / RunFolder.CHECKPOINT, weights_only=True)['model']


def read(path): return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# (a) the micro grid through SLURM and locally

def numbers(obj):
    "The numbers of a results file, NaN made comparable; times, paths and the checkpoint's hash (its config names its out_dir) left out."
    if isinstance(obj, dict):
        return {k: numbers(v) for k, v in obj.items() if 'seconds' not in k and k not in ('checkpoint_sha256', 'device', 'out_dir', 'run_dir')}
    if isinstance(obj, list): return [numbers(v) for v in obj]
    return 'nan' if isinstance(obj, float) and math.isnan(obj) else obj


# The full micro grid (19 runs then, 18 now) takes about 15 minutes on 2 cores (SLURM 9, local 6: measured December 2026), so the
# default is its main table for two methods (two runs with every evaluation: attacks, soundness, corruptions, features;
# 4 min 40 s for the three tests); ADVDPNP_SLURM_GRID=full runs all of it.
def micro_grid(out_dir, folder):
    grid = build_grid('micro', out_dir, data_dir=out_dir.parent / 'data', cifar_dir=folder,
                      methods=None if os.environ.get('ADVDPNP_SLURM_GRID') == 'full' else ['ce', 'adv_dpnp'])
    return grid if os.environ.get('ADVDPNP_SLURM_GRID') == 'full' else select_parts(grid, 'main')


def test_the_micro_grid_on_slurm_equals_the_local_grid(tmp_path):
    folder = write_tiny_imagefolder(tmp_path / 'folder', classes=tuple('abcdefghij'), per_class=3, size=32)  # 10 classes: AutoAttack
    grids = {where: micro_grid(tmp_path / where, folder) for where in ('slurm', 'local')}
    t0 = time.time()
    table = watch_grid(submit_grid(grids['slurm'], CPU1, root=ROOT), poll_s=2)
    t_slurm = time.time() - t0
    local = run_grid(grids['local'], root=ROOT, progress=False, workers=os.cpu_count())   # threads = cores // workers = 1
    t_local = time.time() - t0 - t_slurm
    print(table.to_string(), f'\nSLURM {t_slurm:.0f} s, local {t_local:.0f} s', flush=True)
    assert len({job.split('_')[0] for job in table['job']}) == 1 and set(table['attempt']) == {1}   # one array, one start each
    assert list(table['run']) == list(local['run']) and list(table['done']) == list(local['done'])
    same = []
    for name in grids['slurm'].runs:
        s, l = grids['slurm'].run_dir(name), grids['local'].run_dir(name)
        assert same_state_dicts(weights(s), weights(l)), name
        assert numbers(read(s / 'metrics.json')) == numbers(read(l / 'metrics.json')), name
        es, el = grid_evaluation(grids['slurm'], name), grid_evaluation(grids['local'], name)
        assert (es is None) == (el is None), name
        if es is None: continue
        assert numbers(es) == numbers(el), name              # every attack's per-point results, soundness included
        same += list(es['per_point'])
        if (s / RunFolder.FEATURES).exists(): assert numbers(read(s / RunFolder.FEATURES)) == numbers(read(l / RunFolder.FEATURES)), name
        if (s / RunFolder.CORRUPTIONS).exists():   # every corruption row, impulse noise too (seeded since 07_corruptions' fix)
            assert numbers(read(s / RunFolder.CORRUPTIONS)) == numbers(read(l / RunFolder.CORRUPTIONS)), name
    print(f'{len(grids["slurm"].runs)} runs: weights and metrics equal; {len(same)} per-point results and every corruption row identical',
          flush=True)


# ---------------------------------------------------------------------------------------------------------------
# (b) requeued in the middle of training: resumed, not restarted, with the uninterrupted weights

# Adv-DPNP on digits: about 1.4 s per epoch on one core, long enough to interrupt twice; PGD starts, augmentation
# and data order draw from the random states the epoch checkpoint restores.
REQUEUE_RUN = dict(dataset='digits', preset='smoke', method='adv_dpnp', seed=0, epochs=12, n_train=1024, n_test=60, width=12,
                   batch_size=32, attack_steps=5, eval_steps=3, threads=1, device='cpu')


def one_run_grid(out_dir, name, **train):
    run = GridRun(name, {**train, 'name': name, 'out_dir': str(out_dir)}, None)
    return Grid('micro', 'one run', out_dir, 'imagefolder', {name: run}, [])


def test_a_requeued_run_resumes_from_its_last_epoch_with_the_uninterrupted_weights(tmp_path):
    name = 'digits-adv_dpnp-requeue'
    grid = one_run_grid(tmp_path / 'slurm', name, **REQUEUE_RUN)
    sub = submit_grid(grid, CPU1, root=ROOT)
    job = sub.jobs[name]
    folder = RunFolder(grid.run_dir(name))
    # 1. what SLURM sends slurm_signal_delay_s before a time limit: USR2; submitit calls GridJob.checkpoint and requeues the job
    signalled = wait_for('the first epoch checkpoint', lambda: resume_epoch(folder))
    subprocess.run(['scancel', '--signal=USR2', job.job_id], check=True)
    release(job.job_id)
    # 2. a preemption by the scheduler: scontrol requeue (SIGTERM, SIGKILL after KillWait, back to the queue)
    requeued = wait_for('an epoch after the resume', lambda: (e := resume_epoch(folder)) and e >= signalled + 2 and e)
    subprocess.run(['scontrol', 'requeue', job.job_id], check=True)
    release(job.job_id)
    table = watch_grid(sub, poll_s=1)
    log = job.paths.stdout.read_text()
    starts = [(int(a), int(e or 0)) for a, e in re.findall(r'start (\d+)(?:, resuming after epoch (\d+))?', log)]
    # the same run, uninterrupted, locally (threads=1 from its parameters)
    local = one_run_grid(tmp_path / 'local', name, **REQUEUE_RUN)
    run_grid(local, root=ROOT, progress=False)
    equal = same_state_dicts(weights(folder.path), weights(local.run_dir(name)))
    print(f'job {job.job_id}: USR2 at epoch {signalled}, scontrol requeue at epoch {requeued}; starts (start, resumed after '
          f'epoch) {starts}; final row {table.iloc[0].to_dict()}; weights equal to the uninterrupted run: {equal}', flush=True)
    assert 'Calling checkpoint method' in log                                   # the USR2 went through GridJob.checkpoint
    assert [a for a, _ in starts] == [1, 2, 3] and starts[0][1] == 0
    assert signalled <= starts[1][1] < requeued <= starts[2][1] < REQUEUE_RUN['epochs']   # resumed, never from epoch 0
    assert table.iloc[0]['attempt'] == 3 and table.iloc[0]['resumed_after'] == starts[2][1] and table.iloc[0]['done'] == 'trained'
    assert equal
    history = [r.split(',')[0] for r in (folder.path / RunFolder.HISTORY).read_text().splitlines()[1:]]
    assert history == [str(e) for e in range(1, REQUEUE_RUN['epochs'] + 1)]     # every epoch once


# ---------------------------------------------------------------------------------------------------------------
# (c) failures: named with their logs, the other jobs finish, nothing waits forever without accounting

def test_failed_and_cancelled_jobs_are_named_with_their_logs_and_the_others_finish(tmp_path):
    small = dict(dataset='digits', preset='smoke', method='ce', seed=0, epochs=1, n_train=128, n_test=40, width=4, batch_size=32, device='cpu')
    runs = {'good': small, 'broken': {**small, 'dataset': 'imagefolder', 'data_dir': str(tmp_path / 'no-such-folder')}, 'cancelled': small}
    grid = Grid('micro', 'failures', tmp_path / 'runs', 'imagefolder',
                {n: GridRun(n, {**p, 'name': n, 'out_dir': str(tmp_path / 'runs')}, None) for n, p in runs.items()}, [])
    sub = submit_grid(grid, {**CPU1, 'array_parallelism': 1}, root=ROOT)        # one at a time: the last waits in the queue
    cancelled = sub.jobs['cancelled'].job_id
    assert queued_states([cancelled])[cancelled] == 'pending'
    subprocess.run(['scancel', cancelled], check=True)                          # it never starts: it writes no result
    with pytest.raises(SlurmGridError) as e:
        watch_grid(sub, poll_s=1, lost_after_s=5)
    message, table = str(e.value), e.value.table
    print(message, '\n', table.to_string(), flush=True)
    assert list(table['done']) == ['trained', 'failed', 'failed']
    assert f"run broken (SLURM job {sub.jobs['broken'].job_id}) raised an error; its log: {sub.jobs['broken'].paths.stderr}" in message
    assert 'no-such-folder' in message                                          # the last lines say why
    assert f'run cancelled (SLURM job {cancelled}) ended without a result' in message
    assert set(table.loc[table['done'] == 'failed', 'log']) == {str(sub.jobs[n].paths.stderr) for n in ('broken', 'cancelled')}
    # what submitit alone would have seen: no accounting, so the state of every job stays UNKNOWN
    sacct = subprocess.run(['sacct', '-j', cancelled], capture_output=True, text=True)
    print('sacct:', (sacct.stdout + sacct.stderr).strip(), '| submitit state:', sub.jobs['cancelled'].state)
    if 'accounting storage is disabled' in sacct.stdout + sacct.stderr: assert sub.jobs['cancelled'].state == 'UNKNOWN'
