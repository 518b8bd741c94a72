"nbs/paper.ipynb at micro scale through papermill: every artifact is produced, agrees with the run folders, and a re-run skips every run."
import json
import math

import pandas as pd
import papermill
import pytest

from conftest import ROOT, write_tiny_imagefolder
from advdpnp.runs import RunFolder

EXPECTED = {  # artifact -> extensions
    'results_imagefolder': ('csv', 'md', 'tex'), 'published_cifar10': ('csv', 'md', 'tex'),
    'cifar10c': ('csv', 'md', 'tex'), 'cifar10c_severity': ('png', 'pdf'),
    'features': ('csv', 'md', 'tex'), 'prototype_angles': ('csv', 'md', 'tex'), 'prototype_angles_heatmap': ('png', 'pdf'),
    'tsne': ('png', 'pdf'), 'ablation': ('csv', 'md', 'tex'), 'sensitivity': ('csv', 'md', 'tex'),
    'sensitivity_curves': ('png', 'pdf'), 'training_curves': ('png', 'pdf'),
    'cifar10c_per_corruption': ('png', 'pdf'), 'leaderboard': ('csv', 'md', 'tex'),
    'robust_vs_eps': ('png', 'pdf'), 'soundness': ('csv', 'md', 'tex'), 'claims': ('csv', 'md', 'tex'), 'run_times': ('csv', 'md', 'tex'),
}
METHODS = ['ce', 'dpnp', 'adv_dpnp', 'pgd_at', 'trades', 'mart']
pytestmark = pytest.mark.slow   # the micro grid trains and evaluates 12 runs: about 3 minutes on 2 cores (make test-slow)


def run_paper(tmp, out_name):
    papermill.execute_notebook(str(ROOT / 'nbs' / 'paper.ipynb'), str(tmp / out_name), cwd=str(ROOT), progress_bar=False,
                               kernel_name='python3',
                               parameters=dict(scale='micro', cifar_dir=str(tmp / 'folder'), out_dir=str(tmp / 'runs'),
                                               figures_dir=str(tmp / 'figures')))


