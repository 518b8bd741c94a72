"The evaluation options of advdpnp.evaluate (EvalOptions) and evaluate.ipynb: the l2 threat model, PGD/C&W steps and restarts, AutoAttack's plus and rand versions, the per-class breakdown and the kept adversarial examples."
import json
import math

import papermill
import pytest
import torch
import torch.nn as nn

from advdpnp.attacks import ThreatModel, correct_under_attack, image_norms, pgd_attack
from advdpnp.config import RunConfig, make_config
from advdpnp.data import to_float
from advdpnp.evaluate import (EvalOptions, _autoattack_state_path, evaluate_foreign, evaluate_robustness, evaluate_run, load_adversarial,
                              load_run_test_points, per_class_table, results_table)
from advdpnp.runs import RunFolder, evaluation_request
from advdpnp.train import train


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "One torch thread: AutoAttack's many small steps on a tiny model are slower on several threads of a shared machine."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A small cross-entropy model on 60 digits test points (10 classes, 6 each): some points robust at eps 0.05, most not at 0.2."
    out = tmp_path_factory.mktemp('runs')
    return train(RunConfig(method='ce', epochs=4, width=8, n_test=60, out_dir=str(out), eval_steps=2), progress=False).run_dir


@pytest.fixture(scope='module')
def points(run_dir):
    return load_run_test_points(run_dir)


def files_in(folder: RunFolder) -> set:
    evaluations = folder.file(RunFolder.EVALUATIONS)
    return {p.name for p in evaluations.iterdir()} if evaluations.exists() else set()


# -- the l2 threat model

@pytest.mark.parametrize('eps', [0.1, 0.5, 2.0, 8.0])
def test_l2_pgd_stays_in_the_l2_ball_and_in_the_unit_cube(eps):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    y = torch.randint(0, 10, (16,))
    for x in (torch.rand(16, 3, 8, 8), (torch.rand(16, 3, 8, 8) > 0.5).float(),          # inside, and on the cube's corners
              torch.rand(16, 3, 8, 8).to(memory_format=torch.channels_last)):
        for attack in (ThreatModel(eps, 10, norm='L2'), ThreatModel(eps, 10, eps, 'margin', 3, norm='L2'),
                       ThreatModel(eps, 1, eps, random_start=False, norm='L2')):
            x_adv = attack(net, x, y)
            assert (image_norms(x_adv - x) <= eps * (1 + 1e-5)).all(), attack.describe()
            assert x_adv.min() >= 0 and x_adv.max() <= 1
    big = pgd_attack(net, x, y, eps, eps / 4, 20, norm='L2')
    assert (image_norms(big - x).flatten() > 0.9 * min(eps, 1.0)).float().mean() > 0.5     # it does move, up to the sphere


def test_l2_threat_model_is_described_and_validated():
    tm = ThreatModel(0.5, 50, 0.1, 'margin', 5, norm='L2')
    assert tm.describe() == {'name': 'C&W-L2-50', 'norm': 'L2', 'eps': 0.5, 'loss': 'margin', 'steps': 50, 'step': 0.1,
                             'random_start': True, 'restarts': 5}
    assert ThreatModel(8 / 255).describe()['norm'] == 'Linf' and ThreatModel(8 / 255).name == 'PGD-20'   # l-inf unchanged
    with pytest.raises(ValueError, match=r"norm='L1'; choose one of \['Linf', 'L2'\]"): ThreatModel(0.5, norm='L1')
    with pytest.raises(ValueError, match='non-negative l2 radius'): ThreatModel(float('nan'), norm='L2')


# -- restarts

@pytest.mark.parametrize('norm, eps', [('Linf', 0.1), ('L2', 0.75)])
def test_restarts_never_raise_accuracy(points, norm, eps):
    "Per point, under one seed and one batch (so the first start is the same): more restarts never save a point."
    model, _, images, labels = points
    kwargs = dict(attacks=('pgd', 'cw'), batch_size=len(labels), progress=False, seed=3)
    one = evaluate_robustness(model, images, labels, eps, options=EvalOptions(norm=norm, pgd_steps=5, cw_steps=5), **kwargs)
    four = evaluate_robustness(model, images, labels, eps, options=EvalOptions(norm=norm, pgd_steps=5, cw_steps=5, pgd_restarts=4,
                                                                                cw_restarts=4), **kwargs)
    for attack in ('pgd', 'cw'):
        assert all(b <= a for a, b in zip(one['per_point'][attack], four['per_point'][attack])), attack
        assert four['accuracy'][attack] <= one['accuracy'][attack]
        assert four['settings'][attack]['restarts'] == 4 and one['settings'][attack]['restarts'] == 1
    assert 0 < one['accuracy']['pgd'] < 1, one['accuracy']       # the comparison means something: some points robust, some not


