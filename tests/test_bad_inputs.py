"""Every user-facing entry point with bad values: each gets one clear error, raised before any work, that
names what was wrong and what is valid; never a traceback from deep inside torch.
`python tests/test_bad_inputs.py` prints every case with the message it gets."""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import papermill
import pytest
import torch

from conftest import ROOT, write_tiny_imagefolder
from advdpnp.config import ConfigError, make_config
from advdpnp.corruptions import evaluate_run_corruptions
from advdpnp.data import DatasetNotFoundError, load_data
from advdpnp.evaluate import evaluate_run
from advdpnp.grid import build_grid
from advdpnp.runs import CheckpointError, RunExistsError, load_run
from advdpnp.train import train


@dataclass
class Case:
    entry: str        # which entry point
    what: str         # the bad input
    call: object      # () -> None, must raise
    error: type
    message: str      # a fragment the message must contain


def digits(**kw): return make_config('smoke', 'digits', **kw)


def in_two_processes(call):
    "Call as torchrun's rank 0 of 2 would (only WORLD_SIZE is consulted before the batch-size check)."
    old = os.environ.get('WORLD_SIZE')
    os.environ['WORLD_SIZE'] = '2'
    try: return call()
    finally:
        if old is None: del os.environ['WORLD_SIZE']
        else: os.environ['WORLD_SIZE'] = old


