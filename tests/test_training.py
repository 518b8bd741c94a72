"The trainer's behaviour: the demo's claims, determinism, safety of existing runs, missing data."
import json
import urllib.error
from unittest import mock

import pytest
import torch

from advdpnp.config import make_config
from advdpnp.data import DatasetNotFoundError, load_torchvision
from advdpnp.models import build_model
from advdpnp.train import RunExistsError, load_run, seed_everything, train


@pytest.fixture(scope='module')
def demo_runs(tmp_path_factory):
    "The `make demo` configuration (digits, smoke preset), trained once for the claims below."
    out = tmp_path_factory.mktemp('runs')
    return {m: train(make_config('smoke', 'digits', method=m, out_dir=str(out)), progress=False) for m in ('adv_dpnp', 'ce')}


def test_demo_adv_dpnp_is_accurate_and_robust(demo_runs):
    metrics = demo_runs['adv_dpnp'].metrics
    assert metrics['eps'] == 0.2 and metrics['attack']['steps'] == 20
    assert metrics['clean_acc'] >= 0.90
    assert metrics['pgd20_acc'] >= 0.50


def test_demo_standard_model_is_not_robust(demo_runs):
    metrics = demo_runs['ce'].metrics
    assert metrics['clean_acc'] >= 0.90          # a good classifier ...
    assert metrics['pgd20_acc'] < 0.20           # ... that the same attack breaks


def test_demo_prototypes_keep_norm_alpha(demo_runs):
    model = demo_runs['adv_dpnp'].model
    protos = model.head.prototypes().detach().cpu()
    assert torch.allclose(protos.norm(dim=1), torch.full((10,), 5.0), atol=1e-4)
    seed_everything(0)   # the trainer seeds, then builds the model: rebuild its initial state
    initial = build_model(make_config('smoke', 'digits'), (1, 8, 8), 10)
    moved = (initial.head.prototypes() - model.head.prototypes().cpu()).norm(dim=1)
    assert moved.min() > 0.1                     # every prototype was trained (from clean data)


def test_same_seed_same_weights(tmp_path):
    cfg = dict(epochs=1, n_train=128, n_test=32, width=8, attack_steps=2, eval_steps=2)
    a = train(make_config('smoke', 'digits', out_dir=str(tmp_path / 'a'), **cfg), progress=False)
    b = train(make_config('smoke', 'digits', out_dir=str(tmp_path / 'b'), **cfg), progress=False)
    c = train(make_config('smoke', 'digits', out_dir=str(tmp_path / 'c'), seed=1, **cfg), progress=False)
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = make_config('smoke', 'digits', method='ce', epochs=1, n_train=64, n_test=32, width=4, out_dir=str(tmp_path))
    first = train(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    with pytest.raises(RunExistsError, match='overwrite=True'):
        train(cfg, progress=False)
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before


def test_checkpoint_loads_with_weights_only(tmp_path):
    cfg = make_config('smoke', 'digits', method='dpnp', epochs=1, n_train=64, n_test=32, width=4, out_dir=str(tmp_path))
    result = train(cfg, progress=False)
    model, loaded_cfg, ckpt = load_run(result.run_dir)
    assert loaded_cfg == cfg and ckpt['epoch'] == 1 and ckpt['input_shape'] == [1, 8, 8]
    assert json.loads((result.run_dir / 'metrics.json').read_text())['clean_acc'] == result.metrics['clean_acc']


def test_unreachable_download_names_the_files(tmp_path):
    offline = mock.patch('torchvision.datasets.cifar.download_and_extract_archive',
                         side_effect=urllib.error.URLError('no network'))
    with offline, pytest.raises(DatasetNotFoundError) as error:
        load_torchvision('cifar10', tmp_path, download=True)
    message = str(error.value)
    assert 'download failed' in message and 'cifar-10-python.tar.gz' in message and str(tmp_path) in message