# -- the per-class breakdown

def test_per_class_accuracies_average_to_the_overall_ones(run_dir):
    result = evaluate_run(run_dir, ('fgsm', 'pgd', 'autoattack'), eps=0.05, n_autoattack=10, soundness=False, progress=False,
                          options={'pgd_steps': 5})
    assert set(result['per_class']) == {'clean', 'fgsm', 'pgd', 'autoattack', 'worst_case'}
    overall = {**result['accuracy'], 'worst_case': result['worst_case']}
    for attack, by_class in result['per_class'].items():
        n = sum(c['n'] for c in by_class.values())
        assert n == result['n_per_attack'][attack]
        assert math.isclose(sum(c['accuracy'] * c['n'] for c in by_class.values()) / n, overall[attack], abs_tol=1e-6), attack
        for c in by_class.values():
            assert math.isclose(c['standard_error'], math.sqrt(c['accuracy'] * (1 - c['accuracy']) / c['n']), abs_tol=1e-9)
    assert [c['n'] for c in result['per_class']['clean'].values()] == [6] * 10
    assert [c['n'] for c in result['per_class']['autoattack'].values()] == [1] * 10      # the class-balanced AutoAttack subset
    table = per_class_table(result)
    assert list(table.columns) == ['class', 'n', 'n (AutoAttack, worst case)', 'clean', 'fgsm', 'pgd', 'autoattack', 'worst case']
    assert table['n'].tolist() == [6] * 10 and table['class'].tolist() == [str(c) for c in range(10)]
    saved = RunFolder(run_dir).evaluation(result['request'])                              # recorded in the evaluation file
    assert saved['per_class'] == json.loads(json.dumps(result['per_class']))
    with pytest.raises(ValueError, match='before per-class accuracies were recorded'):
        per_class_table({k: v for k, v in result.items() if k != 'per_class'})


# -- AutoAttack's versions and norms

@pytest.mark.parametrize('version, norm, eps, attacks', [
    ('rand', 'Linf', 0.05, ['apgd-ce', 'apgd-dlr']),
    ('plus', 'Linf', 0.05, ['apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t']),
    ('standard', 'L2', 0.5, ['apgd-ce', 'apgd-t', 'fab-t', 'square'])])
def test_autoattack_versions_and_l2_run_and_are_kept_apart(run_dir, version, norm, eps, attacks):
    folder = RunFolder(run_dir)
    result = evaluate_run(run_dir, ('pgd', 'autoattack'), n_eval=6, eps=eps, soundness=False, progress=False,
                          options={'autoattack_version': version, 'norm': norm})
    assert list(result['autoattack']['per_attack']) == attacks
    assert (result['autoattack']['version'], result['autoattack']['norm']) == (version, norm)
    assert result['settings']['autoattack'] == {'version': version, 'norm': norm, 'eps': eps, 'seed': 0}
    assert 0 < result['accuracy']['autoattack'] <= result['accuracy']['clean']   # some points survive: every attack ran on them
    assert result['worst_case'] <= min(result['accuracy'].values())
    extra = {k: v for k, v in (('norm', norm), ('autoattack_version', version)) if v != getattr(EvalOptions(), k)}
    assert result['request'] == {**evaluation_request(folder.config(), ['pgd', 'autoattack'], 6, eps=eps, soundness=False), **extra}
    assert folder.evaluation(result['request'])['autoattack']['per_attack'] == result['autoattack']['per_attack']
    again = evaluate_run(run_dir, ('autoattack',), n_eval=6, eps=eps, soundness=False, progress=False,
                         options={'autoattack_version': version, 'norm': norm})
    assert again['per_point']['autoattack'] == result['per_point']['autoattack']         # resumed from its own state: nothing re-run
    assert again['autoattack']['seconds'] == result['autoattack']['seconds']
    state = _autoattack_state_path(folder, eps, version, 0, norm)                         # one state per (eps, version, seed, norm)
    assert state != folder.autoattack_state(eps, 'standard', 0) and state.name.startswith(RunFolder.AA_STATE)
    recorded = json.loads(state.read_text())
    assert (recorded['version'], recorded['norm'], recorded['attacks']) == (version, norm, attacks)