def cases(tmp: Path, run: Path, other: Path) -> list:
    empty = tmp / 'empty'
    (empty / 'train').mkdir(parents=True); (empty / 'test').mkdir(parents=True)
    small = write_tiny_imagefolder(tmp / 'small', per_class=2)
    corrupt = tmp / 'corrupt'; shutil.copytree(run, corrupt)
    (corrupt / 'checkpoint.pt').write_bytes((run / 'checkpoint.pt').read_bytes()[:5000])
    foreign = tmp / 'foreign'; shutil.copytree(run, foreign)
    shutil.copy(other / 'checkpoint.pt', foreign / 'checkpoint.pt')
    unsafe = tmp / 'unsafe'; shutil.copytree(run, unsafe)
    ckpt = torch.load(run / 'checkpoint.pt', weights_only=True); ckpt['extra'] = Path('/etc')
    torch.save(ckpt, unsafe / 'checkpoint.pt')
    out = str(tmp / 'out')
    return [
        Case('config', "method='adv-dpnp'", lambda: digits(method='adv-dpnp'), ConfigError,
             "method='adv-dpnp' is not valid; choose one of ['ce', 'dpnp', 'adv_dpnp', 'pgd_at', 'trades', 'mart']"),
        Case('config', "dataset='mnist'", lambda: make_config('smoke', 'mnist'), ConfigError,
             "dataset='mnist' is not valid; choose one of ['digits', 'cifar10', 'cifar100', 'svhn', 'imagefolder']"),
        Case('config', "preset='gpu'", lambda: make_config('gpu', 'digits'), ConfigError, "preset='gpu' is not valid; choose one of ['paper', 'smoke']"),
        Case('config', "epochs='10' (a string)", lambda: digits(epochs='10'), ConfigError, "epochs='10' must be an integer"),
        Case('config', 'eps=8 (pixels, not [0, 1])', lambda: digits(eps=8), ConfigError, 'eps=8 must lie in [0, 1]'),
        Case('config', 'lr=-0.1', lambda: digits(lr=-0.1), ConfigError, 'lr=-0.1 must be positive'),
        Case('config', 'batch_size=0', lambda: digits(batch_size=0), ConfigError, 'batch_size=0 must be positive'),
        Case('config', 'momentum=1.5', lambda: digits(momentum=1.5), ConfigError, 'momentum=1.5 must lie in [0, 1)'),
        Case('config', 'learning_rate=0.1 (unknown name)', lambda: digits(learning_rate=0.1), ConfigError,
             "unknown parameter 'learning_rate' (did you mean 'lr'?)"),
        Case('config', 'n_train=5000 on digits', lambda: digits(n_train=5000), ConfigError, 'n_train=5000 is larger than digits has (1437)'),
        Case('config', "classifier='linear' for dpnp", lambda: digits(method='dpnp', classifier='linear'), ConfigError,
             "use classifier='auto' or 'prototype'"),
        Case('config', "device='tpu'", lambda: digits(device='tpu'), ConfigError, "device='tpu' is not valid; choose 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        Case('config', 'lr_decay_at=[0.9, 0.5]', lambda: digits(lr_decay_at=[0.9, 0.5]), ConfigError, 'must be an increasing list of fractions'),
        Case('data', 'imagefolder: missing folder', lambda: load_data(make_config('smoke', 'imagefolder', data_dir=str(tmp / 'nowhere'))),
             DatasetNotFoundError, 'must contain train/ and test/ folders'),
        Case('data', 'imagefolder: empty train/ and test/', lambda: load_data(make_config('smoke', 'imagefolder', data_dir=str(empty))),
             DatasetNotFoundError, 'no images found under'),
        Case('data', 'imagefolder: n_train larger than the folder', lambda: load_data(make_config('smoke', 'imagefolder', data_dir=str(small), n_train=100, batch_size=8)),
             ValueError, 'n_train=100 is larger than the 6 images in'),
        Case('data', 'cifar10 absent, download=False', lambda: load_data(make_config('smoke', 'cifar10', data_dir=str(empty), download=False)),
             DatasetNotFoundError, 'cifar10 was not found in'),
        Case('train', "device='cuda' without a GPU", lambda: train(digits(device='cuda', out_dir=out)), RuntimeError, 'CUDA is not available'),
        Case('train', 'into a finished run folder', lambda: train(digits(out_dir=str(run.parent), name=run.name)), RunExistsError,
             'already holds a run (finished'),
        Case('train', 'batch_size=63 under torchrun with 2 processes', lambda: in_two_processes(lambda: train(digits(batch_size=63, out_dir=out))),
             ValueError, 'batch_size=63 is the global batch and must be divisible by the 2 processes'),
        Case('evaluate', 'run folder that does not exist', lambda: evaluate_run(tmp / 'missing-run'), FileNotFoundError, 'is missing: is'),
        Case('evaluate', "attacks='pgd,spsa'", lambda: evaluate_run(run, 'pgd,spsa'), ValueError, "unknown attack(s) ['spsa']; choose from"),
        Case('evaluate', 'eps=2', lambda: evaluate_run(run, 'pgd', eps=2), ValueError, 'eps=2 must lie in [0, 1]'),
        Case('evaluate', 'n_eval=0', lambda: evaluate_run(run, 'pgd', n_eval=0), ValueError, 'n_eval=0 must be a positive integer or None'),
        Case('evaluate', 'AutoAttack on a 3-class model', lambda: evaluate_run(other, 'autoattack'), ValueError, 'AutoAttack (standard) needs at least 10 classes'),
        Case('evaluate', "corruptions source='fake'", lambda: evaluate_run_corruptions(run, 'fake'), ValueError,
             "source='fake'; choose one of ['auto', 'official', 'generated']"),
        Case('evaluate', 'generated corruptions of 8x8 digits', lambda: evaluate_run_corruptions(run, 'generated'), ValueError,
             'corruptions need 1- or 3-channel images of at least 32x32 pixels'),
        Case('checkpoint', 'truncated checkpoint.pt', lambda: load_run(corrupt), CheckpointError, 'checkpoint.pt is truncated or corrupted'),
        Case('checkpoint', 'checkpoint of another dataset and architecture', lambda: load_run(foreign), CheckpointError,
             "was written by another run than"),
        Case('checkpoint', 'checkpoint that needs arbitrary unpickling', lambda: load_run(unsafe), CheckpointError, 'need arbitrary unpickling'),
        Case('paper grid', "scale='huge'", lambda: build_grid('huge', out), ValueError, "scale='huge' is not valid; choose one of ['paper', 'gpu', 'cpu', 'micro']"),
        Case('paper grid', "methods=['madry']", lambda: build_grid('cpu', out, methods=['madry']), ValueError, 'choose a non-empty subset of'),
    ]


@pytest.fixture(scope='module')
def all_cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bad')
    run = train(digits(method='ce', epochs=1, width=4, n_train=100, n_test=20, eval_steps=2, out_dir=str(tmp / 'runs')), progress=False).run_dir
    folder = write_tiny_imagefolder(tmp / 'folder', per_class=4)
    other = train(make_config('smoke', 'imagefolder', data_dir=str(folder), arch='preact_resnet18', width=4, epochs=1, batch_size=4,
                              n_train=12, n_test=6, eval_steps=2, out_dir=str(tmp / 'runs')), progress=False).run_dir
    return {f'{c.entry}: {c.what}': c for c in cases(tmp, run, other)}, tmp


N_CASES = 32


@pytest.mark.parametrize('index', range(N_CASES))
def test_bad_input_gets_one_clear_error(all_cases, index):
    table, tmp = all_cases
    case = list(table.values())[index]
    before = sorted(p.relative_to(tmp) for p in tmp.rglob('*'))
    with pytest.raises(case.error) as info:
        case.call()
    assert case.message in str(info.value), f'{case.what}: {info.value}'
    assert not type(info.value).__module__.startswith('torch')        # our error, not one from inside torch
    assert sorted(p.relative_to(tmp) for p in tmp.rglob('*')) == before   # nothing written or removed


def test_the_case_list_is_complete(all_cases):
    assert len(all_cases[0]) == N_CASES


@pytest.mark.parametrize('notebook, parameters, message', [
    ('train.ipynb', dict(dataset='digits', preset='smoke', epochs='ten'), "epochs='ten' must be an integer"),
    ('train.ipynb', dict(dataset='digits', preset='smoke', method='madry'), "method='madry' is not valid; choose one of"),
    ('evaluate.ipynb', dict(run_dir='runs/x', corruptions='some'), "corruptions='some'; choose one of ['none', 'auto', 'official', 'generated']"),
    ('evaluate.ipynb', dict(run_dir='runs/x', n_eval=-5), 'n_eval=-5 must be a positive integer or None'),
    ('paper.ipynb', dict(scale='huge'), "scale='huge' is not valid; choose one of ['paper', 'gpu', 'cpu', 'micro']"),
])
def test_notebook_parameters(tmp_path, notebook, parameters, message):
    if notebook != 'evaluate.ipynb': parameters = {'out_dir': str(tmp_path / 'runs'), **parameters}
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(ROOT / 'nbs' / notebook), str(tmp_path / 'out.ipynb'), parameters=parameters,
                                   cwd=str(ROOT), progress_bar=False, kernel_name='python3')
    assert message in str(info.value)
    assert not (tmp_path / 'runs').exists()


