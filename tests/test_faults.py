"""Fault injection on the run folder's owner (`advdpnp.runs.RunFolder`) and its readers: links where files should be,
a full disk while locking, planted or hand-edited artifacts, a second evaluation of the same run, planted corruption
caches, readers without write access, a flipped bit, names the file system refuses, configs that would train on nothing,
old partial runs, and the oneDNN channels-last crash. Runs are tiny (digits, width 4, one epoch), trained once per module."""
import ast
import dataclasses
import errno
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT
import advdpnp.runs as runs
import advdpnp.train as T
from advdpnp.config import SEED_MAX, ConfigError, RunConfig, config_differences, make_config
from advdpnp.corruptions import cached_corruption, generate_corruption
from advdpnp.evaluate import evaluate_run
from advdpnp.files import file_sha256, read_json
from advdpnp.grid import Grid, GridRun, grid_evaluation, run_state
from advdpnp.runs import (ArtifactError, CheckpointError, RunFolder, RunLock, evaluation_request, list_runs, load_run,
                          run_status)

PARAMS = dict(method='ce', epochs=1, n_train=128, n_test=40, width=4, batch_size=32, eval_steps=2, seed=0, device='cpu')
PGD40 = dict(attacks='pgd', n_eval=40, soundness=False, corruptions='none', features=False, n_features=20, n_autoattack=None)


def digits(**kw) -> RunConfig: return make_config('smoke', 'digits', **{**PARAMS, **kw})


def copy_run(src: Path, out_dir: Path, name: str = 'run') -> Path:
    "A copy of the run folder `src` as `out_dir/name`."
    dst = out_dir / name
    shutil.copytree(src, dst)
    return dst


def grid_of(run_dir: Path, evaluate=PGD40, **train) -> Grid:
    "A one-run grid whose run is the folder `run_dir` (same parameters as `digits(**train)`)."
    params = dict(dataset='digits', preset='smoke', **{**PARAMS, **train}, name=run_dir.name, out_dir=str(run_dir.parent))
    run = GridRun(run_dir.name, params, dict(evaluate) if evaluate else None)
    entry = {'group': 'main', 'dataset': 'digits', 'method': params['method'], 'seed': params['seed'], 'run': run_dir.name}
    return Grid('micro', 'fault-injection grid', run_dir.parent, 'imagefolder', {run_dir.name: run}, [entry])