def test_autoattack_needs_its_classes_before_any_work(tmp_path):
    cfg = make_config('smoke', 'imagefolder', data_dir=str(_tiny_folder(tmp_path)), arch='small_cnn', width=4, epochs=1, batch_size=4,
                      n_train=12, n_test=6, out_dir=str(tmp_path / 'runs'))
    three = train(cfg, progress=False).run_dir
    before = files_in(RunFolder(three))
    with pytest.raises(ValueError, match=r"AutoAttack \(plus\) needs at least 10 classes .* or autoattack_version='rand'"):
        evaluate_run(three, 'autoattack', options={'autoattack_version': 'plus'})
    assert files_in(RunFolder(three)) == before
    rand = evaluate_run(three, 'autoattack', soundness=False, progress=False, options={'autoattack_version': 'rand'})   # 3 classes suffice
    assert list(rand['autoattack']['per_attack']) == ['apgd-ce', 'apgd-dlr']


def _tiny_folder(tmp_path):
    from conftest import write_tiny_imagefolder
    return write_tiny_imagefolder(tmp_path / 'folder', per_class=4, size=16)


# -- the kept adversarial examples

def test_saved_adversarial_examples_reclassify_to_the_recorded_accuracy(run_dir, points):
    folder = RunFolder(run_dir)
    for norm, eps in (('Linf', 0.05), ('L2', 0.75)):
        result = evaluate_run(run_dir, ('fgsm', 'pgd', 'cw', 'autoattack'), eps=eps, n_autoattack=10, soundness=False, progress=False,
                              options={'save_adversarial': True, 'norm': norm, 'pgd_steps': 10, 'cw_steps': 10})
        assert result['request']['save_adversarial'] is True and result['settings']['pixels'] == 'uint8'
        path = folder.evaluation_path(result['request']).with_name(result['adversarial']['file'])
        assert folder.evaluation(result['request'])['adversarial'] == result['adversarial']   # the file is named in the evaluation
        saved = load_adversarial(path)
        assert saved['checkpoint_sha256'] == result['checkpoint_sha256'] and saved['request'] == result['request']
        assert set(saved['attacks']) == {'fgsm', 'pgd', 'cw', 'autoattack'}
        aa_positions = result['per_point']['autoattack_positions']
        for attack, part in saved['attacks'].items():
            on = aa_positions if attack == 'autoattack' else list(range(60))
            assert part['images'].dtype == torch.uint8 and part['indices'].tolist() == points.indices[on].tolist()
            assert part['labels'].tolist() == points.labels[on].tolist()
            again = correct_under_attack(points.model, part['images'], part['labels'], progress=False)
            assert again.tolist() == result['per_point'][attack], (norm, attack)
            assert math.isclose(again.float().mean().item(), result['accuracy'][attack], abs_tol=1e-6)
            delta = to_float(part['images']) - to_float(points.images[on])
            gap = delta.abs().flatten(1).amax(1) if norm == 'Linf' else delta.flatten(1).norm(dim=1)
            assert (gap <= eps + 1e-6).all(), (norm, attack)
        assert 0 < result['accuracy']['pgd'] < result['accuracy']['clean'], result['accuracy']     # robust points and broken ones
    # the uint8 AutoAttack state keeps its images: a rerun attacks nothing and still writes them
    again = evaluate_run(run_dir, ('autoattack',), eps=0.75, n_autoattack=10, soundness=False, progress=False,
                         options={'save_adversarial': True, 'norm': 'L2'})
    part = load_adversarial(folder.evaluation_path(again['request']).with_name(again['adversarial']['file']))['attacks']['autoattack']
    assert correct_under_attack(points.model, part['images'], part['labels'], progress=False).tolist() == again['per_point']['autoattack']
    assert again['per_point']['autoattack'] == result['per_point']['autoattack']


