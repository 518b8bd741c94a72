"""The fast path does not change training beyond numerical noise (CPU, small nets).

PGD takes the *sign* of the input gradient, so a rounding difference (channels-last convolutions sum in
another order; bf16 rounds) can flip the sign of a near-zero gradient component and move a pixel by a
step: over several steps two runs then part ways, which says nothing about their accuracy. So each
ingredient is checked where it can be checked exactly:
1. input-only attack gradients, device-resident batches and the trainer's step: bit-for-bit the plain
   implementation's weights after several steps (NCHW, fp32);
2. channels-last: the same adversarial examples up to a few sign flips, and the same update given the same
   examples up to float rounding;
3. bf16 autocast: the gradient of one update points the same way as fp32's (cosine > 0.95; bf16 keeps
   8 bits of mantissa);
4. compile_mode: the compiled step gives the eager step's examples and losses, and really is compiled."""
import pytest
import torch

from advdpnp.attacks import pgd_attack
from advdpnp.benchmark import plain_pgd_attack, plain_step
from advdpnp.config import RunConfig
from advdpnp.losses import OBJECTIVES
from advdpnp.models import build_model
from advdpnp.train import as_batch, autocast, make_optimizer, prepare_model, train_step

CFG = dict(arch='preact_resnet18', width=8, eps=8 / 255, attack_step=2 / 255, attack_steps=3)


def model_for(cfg, fast):
    torch.manual_seed(0)
    model = build_model(cfg, (3, 16, 16), 10)
    return prepare_model(model, cfg) if fast else model


def relative_difference(a, b):
    num = sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if a[k].is_floating_point())
    den = sum((b[k].float() ** 2).sum() for k in b if b[k].is_floating_point())
    return (num / den).sqrt().item()


@pytest.fixture(scope='module')
def batches():
    g = torch.Generator().manual_seed(2)
    return [(torch.rand(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(4)]


@pytest.mark.parametrize('method', ['adv_dpnp', 'pgd_at', 'trades', 'mart'])
def test_trainer_step_equals_plain_step(batches, method):
    cfg = RunConfig(method=method, channels_last=False, **CFG)
    states = []
    for path in ('fast', 'plain'):
        model = model_for(cfg, path == 'fast')
        opt = make_optimizer(model, cfg)
        torch.manual_seed(1)
        for x, y in batches:
            if path == 'fast': train_step(model, as_batch(x, cfg), y, cfg, opt)
            elif method == 'trades': pytest.skip('the plain step implements the CE attack only; TRADES is covered by 03_losses/04_attacks')
            else: plain_step(model, x, y, cfg, opt)
        states.append(model.state_dict())
    assert relative_difference(*states) < 1e-6


def test_channels_last_attack_and_update(batches):
    cfg, plain_cfg = RunConfig(method='adv_dpnp', **CFG), RunConfig(method='adv_dpnp', channels_last=False, **CFG)
    fast, plain = model_for(cfg, True), model_for(plain_cfg, False)
    x, y = batches[0]
    torch.manual_seed(3); a = pgd_attack(fast, as_batch(x, cfg), y, cfg.eps, cfg.attack_step, 10)
    torch.manual_seed(3); b = plain_pgd_attack(plain, x, y, cfg.eps, cfg.attack_step, 10)
    changed = ((a - b).abs() > 1e-6).float().mean().item()
    print(f'channels-last PGD-10: {100 * changed:.3f} % of pixels differ (sign flips of near-zero gradients)')
    assert changed < 0.02
    for model, c, xb in ((fast, cfg, as_batch(x, cfg)), (plain, plain_cfg, x)):   # one update on the same examples
        opt = make_optimizer(model, c)
        model.train()
        loss, _ = OBJECTIVES['adv_dpnp'](model, xb, y, as_batch(b, c), c)
        opt.zero_grad(); loss.backward(); opt.step()
    diff = relative_difference(fast.state_dict(), plain.state_dict())
    print(f'channels-last update on the same examples: relative weight difference {diff:.2e}')
    assert diff < 1e-5


def test_bf16_gradient_points_the_same_way(batches):
    cfg = RunConfig(method='adv_dpnp', **CFG)
    x, y = batches[0]
    model = model_for(cfg, True)
    torch.manual_seed(3); x_adv = pgd_attack(model, as_batch(x, cfg), y, cfg.eps, cfg.attack_step, 3)
    grads = []
    for amp in ('off', 'bf16'):
        c = RunConfig(**{**cfg.to_dict(), 'amp': amp})
        model.zero_grad(); model.train()
        with autocast(c, x.device): loss, _ = OBJECTIVES['adv_dpnp'](model, as_batch(x, c), y, x_adv, c)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    cos = torch.nn.functional.cosine_similarity(*grads, dim=0).item()
    print(f'bf16 vs fp32 gradient cosine: {cos:.4f}')
    assert 0.95 < cos < 1.0                     # close (measured 0.969 on CPU), and bf16 really ran


def test_compiled_step_matches_eager_on_cpu():
    """4. compile_mode: torch.compile's default mode (the CPU's compiled path; CUDA graphs need a GPU) trains the same
    steps as eager: the same PGD examples and losses over three steps, to fp32 rounding."""
    from advdpnp.benchmark import compare_compiled, synthetic_data
    cfg = RunConfig(method='pgd_at', width=4, batch_size=8, attack_steps=2)
    r = compare_compiled(cfg, synthetic_data(48, (1, 8, 8)), 'cpu', mode='default', steps=3)
    assert r['agree'], r
    assert all(s['loss_rel_diff'] < 1e-4 and s['example_diff_eps'] < 1e-3 for s in r['steps']), r['steps']


def test_compile_mode_really_compiles_the_backbone():
    """4b. compile_mode='default' is not a silent no-op: a forward hook inside the backbone runs under torch.compile
    (`torch.compiler.is_compiling()`) only then, so the agreement above compares two paths, not eager with itself."""
    seen = []
    for mode in ('off', 'default'):
        cfg = RunConfig(method='pgd_at', width=4, compile_mode=mode)
        torch.manual_seed(0)
        model = build_model(cfg, (1, 8, 8), 10)
        inner = list(model.backbone.modules())[-1]        # the backbone's last layer: inside the compiled region
        inner.register_forward_hook(lambda m, i, o, mode=mode: seen.append((mode, torch.compiler.is_compiling())))
        prepare_model(model, cfg)(torch.rand(4, 1, 8, 8))
    assert seen == [('off', False), ('default', True)], seen