def only_evaluation_file(run_dir: Path) -> Path:
    files = [p for p in (run_dir / RunFolder.EVALUATIONS).glob('*.json') if 'format' not in read_json(p)]
    assert len(files) == 1, files
    return files[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "Two finished runs (seeds 0 and 1) under one out_dir; 'other' evaluated with PGD on 40 points. Read-only for tests."
    out = tmp_path_factory.mktemp('trained') / 'runs'
    run = T.train(digits(out_dir=str(out), name='run'), progress=False).run_dir
    other = T.train(digits(out_dir=str(out), name='other', seed=1), progress=False).run_dir
    other_eval = evaluate_run(other, attacks=('pgd',), n_eval=40, soundness=False, progress=False)
    return {'run': run, 'other': other, 'other_eval': other_eval}


# -- 1 ---------------------------------------------------------------------------------------------------------------
def test_lock_that_is_a_symlink_to_a_user_file_is_never_followed(trained, tmp_path):
    "Scenario 1: a `.lock` that is a symbolic link to a user file; train, evaluate, status and listing leave the file alone."
    out = tmp_path / 'runs'
    run_dir = copy_run(trained['run'], out)
    target = tmp_path / 'notes.txt'
    target.write_bytes(b'my notes, not a lock\n' * 10)
    before = target.read_bytes()
    link = run_dir / '.lock'
    link.symlink_to(target)
    with pytest.raises(OSError, match='symbolic link') as info:
        T.train(digits(out_dir=str(out), name='run', overwrite=True), progress=False)
    assert str(link) in str(info.value)
    with pytest.raises(OSError, match='symbolic link') as info:
        evaluate_run(run_dir, attacks='pgd', n_eval=10, soundness=False, progress=False)
    assert str(link) in str(info.value)
    assert run_status(run_dir) == 'unreadable'
    assert list_runs(out).set_index('run').loc['run', 'status'] == 'unreadable'
    assert target.read_bytes() == before
    assert link.is_symlink()                                               # not removed behind the user's back either
    assert (run_dir / 'metrics.json').exists() and not (run_dir / RunFolder.EVALUATIONS).exists()   # nothing ran


# -- 2 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('call', ['pwrite', 'ftruncate'])
def test_lock_does_not_leak_when_its_pid_line_cannot_be_written(tmp_path, monkeypatch, call):
    "Scenario 2: the disk fills while the lock writes its pid line; a clear error, and the lock is not left held."
    run_dir = tmp_path / 'run'
    def full(*args): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(runs.os, call, full)
    with pytest.raises(OSError, match='disk is full') as info:
        RunLock(run_dir).acquire()
    assert info.value.errno == errno.ENOSPC and str(run_dir / '.lock') in str(info.value)
    monkeypatch.undo()
    lock = RunLock(run_dir).acquire()          # flock is per open file description: a leaked descriptor would block this
    try: assert run_status(run_dir) == 'training'
    finally: lock.release()
    assert run_status(run_dir) == 'empty'


# -- 3 ---------------------------------------------------------------------------------------------------------------
def unverified(trained) -> dict:
    "The other run's evaluation without its checkpoint SHA-256 (as a hand copy or an older writer leaves it)."
    result = json.loads(json.dumps(trained['other_eval']))
    del result['checkpoint_sha256']
    result['model_card'].pop('checkpoint_sha256', None)
    return result


@pytest.mark.parametrize('where', ['eval.json', f'{RunFolder.EVALUATIONS}/pgd-planted.json'])
def test_planted_evaluation_without_provenance_is_refused_by_name(trained, tmp_path, where):
    "Scenario 3a/3b: another run's result (no checkpoint_sha256) planted as the legacy `eval.json` or as a file in `evaluations/` is refused, naming the file."
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    planted = run_dir / where
    planted.parent.mkdir(exist_ok=True)
    planted.write_text(json.dumps(unverified(trained)))
    with pytest.raises(ArtifactError, match=f'{planted.name} records no checkpoint_sha256'):
        RunFolder(run_dir).evaluations()
    with pytest.raises(ArtifactError, match=f'{planted.name} records no checkpoint_sha256'):
        grid_evaluation(grid_of(run_dir), 'run')


def test_report_reader_refuses_planted_eval_json_without_provenance(trained, tmp_path):
    "Scenario 3c: the report reader (collect_results) refuses an eval.json without checkpoint_sha256 instead of reporting it."
    from advdpnp.report import collect_results
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    (run_dir / 'eval.json').write_text(json.dumps(unverified(trained)))
    with pytest.raises(ArtifactError, match='eval.json records no checkpoint_sha256'):
        collect_results(grid_of(run_dir))


def test_hand_edited_accuracy_that_disagrees_with_per_point_is_refused_by_name(trained, tmp_path):
    "Scenario 3d: an evaluation whose `accuracy` was edited by hand so that it disagrees with `per_point` is refused by name."
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    evaluate_run(run_dir, attacks=('pgd',), n_eval=40, soundness=False, progress=False)
    path = only_evaluation_file(run_dir)
    result = read_json(path)
    assert RunFolder(run_dir).evaluations()[0]['accuracy'] == result['accuracy']       # readable before the edit
    result['accuracy']['pgd'] = 1.0 - result['accuracy']['pgd'] if result['accuracy']['pgd'] != 0.5 else 0.9
    path.write_text(json.dumps(result))
    with pytest.raises(ArtifactError, match=f'{path.name}: its pgd accuracy .* disagrees with its per-point results'):
        RunFolder(run_dir).evaluations()
    with pytest.raises(ArtifactError, match=path.name):
        grid_evaluation(grid_of(run_dir), 'run')


# -- 4 ---------------------------------------------------------------------------------------------------------------
def test_quick_reevaluation_does_not_replace_the_grids(trained, tmp_path):
    "Scenario 4a: a quick re-evaluation (PGD on 20 points) does not replace the grid's evaluation (PGD on 40 points)."
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    grids = evaluate_run(run_dir, attacks=('pgd',), n_eval=40, soundness=False, progress=False)
    quick = evaluate_run(run_dir, ('pgd',), n_eval=20, soundness=False, progress=False)
    folder, cfg = RunFolder(run_dir), RunFolder(run_dir).config()
    kept = folder.evaluation(evaluation_request(cfg, ['pgd'], 40, soundness=False))
    assert kept is not None and kept['n'] == 40 and kept['per_point'] == grids['per_point']
    assert folder.evaluation(evaluation_request(cfg, ['pgd'], 20, soundness=False))['per_point'] == quick['per_point']
    assert grid_evaluation(grid_of(run_dir), 'run')['n'] == 40
    assert sorted(e['n'] for e in folder.evaluations()) == [20, 40]


def test_autoattack_with_pgd_at_two_eps_keeps_both_evaluations_and_states(trained, tmp_path):
    "Scenario 4b: PGD+AutoAttack at eps 0.1 and then 0.2 on 10 points: both evaluations kept, one AutoAttack state each."
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    folder, cfg = RunFolder(run_dir), RunFolder(run_dir).config()
    for eps in (0.1, 0.2): evaluate_run(run_dir, ('pgd', 'autoattack'), n_eval=10, eps=eps, soundness=False, progress=False)
    states = [folder.autoattack_state(eps, 'standard', cfg.seed) for eps in (0.1, 0.2)]
    assert states[0] != states[1] and all(p.exists() for p in states)
    assert [read_json(p)['eps'] for p in states] == [0.1, 0.2]
    for eps in (0.1, 0.2):
        e = folder.evaluation(evaluation_request(cfg, ['pgd', 'autoattack'], 10, eps=eps, soundness=False))
        assert e is not None and e['eps'] == eps and e['n_per_attack']['autoattack'] == 10
    assert sorted(e['eps'] for e in folder.evaluations()) == [0.1, 0.2]


def test_autoattack_only_at_two_eps_keeps_both_evaluations_and_states(trained, tmp_path):
    "Scenario 4c: AutoAttack alone at eps 0.1 and then 0.2 on 10 points: both evaluations kept, two AutoAttack state files."
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    folder, cfg = RunFolder(run_dir), RunFolder(run_dir).config()
    for eps in (0.1, 0.2): evaluate_run(run_dir, ('autoattack',), n_eval=10, eps=eps, soundness=False, progress=False)
    states = [folder.autoattack_state(eps, 'standard', cfg.seed) for eps in (0.1, 0.2)]
    assert states[0] != states[1] and all(p.exists() for p in states)
    for eps in (0.1, 0.2):
        e = folder.evaluation(evaluation_request(cfg, ['autoattack'], 10, eps=eps, soundness=False))
        assert e is not None and e['eps'] == eps
    assert sorted(e['eps'] for e in folder.evaluations()) == [0.1, 0.2]


# -- 5 ---------------------------------------------------------------------------------------------------------------
class _MakesADirectory:
    "Unpickling this runs os.mkdir(path): the stand-in for a pickle that would run code."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (os.mkdir, (self.path,))


def test_corruption_cache_trusts_no_planted_file(tmp_path):
    "Scenario 5: a tensor or a code-running pickle planted at the corruption cache path is neither used nor executed."
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cache, corruption, severity = tmp_path / 'cache', 'gaussian_noise', 3
    fresh = generate_corruption(images, corruption, severity, seed=0)
    assert torch.equal(cached_corruption(images, corruption, severity, 0, cache), fresh)
    path, = cache.iterdir()                                                      # the cache path of these inputs
    torch.save(torch.zeros_like(images), path)                                   # right shape and dtype, wrong pixels
    assert torch.equal(cached_corruption(images, corruption, severity, 0, cache), fresh)
    for n, save in enumerate((lambda obj, p: torch.save(obj, p), lambda obj, p: p.write_bytes(pickle.dumps(obj)))):
        marker = tmp_path / f'MARKER{n}'
        save(_MakesADirectory(marker), path)
        assert torch.equal(cached_corruption(images, corruption, severity, 0, cache), fresh)
        assert not marker.exists(), 'the planted pickle ran'
    assert torch.equal(torch.load(path, weights_only=True)['images'], fresh)    # rewritten with the fresh pixels


# -- 6 ---------------------------------------------------------------------------------------------------------------
# The interpreter may live where uid 65534 cannot reach it (a pyenv under /root, mode 0700), so the reader imports
# everything as root and drops to uid/gid 65534 before it touches a run folder: every file access below is nobody's.
READER = textwrap.dedent('''
    import json, os, sys
    from advdpnp.runs import list_runs, run_status
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    assert os.geteuid() == 65534 and os.getegid() == 65534
    out = sys.argv[1]
    table = list_runs(out)
    print(json.dumps({'status': {r: run_status(f"{out}/{r}") for r in table['run']},
                      'listed': dict(zip(table['run'], table['status']))}))
''')


def as_nobody(*args):
    "The READER script's output, its file accesses made as uid/gid 65534 (root ignores file modes)."
    done = subprocess.run([sys.executable, '-c', READER, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to create files another user cannot write (and to drop to uid 65534)')
def test_readers_never_need_write_access(trained):
    "Scenario 6: a reader without write access: a stale `.lock` of a dead process, and one folder it may not read."
    tree = Path(tempfile.mkdtemp(dir='/tmp'))
    try:
        os.chmod(tree, 0o755)
        out = tree / 'runs'
        out.mkdir(mode=0o755)
        for name in ('stale', 'plain', 'secret'): copy_run(trained['run'], out, name)
        for p in out.rglob('*'): os.chmod(p, 0o755 if p.is_dir() else 0o644)
        (out / 'stale' / '.lock').write_text('pid 999999999 on nowhere since 2000-01-01 00:00:00')   # nobody holds it
        os.chmod(out / 'stale' / '.lock', 0o644)
        os.chmod(out / 'secret', 0o700)
        seen = as_nobody(out)
        assert seen['status']['stale'] == 'finished' and seen['listed']['stale'] == 'finished'
        assert seen['listed'] == {'plain': 'finished', 'secret': 'unreadable', 'stale': 'finished'}
        assert (out / 'stale' / '.lock').read_text().startswith('pid 999999999')   # a reader changes nothing
    finally: shutil.rmtree(tree)


# -- 7 ---------------------------------------------------------------------------------------------------------------
def tensor_data_offset(path: Path) -> int:
    "Offset in the torch.save zip `path` of the first byte of its largest tensor's data (stored, not compressed)."
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if '/data/' in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 16
    with open(path, 'rb') as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), 'little'), int.from_bytes(f.read(2), 'little')
    return info.header_offset + 30 + name_len + extra_len


def test_one_bit_change_in_the_checkpoint_is_reported_as_modified(trained, tmp_path):
    "Scenario 7: one bit flipped in `checkpoint.pt`: 'modified or corrupted', with restoring before retraining; not 'two runs'."
    run_dir = copy_run(trained['run'], tmp_path / 'runs')
    path = run_dir / 'checkpoint.pt'
    data = bytearray(path.read_bytes())
    at = tensor_data_offset(path) + 5                    # a weight changes; the file still loads
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    assert file_sha256(path) != file_sha256(trained['run'] / 'checkpoint.pt')
    with pytest.raises(CheckpointError) as info:
        load_run(run_dir)
    message = str(info.value)
    assert 'modified or corrupted' in message and str(path) in message
    assert 'two runs' not in message
    assert 'restore' in message and message.index('restore') < message.index('retrain')


# -- 8 ---------------------------------------------------------------------------------------------------------------
def test_names_the_file_system_cannot_hold_are_refused_clearly(tmp_path):
    "Scenario 8: a 300-byte name, NUL bytes, a 300-byte out_dir component and an out_dir longer than PATH_MAX."
    with pytest.raises(ConfigError, match='255'): RunConfig(name='x' * 300)
    with pytest.raises(ConfigError, match='NUL'): RunConfig(name='a\0b')
    with pytest.raises(ConfigError, match='NUL'): RunConfig(out_dir=str(tmp_path / 'a\0b'))
    RunConfig(name='x' * 255)                                                  # the longest name a folder can have
    too_long = [tmp_path / ('y' * 300), tmp_path.joinpath(*['z' * 250] * 20)]   # one component > 255 bytes; > PATH_MAX
    for out in too_long:
        with pytest.raises(OSError) as info:
            T.train(digits(out_dir=str(out), name='run'), progress=False)
        message = str(info.value)
        assert info.value.errno == errno.ENAMETOOLONG and 'too long' in message, message
        assert 'fix its permissions' not in message
    assert list(tmp_path.iterdir()) == []


# -- 9 ---------------------------------------------------------------------------------------------------------------
def test_configs_that_train_on_nothing_or_overflow_a_seed_are_refused(tmp_path):
    "Scenario 9: a validation split that leaves no training image, and a seed beyond NumPy's 32 bits, fail at validation."
    out = tmp_path / 'out'
    RunConfig(n_train=10, batch_size=8, out_dir=str(out))                       # 10 images make a batch of 8 ...
    with pytest.raises(ConfigError, match='validation split'):                   # ... the split's 10 (one per class) leave 0
        RunConfig(n_train=10, batch_size=8, val_fraction=0.1, out_dir=str(out))
    with pytest.raises(ConfigError, match='fewer than one batch'):
        RunConfig(n_train=10, val_fraction=0.1, out_dir=str(out))
    RunConfig(seed=SEED_MAX, out_dir=str(out))
    for seed in (SEED_MAX + 1, 2**63):
        with pytest.raises(ConfigError, match='seed='): RunConfig(seed=seed, out_dir=str(out))
    assert not out.exists()


# -- 10 --------------------------------------------------------------------------------------------------------------
def test_every_torch_load_passes_weights_only_true():
    "Scenario 10: every `torch.load(` call in advdpnp/*.py passes weights_only=True (no arbitrary unpickling), except the one behind foreign.py's explicit trust=True."
    calls, bad = 0, []
    trusted = {('foreign.py', 'weights_only', False)}   # load_state_dict_from(trust=True): the user's explicit choice, warned
    for path in sorted((ROOT / 'advdpnp').glob('*.py')):
        if path.name == '_modidx.py': continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load' \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch':
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                value = kw['weights_only'].value if isinstance(kw.get('weights_only'), ast.Constant) else None
                if value is not True and (path.name, 'weights_only', value) not in trusted:
                    bad.append(f'{path.name}:{node.lineno}')
    assert calls >= 2, 'the scan found no torch.load calls: it is looking in the wrong place'
    assert not bad, f'torch.load without weights_only=True at {bad}'


# -- 11 --------------------------------------------------------------------------------------------------------------
def test_partial_run_from_before_epoch_pgd_points_is_one_run_for_grid_and_train(tmp_path, monkeypatch):
    "Scenario 11: a partial run written before `epoch_pgd_points` existed: the grid and `train` both resume it."
    cfg = digits(epochs=2, out_dir=str(tmp_path / 'runs'), name='run')
    real_epoch = T.train_epoch
    def dying_epoch(*args, **kwargs):
        if args[5] == 1: raise KeyboardInterrupt        # the second epoch (index 1) never finishes
        return real_epoch(*args, **kwargs)
    monkeypatch.setattr(T, 'train_epoch', dying_epoch)
    with pytest.raises(KeyboardInterrupt):               # the older version: no per-epoch PGD (LEGACY_DEFAULTS' 0)
        T.train(dataclasses.replace(cfg, epoch_pgd_points=0), progress=False)
    monkeypatch.undo()
    folder = RunFolder(cfg.run_dir)
    assert not folder.finished and folder.file(folder.RESUME).exists()
    saved = read_json(folder.file(folder.CONFIG))
    del saved['epoch_pgd_points']                       # as an older version wrote config.json and resume.pt
    folder.file(folder.CONFIG).write_text(json.dumps(saved))
    state = torch.load(folder.file(folder.RESUME), weights_only=True)
    del state['config']['epoch_pgd_points']
    torch.save(state, folder.file(folder.RESUME))
    assert cfg.epoch_pgd_points == 200
    assert config_differences(saved, cfg) == {}
    assert folder.check(cfg) == 'resume'
    assert run_state(grid_of(cfg.run_dir, None, epochs=2), grid_of(cfg.run_dir, None, epochs=2).runs['run']) == \
        {'trained': False, 'evaluated': True, 'partial': True}
    done = T.train(cfg, progress=False)                 # no RunExistsError: the same run, resumed
    assert list(done.history['epoch']) == [1, 2] and folder.finished
    assert 'test_pgd_acc' in done.history and done.history['test_pgd_acc'].isna().tolist() == [True, False]


# -- 12 --------------------------------------------------------------------------------------------------------------
ONEDNN = textwrap.dedent('''
    import torch
    from advdpnp.config import RunConfig
    from advdpnp.models import build_model, onednn_unsafe
    from advdpnp.train import as_batch, prepare_model, train_step
    cfg = RunConfig(arch='preact_resnet18', width=4)
    assert cfg.channels_last
    model = prepare_model(build_model(cfg, (3, 64, 64), 10), cfg)
    unsafe = [m for m in model.modules() if onednn_unsafe(m)]
    assert unsafe and all(m.weight.is_contiguous() for m in unsafe)
    for _ in range(3):
        x = as_batch(torch.rand(8, 3, 64, 64), cfg).requires_grad_(True)
        model(x).logsumexp(1).mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss, _ = train_step(model, as_batch(torch.rand(8, 3, 64, 64), cfg), torch.randint(0, 10, (8,)), cfg, optimizer)
    assert torch.isfinite(loss)
    print('unsafe convolutions guarded:', len(unsafe))
''')


def test_onednn_crash_guard_channels_last_preact_resnet(tmp_path):
    "Scenario 12: channels-last PreAct ResNet-18 of width 4 (strided 1x1 convolutions of 4 and 8 channels) trains without crashing."
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    done = subprocess.run([sys.executable, '-c', ONEDNN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f'returncode {done.returncode}: {done.stderr[-3000:]}'
    assert 'unsafe convolutions guarded: 2' in done.stdout