def test_save_adversarial_keys_a_request_of_its_own(run_dir):
    folder = RunFolder(run_dir)
    plain = evaluate_run(run_dir, ('pgd',), n_eval=20, soundness=False, progress=False)
    kept = evaluate_run(run_dir, ('pgd',), n_eval=20, soundness=False, progress=False, options={'save_adversarial': True})
    assert 'adversarial' not in plain and plain['settings']['pixels'] == 'float'
    assert folder.evaluation_path(plain['request']) != folder.evaluation_path(kept['request'])


# -- validation, records and keys

@pytest.mark.parametrize('options, message', [
    ({'norm': 'L1'}, "norm='L1'; choose one of ['Linf', 'L2']"),
    ({'autoattack_version': 'fast'}, "autoattack_version='fast'; choose one of ['standard', 'plus', 'rand']"),
    ({'pgd_steps': 0}, 'pgd_steps=0 must be a positive integer'),
    ({'pgd_restarts': 2.5}, 'pgd_restarts=2.5 must be a positive integer'),
    ({'cw_steps': True}, 'cw_steps=True must be a positive integer'),
    ({'step': 0}, "step=0 must be a positive number (in the norm's units) or None"),
    ({'save_adversarial': 'yes'}, "save_adversarial='yes'; choose True or False"),
    ({'restarts': 3}, "unknown evaluation option(s) ['restarts']; choose from ['norm', 'step', 'pgd_steps'"),
    ({'norm': 'L2'}, "norm='L2' needs eps given in l2 units")])
def test_every_option_is_checked_before_any_work(run_dir, options, message):
    folder = RunFolder(run_dir)
    before = files_in(folder)
    with pytest.raises(ValueError) as error: evaluate_run(run_dir, ('pgd', 'autoattack'), n_eval=10, options=options)
    assert message in str(error.value)
    assert files_in(folder) == before


def test_l2_eps_is_checked_in_its_own_units(run_dir):
    with pytest.raises(ValueError, match='eps=-1.0 must be a non-negative l2 radius'):
        evaluate_run(run_dir, 'pgd', eps=-1.0, options={'norm': 'L2'})
    with pytest.raises(ValueError, match=r'eps=2 must lie in \[0, 1\]'): evaluate_run(run_dir, 'pgd', eps=2)
    wide = evaluate_run(run_dir, ('pgd',), n_eval=10, eps=3.0, soundness=False, progress=False, options={'norm': 'L2'})   # > 1 is fine in l2
    assert wide['eps'] == 3.0 and wide['settings']['pgd']['step'] == 0.75


def test_default_options_keep_the_request_keys_of_earlier_evaluations(run_dir):
    "An evaluation with the default options (given or not) has the request that evaluation_request alone makes: grids find it, nothing re-evaluates."
    folder, cfg = RunFolder(run_dir), RunFolder(run_dir).config()
    old = evaluation_request(cfg, ['fgsm', 'pgd'], 20, soundness=False)
    plain = evaluate_run(run_dir, ('fgsm', 'pgd'), n_eval=20, soundness=False, progress=False)
    spelled = evaluate_run(run_dir, ('fgsm', 'pgd'), n_eval=20, soundness=False, progress=False,
                           options=EvalOptions(norm='Linf', step=cfg.eval_step, pgd_steps=20, cw_steps=50, autoattack_version='plus'))
    assert plain['request'] == old == spelled['request']          # C&W's and AutoAttack's options do not matter without them
    assert folder.evaluation_path(old).name.startswith('fgsm+pgd-')
    assert plain['options'] == {'norm': 'Linf', 'step': cfg.eval_step, 'pgd_steps': 20, 'pgd_restarts': 1, 'cw_steps': 30,
                                'cw_restarts': 1, 'autoattack_version': 'standard', 'save_adversarial': False}
    other = evaluate_run(run_dir, ('fgsm', 'pgd'), n_eval=20, soundness=False, progress=False, options={'pgd_steps': 7, 'step': 0.01})
    assert other['request'] == {**old, 'pgd_steps': 7, 'step': 0.01} and other['settings']['pgd']['name'] == 'PGD-7'
    assert folder.evaluation(old)['per_point'] == plain['per_point']                       # not replaced by the other
    assert results_table(other)['attack'].tolist() == ['clean', 'fgsm', 'pgd', 'worst case (per point)']