if __name__ == '__main__':   # print every case and the message it gets
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        run = train(digits(method='ce', epochs=1, width=4, n_train=100, n_test=20, eval_steps=2, out_dir=str(d / 'runs')), progress=False).run_dir
        other = train(make_config('smoke', 'imagefolder', data_dir=str(write_tiny_imagefolder(d / 'folder', per_class=4)), arch='preact_resnet18',
                                  width=4, epochs=1, batch_size=4, n_train=12, n_test=6, eval_steps=2, out_dir=str(d / 'runs')), progress=False).run_dir
        for c in cases(d, run, other):
            try: c.call(); print(f'| {c.entry} | {c.what} | (no error!) |')
            except Exception as e: print(f'| {c.entry} | {c.what} | {type(e).__name__}: {str(e).replace(str(d), "<tmp>").splitlines()[0][:300]} |')


def test_a_failed_download_leaves_no_folders(tmp_path):
    "A misspelt data_dir with download=True: the error names the folder, and the folders the download made are gone."
    from advdpnp.data import DatasetNotFoundError, load_torchvision
    with pytest.raises(DatasetNotFoundError, match='data_dirr'):
        load_torchvision('cifar10', tmp_path / 'typo' / 'data_dirr', download=True)   # offline: the download fails
    assert not (tmp_path / 'typo').exists() and tmp_path.exists()
