"nbs/evaluate.ipynb through papermill on a small trained run, AutoAttack included."
import json

import papermill
import pytest

from advdpnp.config import make_config
from advdpnp.runs import RunFolder, evaluation_request
from advdpnp.train import train


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')
    cfg = make_config('smoke', 'digits', method='adv_dpnp', epochs=3, width=8, n_train=400, n_test=60, out_dir=str(out))
    return train(cfg, progress=False).run_dir


def evaluate(root, tmp_path, **parameters):
    papermill.execute_notebook(str(root / 'nbs' / 'evaluate.ipynb'), str(tmp_path / 'eval.ipynb'),
                               parameters=parameters, cwd=str(root), progress_bar=False, kernel_name='python3')


def test_evaluate_notebook_end_to_end(root, tmp_path, run_dir):
    evaluate(root, tmp_path, run_dir=str(run_dir), n_eval=40)
    folder = RunFolder(run_dir)
    result = folder.evaluation(evaluation_request(folder.config(), ['fgsm', 'pgd', 'cw', 'autoattack'], n_eval=40))
    assert result['n'] == 40 and result['eps'] == 0.2
    assert set(result['accuracy']) == {'clean', 'fgsm', 'pgd', 'cw', 'autoattack'}
    per_point = result['per_point']
    worst = [all(per_point[a][i] for a in result['accuracy']) for i in range(40)]
    assert per_point['worst_case'] == worst                                   # worst case is taken per point
    assert result['worst_case'] <= min(result['accuracy'].values())
    assert set(result['autoattack']['per_attack']) == {'apgd-ce', 'apgd-t', 'fab-t', 'square'}
    assert {c['check'] for c in result['soundness']['checks']} >= {'eps0_equals_clean', 'unbounded_reaches_zero', 'autoattack_flags'}
    card = result['model_card']
    assert card['autoattack_acc'] == f"{100 * result['accuracy']['autoattack']:.2f}"
    assert folder.autoattack_state(0.2, 'standard', folder.config().seed).exists()


def test_unknown_attack_fails_before_any_work(root, tmp_path, run_dir):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        evaluate(root, tmp_path, run_dir=str(run_dir), attacks='pgd,spsa')
    assert "unknown attack(s) ['spsa']" in str(error.value)


def test_corruptions_from_the_notebook(root, tmp_path):
    from conftest import write_tiny_imagefolder
    data = write_tiny_imagefolder(tmp_path / 'folder', per_class=4, size=32)
    cfg = make_config('smoke', 'imagefolder', data_dir=str(data), arch='small_cnn', width=4, epochs=1, batch_size=4,
                      n_train=12, n_test=6, out_dir=str(tmp_path / 'runs'))
    run_dir = train(cfg, progress=False).run_dir
    evaluate(root, tmp_path, run_dir=str(run_dir), attacks='pgd', soundness=False, corruptions='generated')
    result = json.loads((run_dir / 'corruptions.json').read_text())
    assert result['source'] == 'generated' and 'NOT comparable' in result['note'] and result['n'] == 6
    assert len(result['table']) == 75 and (run_dir / 'corruption_severity.png').exists()
    assert abs(result['mean_accuracy'] - sum(r['accuracy'] for r in result['table']) / 75) < 1e-9