def test_l2_soundness_report_uses_l2_units(run_dir):
    result = evaluate_run(run_dir, ('pgd',), n_eval=30, eps=0.75, soundness=True, progress=False, options={'norm': 'L2'})
    report = result['soundness']
    assert report['threat_model']['norm'] == 'L2' and report['threat_model']['eps'] == 0.75
    assert list(report['measurements']['by_eps']) == [0.0, 0.1875, 0.375, 0.75, 1.5]
    unbounded = next(c for c in report['checks'] if c['check'] == 'unbounded_reaches_zero')
    assert unbounded['passed'] and 'PGD-100 at eps=8:' in unbounded['detail']          # the 8x8 cube's diagonal
    assert not report['flagged'], report['verdict']


def test_a_foreign_model_is_evaluated_in_l2_beside_its_linf_evaluations(tmp_path):
    (tmp_path / 'tiny.py').write_text('import torch.nn as nn\n'
                                      'def net(): return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n')
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).state_dict(), tmp_path / 'theirs.pt')
    ask = dict(out_dir=tmp_path, n_test=40, attacks=('pgd',), soundness=False, progress=False)
    linf = evaluate_foreign(f'{tmp_path}/tiny.py:net', tmp_path / 'theirs.pt', 'digits', **ask)
    l2 = evaluate_foreign(f'{tmp_path}/tiny.py:net', tmp_path / 'theirs.pt', 'digits', eps=1.0, options={'norm': 'L2'}, **ask)
    assert (linf['eps'], l2['eps'], l2['settings']['norm'], l2['model_card']['threat_model']) == (0.2, 1.0, 'L2', 'L2')
    assert len(RunFolder(tmp_path / 'eval-theirs-digits').evaluations()) == 2
    with pytest.raises(ValueError, match="norm='L2' needs eps given in l2 units"):
        evaluate_foreign(f'{tmp_path}/tiny.py:net', tmp_path / 'theirs.pt', 'digits', options={'norm': 'L2'}, **ask)


# -- evaluate.ipynb

def evaluate_notebook(root, tmp_path, **parameters):
    papermill.execute_notebook(str(root / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'eval.ipynb'),
                               parameters=parameters, cwd=str(root), progress_bar=False, kernel_name='python3')


def test_evaluate_notebook_options(root, tmp_path, run_dir):
    evaluate_notebook(root, tmp_path, run_dir=str(run_dir), attacks='fgsm,pgd', n_eval=20, norm='L2', eps='3/4', pgd_steps=10,
                      pgd_restarts=2, save_adversarial=True, soundness=False)
    folder = RunFolder(run_dir)
    request = {**evaluation_request(folder.config(), ['fgsm', 'pgd'], 20, eps=0.75, soundness=False),
               'norm': 'L2', 'pgd_steps': 10, 'pgd_restarts': 2, 'save_adversarial': True}
    result = folder.evaluation(request)
    assert result['settings']['pgd']['name'] == 'PGD-L2-10' and result['settings']['fgsm']['name'] == 'FGM'
    assert (folder.evaluation_path(request).with_name(result['adversarial']['file'])).exists()
    executed = json.loads((tmp_path / 'eval.ipynb').read_text())
    printed = ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) for c in executed['cells']
                      if c['cell_type'] == 'code' for o in c.get('outputs', []))
    assert 'L2 eps=0.7500' in printed and 'PGD-L2-10 (step 0.1875, 2 starts)' in printed and 'worst case' in printed


def test_evaluate_notebook_refuses_a_bad_option_before_any_work(root, tmp_path, run_dir):
    before = files_in(RunFolder(run_dir))
    with pytest.raises(papermill.PapermillExecutionError) as error:
        evaluate_notebook(root, tmp_path, run_dir=str(run_dir), attacks='pgd', autoattack_version='fast')
    assert "autoattack_version='fast'; choose one of ['standard', 'plus', 'rand']" in str(error.value)
    assert files_in(RunFolder(run_dir)) == before