@pytest.fixture(scope='module')
def micro(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('paper')
    write_tiny_imagefolder(tmp / 'folder', classes=tuple('abcdefghij'), per_class=3, size=32)  # 10 classes for AutoAttack
    run_paper(tmp, 'paper.ipynb')
    return tmp


def read(path): return json.loads(path.read_text())


def evaluation_files(runs):
    "The evaluation files of every run folder under `runs` (AutoAttack's state files beside them left out)."
    return [p for p in runs.glob(f'*/{RunFolder.EVALUATIONS}/*.json') if not p.name.startswith(RunFolder.AA_STATE)]


def evaluation(run_dir):
    "The one evaluation the grid made of a run."
    (path,) = [p for p in evaluation_files(run_dir.parent) if p.parent.parent == run_dir]
    return read(path)


def test_every_artifact_is_written_and_listed(micro):
    figures = micro / 'figures'
    manifest = read(figures / 'manifest.json')
    assert manifest['scale'] == 'micro' and set(manifest['artifacts']) == set(EXPECTED)
    assert manifest['parameters']['command'] == 'papermill nbs/paper.ipynb out.ipynb -p scale micro'   # what selected these runs
    for stem, exts in EXPECTED.items():
        assert sorted(manifest['artifacts'][stem]['files']) == sorted(f'{stem}.{e}' for e in exts)
        for e in exts: assert (figures / f'{stem}.{e}').stat().st_size > 0, f'{stem}.{e}'
        for run in manifest['artifacts'][stem]['runs']: assert run in manifest['runs'] and (micro / 'runs' / run).is_dir()
    md = (figures / 'results_imagefolder.md').read_text()
    assert 'micro scale' in md and "not the paper's" in md and 'NOT advdpnp results' in md   # published numbers apart


def test_tables_agree_with_the_run_folders(micro):
    figures, runs = micro / 'figures', micro / 'runs'
    results = pd.read_csv(figures / 'results_imagefolder.csv', index_col='method')
    assert list(results.index) == METHODS
    for m in METHODS:
        ev = evaluation(runs / f'imagefolder-{m}-s0')
        for key, col in (('clean', 'clean'), ('pgd', 'PGD-20'), ('cw', 'C&W-inf'), ('autoattack', 'AutoAttack')):
            assert math.isclose(results.loc[m, col], 100 * ev['accuracy'][key], abs_tol=1e-9), (m, col)
        assert math.isclose(results.loc[m, 'worst case'], 100 * ev['worst_case'], abs_tol=1e-9)
        assert results.loc[m, 'worst case'] <= results.loc[m, ['clean', 'FGSM', 'PGD-20', 'C&W-inf', 'AutoAttack']].min()
    corr = pd.read_csv(figures / 'cifar10c.csv', index_col='method')
    for m in METHODS:
        c = read(runs / f'imagefolder-{m}-s0' / 'corruptions.json')
        assert math.isclose(corr.loc[m, 'mean'], 100 * c['mean_accuracy'], abs_tol=1e-9)
    feats = pd.read_csv(figures / 'features.csv')
    assert len(feats) == 2 * len(METHODS) and (feats['seeds'] == 1).all()   # mean over seeds: one seed here
    f = read(runs / 'imagefolder-adv_dpnp-s0' / 'features.json')
    row = feats[(feats.method == 'adv_dpnp') & (feats.input == 'clean')].iloc[0]
    assert math.isclose(row['intra_inter_ratio'], f['metrics']['clean']['intra_inter_ratio'], rel_tol=1e-9)
    abl = pd.read_csv(figures / 'ablation.csv', index_col='variant')
    assert list(abl.index) == ['full', 'no_consistency', 'single_branch']
    ev = evaluation(runs / 'digits-adv_dpnp-single_branch-s0')
    assert math.isclose(abl.loc['single_branch', 'AutoAttack'], 100 * ev['accuracy']['autoattack'], abs_tol=1e-9)
    sens = pd.read_csv(figures / 'sensitivity.csv')
    assert len(sens) == 8 and set(sens['param']) == {'lambda_pa', 'lambda_nr', 'beta', 'alpha'}
    assert "('" not in (figures / 'sensitivity.md').read_text()  # param and value are columns, not a tuple index
    for _, r in sens.iterrows():
        m = read(runs / r['run'] / 'metrics.json')
        assert math.isclose(r['clean'], 100 * m['clean_acc'], abs_tol=1e-9) and r['n_test'] == m['n_test']
        assert read(runs / r['run'] / 'config.json')['alpha'] == (r['value'] if r['param'] == 'alpha' else 5.0)
    own = sens['run'] != 'digits-adv_dpnp-full-s0'   # every sweep point is evaluated: paired against the defaults, blank for them
    assert sens.loc[own, 'Δ AutoAttack (evaluation)'].notna().all() and sens.loc[~own, 'Δ AutoAttack (evaluation)'].isna().all()
    board = pd.read_csv(figures / 'leaderboard.csv')
    evaluated = {p.parent.parent.name for p in evaluation_files(runs)}   # six methods, three ablations, three sweep points of their own
    assert len(board) == len(evaluated) == 6 + 3 + 3 and set(board['run']) == evaluated
    for _, part in board.groupby('dataset'):   # sorted by AutoAttack within a dataset
        assert list(part['AutoAttack']) == sorted(part['AutoAttack'], reverse=True)
    assert set(board['dataset']) == {'CIFAR-10, JPEG copy', 'digits (scikit-learn, 8x8)'}
    times = pd.read_csv(figures / 'run_times.csv', index_col='run')
    assert set(times.index) == {p.parent.name for p in runs.glob('*/metrics.json')}
    m = read(runs / 'imagefolder-adv_dpnp-s0' / 'metrics.json')
    assert math.isclose(times.loc['imagefolder-adv_dpnp-s0', 'training'], m['train_seconds'] / 60, rel_tol=1e-9)
    claims = pd.read_csv(figures / 'claims.csv')
    overall = claims[claims['comparison'] == 'overall']
    assert len(overall) == 4 and set(claims['verdict']) <= {'supported', 'not supported', 'not resolvable at this scale'}
    clean = claims[(claims['comparison'] == 'adv_dpnp vs pgd_at') & (claims['statistic'] == 'clean accuracy (%)')].iloc[0]
    assert math.isclose(clean['difference'], results.loc['adv_dpnp', 'clean'] - results.loc['pgd_at', 'clean'], abs_tol=1e-9)
    assert clean['low'] <= clean['difference'] <= clean['high']


def test_a_second_pass_skips_every_run(micro):
    stamps = {p: p.stat().st_mtime_ns for p in (micro / 'runs').glob('*/metrics.json')}
    evals = {p: p.stat().st_mtime_ns for p in evaluation_files(micro / 'runs')}
    assert len(stamps) == 12 and len(evals) == 12   # six methods, three ablations, three sweep points of their own: all evaluated
    run_paper(micro, 'paper-again.ipynb')
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p: p.stat().st_mtime_ns for p in evals} == evals
