"""The trainer's behaviour: the demo's claims (slow: `make test-slow`), determinism, safety of existing runs, missing data.
Claims about accuracies are tested against exact one-sided binomial bounds at level 0.001 on the n test points, so
that they fail only when the data contradict them, on any machine."""
import json
import urllib.error
from unittest import mock

import pytest
import torch

from advdpnp.config import make_config
from advdpnp.data import DatasetNotFoundError, load_torchvision
from advdpnp.models import build_model
from advdpnp.runs import RunExistsError, load_run
from advdpnp.stats import binomial_bounds
from advdpnp.train import seed_everything, train


@pytest.fixture(scope='module')
def demo_runs(tmp_path_factory):
    "The `make demo` configuration (digits, smoke preset), trained once for the claims below."
    out = tmp_path_factory.mktemp('runs')
    return {m: train(make_config('smoke', 'digits', method=m, out_dir=str(out)), progress=False) for m in ('adv_dpnp', 'ce')}


def bounds(metrics, key):
    "Exact one-sided (lower, upper) bounds at level 0.001 of the accuracy `key` measured on metrics['n_test'] points."
    n = metrics['n_test']
    return binomial_bounds(round(metrics[key] * n), n, 0.001)


@pytest.mark.slow
def test_demo_adv_dpnp_is_accurate_and_robust(demo_runs):
    metrics = demo_runs['adv_dpnp'].metrics
    assert metrics['eps'] == 0.2 and metrics['attack']['steps'] == 20 and metrics['n_test'] == 360
    assert bounds(metrics, 'clean_acc')[1] >= 0.90          # not significantly below 90 % clean
    assert bounds(metrics, 'pgd20_acc')[1] >= 0.50          # nor below 50 % under PGD-20


@pytest.mark.slow
def test_demo_standard_model_is_not_robust(demo_runs):
    metrics = demo_runs['ce'].metrics
    assert bounds(metrics, 'clean_acc')[1] >= 0.90          # a good classifier ...
    assert bounds(metrics, 'pgd20_acc')[0] < 0.20           # ... that the same attack breaks


@pytest.mark.slow
@pytest.mark.parametrize('seed', range(5))
def test_demo_soundness_verdict_is_stable_over_attack_seeds(demo_runs, seed):
    "The demo model is sound for every seed of the attacks' random starts; the same model with saturated logits never is."
    from advdpnp.data import load_digits
    from advdpnp.evaluate import soundness_report
    model, data = demo_runs['adv_dpnp'].model.cpu().eval(), load_digits()
    sound = soundness_report(model, data.x_test, data.y_test, eps=0.2, seed=seed, progress=False)
    assert not sound['flagged'], sound['checks']
    masked = soundness_report(torch.nn.Sequential(model, Scale(1e4)), data.x_test, data.y_test, eps=0.2, seed=seed,
                              square_queries=300, n_square=100, progress=False)
    failed = {c['check'] for c in masked['checks'] if not c['passed']}
    assert {'unbounded_reaches_zero', 'ce_and_margin_agree', 'no_zero_gradients'} <= failed, failed


class Scale(torch.nn.Module):
    "Multiplies the logits: identical predictions, a saturated softmax (CE gradients underflow to zero)."
    def __init__(self, factor): super().__init__(); self.factor = factor
    def forward(self, x): return x * self.factor


@pytest.mark.slow
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
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert cfg.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)   # evaluated as it trained
    assert json.loads((result.run_dir / 'metrics.json').read_text())['clean_acc'] == result.metrics['clean_acc']


def test_unreachable_download_names_the_files(tmp_path):
    offline = mock.patch('torchvision.datasets.cifar.download_and_extract_archive',
                         side_effect=urllib.error.URLError('no network'))
    with offline, pytest.raises(DatasetNotFoundError) as error:
        load_torchvision('cifar10', tmp_path, download=True)
    message = str(error.value)
    assert 'download failed' in message and 'cifar-10-python.tar.gz' in message and str(tmp_path) in message
