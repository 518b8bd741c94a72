"""Claim 1 against the trade-off frontier in the report (09_report's `write_frontier`, the rule of 09e_frontier), and the
paired intervals of the claims, ablation and sensitivity tables, on small synthetic run folders (seconds, no training):
a frontier-only grid writes the frontier table, figure, verdict and AutoAttack check and nothing that needs main runs;
its numbers agree with the run folders' evaluations; the verdict follows the data; a grid without evaluated frontier
runs gets none of it; runs on shared test points are compared point by point."""
import json
import zlib

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use('Agg')

from advdpnp.claims import AUTOATTACK_MARGIN, NOT_SUPPORTED, SUPPORTED, UNRESOLVED  # noqa: E402
from advdpnp.config import RunConfig  # noqa: E402
from advdpnp.grid import Grid, GridRun, grid_evaluation, grid_request  # noqa: E402
from advdpnp.report import (Artifacts, frontier_records, write_ablation_and_sensitivity, write_artifacts,  # noqa: E402
                            write_claims, write_frontier)
from advdpnp.runs import RunFolder  # noqa: E402
from advdpnp.stats import standard_error  # noqa: E402

N = 600                              # test points per seed; AutoAttack on every second one
AA_POSITIONS = list(range(0, N, 2))
DESCRIPTION = 'toy scale: synthetic run folders, no training'


def easiest(p: float, score: np.ndarray) -> np.ndarray:
    "1 on the round(p n) points with the lowest score (runs with correlated scores are right on nearly the same points)."
    ok = np.zeros(len(score), dtype=int)
    ok[np.argsort(score)[:round(p * len(score))]] = 1
    return ok


def per_point(clean: float, robust: float, seed: int, name: str, rho: float = 0.8) -> dict:
    "eval.json's per-point lists of a run: exactly `clean` and `robust` (AutoAttack, on AA_POSITIONS) accuracy; PGD-20 and C&W-inf a little weaker."
    hard = np.random.default_rng(seed).standard_normal(N)                  # the seed's points: one difficulty each
    own = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(N)
    score = np.sqrt(rho) * hard + np.sqrt(1 - rho) * own
    aa = easiest(robust, score[AA_POSITIONS])
    robust_somewhere = np.zeros(N, dtype=int)
    robust_somewhere[AA_POSITIONS] = aa
    return {'clean': easiest(clean, score).tolist(), 'pgd': (easiest(robust + 0.03, score) | robust_somewhere).tolist(),
            'cw': (easiest(robust + 0.01, score) | robust_somewhere).tolist(), 'autoattack': aa.tolist(),
            'autoattack_positions': AA_POSITIONS}


def finished(grid: Grid, entry: dict, asked: dict | None = None) -> RunFolder:
    "A stand-in finished run of `entry`, added to `grid` (with the evaluation request `asked`, if any)."
    name = entry['run']
    if name not in grid.runs:
        cfg = RunConfig(out_dir=str(grid.out_dir), name=name, dataset='imagefolder', eps=8 / 255, seed=entry['seed'])
        folder = RunFolder(cfg.run_dir)
        with folder.lock():
            folder.begin(cfg, 'fresh')
            folder.finish({'model': {}}, pd.DataFrame({'epoch': [1], 'loss': [1.0], 'test_acc': [0.5]}),
                          {'n_test': N, 'train_seconds': 1.0, 'clean_acc': 0.5, 'pgd_acc': 0.2})
        grid.runs[name] = GridRun(name, {}, asked)
    grid.entries.append(entry)
    return RunFolder(grid.run_dir(name))


def evaluated(grid: Grid, entry: dict, points: dict, robust: float | None = None) -> None:
    "A stand-in finished run with the verified evaluation the grid asks of it (`points`: eval.json's per-point lists)."
    attacks = [k for k in ('pgd', 'cw', 'autoattack') if k in points]
    folder = finished(grid, entry, dict(attacks=','.join(attacks), n_eval=None, n_autoattack=None, soundness=False))
    on = points.get('autoattack_positions', list(range(len(points['clean']))))
    ok = {k: np.asarray(v, dtype=bool) for k, v in points.items() if k != 'autoattack_positions'}
    worst = np.all([ok[k] if k == 'autoattack' else ok[k][on] for k in ok], axis=0)
    accuracy = {k: float(v.mean()) for k, v in ok.items()}
    sizes = {**{k: len(v) for k, v in ok.items()}, 'worst_case': len(worst)}
    after = {} if robust is None else {'autoattack': {'per_attack': {'apgd-ce': robust + 0.01, 'apgd-t': robust, 'fab-t': robust,
                                                                      'square': robust}}}
    folder.write_evaluation({
        'request': grid_request(grid, entry['run']), 'checkpoint_sha256': folder.metrics()['checkpoint_sha256'], 'n': len(ok['clean']),
        'eps': 8 / 255, 'n_per_attack': sizes, 'accuracy': accuracy, 'worst_case': float(worst.mean()),
        'standard_errors': {k: standard_error(v, sizes[k]) for k, v in {**accuracy, 'worst_case': worst.mean()}.items()},
        'seconds': {k: 1.0 for k in ok}, 'points': {'n': len(ok['clean']), 'indices_sha256': f'points of seed {entry["seed"]}'},
        'per_point': {**points, 'worst_case': worst.astype(int).tolist()}, **after})


KNOBS = {'trades': 'trades_beta', 'pgd_at': 'eps', 'adv_dpnp': 'beta'}
BASELINES = {'trades': ((1.0, 0.60, 0.20), (6.0, 0.50, 0.30), (12.0, 0.40, 0.40)),
             'pgd_at': ((4 / 255, 0.62, 0.17), (8 / 255, 0.46, 0.36))}
MAIN = {'trades': 6.0, 'pgd_at': 8 / 255, 'adv_dpnp': 3.0}   # the main table's point of each family: three seeds


def frontier_point(grid: Grid, family: str, value: float, clean: float, robust: float, seed: int = 0) -> None:
    name = f'imagefolder-{family}-{KNOBS[family]}={value:.4g}-s{seed}'
    entry = {'group': 'frontier', 'family': family, 'param': KNOBS[family], 'value': value, 'dataset': 'imagefolder',
             'method': family, 'seed': seed, 'run': name}
    evaluated(grid, entry, per_point(clean, robust, seed, name), robust)


def frontier_grid(tmp_path, adv_clean: float = 0.60, adv_robust: float = 0.30) -> Grid:
    "TRADES and PGD-AT along their knobs, Adv-DPNP at (adv_clean, adv_robust) on three seeds and at β = 1 on one."
    grid = Grid('toy', DESCRIPTION, tmp_path / 'runs', 'imagefolder')
    for family, points in BASELINES.items():
        for value, clean, robust in points:
            for seed in ((0, 1, 2) if value == MAIN[family] else (0,)): frontier_point(grid, family, value, clean, robust, seed)
    for seed in (0, 1, 2): frontier_point(grid, 'adv_dpnp', 3.0, adv_clean + 0.01 * (seed - 1), adv_robust, seed)
    frontier_point(grid, 'adv_dpnp', 1.0, 0.63, 0.22)
    return grid


def test_a_frontier_only_grid_writes_the_frontier(tmp_path):
    grid = frontier_grid(tmp_path)
    manifest = write_artifacts(grid, tmp_path / 'figures', {'parts': ['frontier']}, root=tmp_path)
    figures = tmp_path / 'figures'
    # the frontier's four artifacts; nothing that needs main runs (results tables, training curves, claims)
    assert set(manifest) == {'published_cifar10', 'leaderboard', 'run_times', 'frontier', 'frontier_claims', 'frontier_attacks'}
    assert manifest['frontier']['files'] == [f'frontier.{e}' for e in ('csv', 'md', 'tex', 'png', 'pdf')]
    for stem in ('frontier', 'frontier_claims', 'frontier_attacks'):
        for f in manifest[stem]['files']: assert (figures / f).stat().st_size > 0, f
    assert set(manifest['frontier']['runs']) == set(grid.runs)
    assert json.loads((figures / 'manifest.json').read_text())['artifacts']['frontier']['files'] == manifest['frontier']['files']

    # the table agrees with the run folders: Adv-DPNP's main point is the mean of its three seeds' evaluations
    table = pd.read_csv(figures / 'frontier.csv')
    assert len(table) == 7 and list(table.columns[:3]) == ['family', 'knob', 'seeds']
    main = table[(table['family'] == 'adv_dpnp') & (table['knob'] == 'β = 3')].iloc[0]
    runs = [e['run'] for e in grid.entries if e['family'] == 'adv_dpnp' and e['value'] == 3.0]
    for col, key in (('clean', 'clean'), ('PGD-20', 'pgd'), ('AutoAttack', 'autoattack')):
        assert main[col] == pytest.approx(np.mean([100 * grid_evaluation(grid, r)['accuracy'][key] for r in runs]))
    assert (main['seeds'], main['n clean'], main['n AutoAttack']) == ('0, 1, 2', N, N // 2)
    assert main['clean seed SD'] == pytest.approx(1.0)
    assert set(table.loc[table['family'] == 'pgd_at', 'knob']) == {'training ε = 4/255', 'training ε = 8/255'}
    md = (figures / 'frontier.md').read_text()
    assert 'toy scale' in md and 'eps 8/255' in md and '±' in md

    # the verdict: 10 points above TRADES' line and 9 above PGD-AT's at AutoAttack 30 %; supported against both
    claims = pd.read_csv(figures / 'frontier_claims.csv')
    deciding = claims[claims['decides'] == 'yes'].set_index('family')
    assert list(deciding.index) == ['trades', 'pgd_at'] and (deciding['verdict'] == SUPPORTED).all()
    assert deciding.loc['trades', 'difference'] == pytest.approx(10.0)
    assert (deciding['low'] > 0).all() and (deciding['high'] - deciding['low'] < deciding['unpaired high'] - deciding['unpaired low']).all()
    assert claims['verdict'].iloc[-1] == SUPPORTED and claims['family'].iloc[-1] == 'overall'
    assert set(claims.loc[claims['decides'].str.startswith('no', na=False), 'point']) == {'Adv-DPNP β = 1'}
    assert 'MART' in (figures / 'frontier_claims.md').read_text() and 'paired bootstrap' in (figures / 'frontier_claims.md').read_text()

    # AutoAttack against its parts: at most PGD-20 and C&W-inf on every run, APGD-T beside them
    attacks = pd.read_csv(figures / 'frontier_attacks.csv')
    assert len(attacks) == len(grid.runs) and set(attacks['check']) == {'ok'}
    assert (attacks['AutoAttack'] <= attacks[['PGD-20 (same points)', 'C&W-inf (same points)']].min(axis=1)).all()
    assert attacks['after APGD-T (DLR)'].notna().all() and (attacks['n'] == N // 2).all()


@pytest.mark.parametrize('adv_clean, adv_robust, verdict', [(0.40, 0.30, NOT_SUPPORTED), (0.45, 0.50, UNRESOLVED)])
def test_the_verdict_follows_the_data(tmp_path, adv_clean, adv_robust, verdict):
    "Below both frontiers: not supported; more robust than any baseline point: not resolvable (no extrapolation)."
    out = Artifacts(tmp_path / 'figures', frontier_grid(tmp_path, adv_clean, adv_robust))
    write_frontier(out, draws=300)
    claims = pd.read_csv(tmp_path / 'figures' / 'frontier_claims.csv')
    assert set(claims.loc[claims['decides'] == 'yes', 'verdict']) == {verdict} and claims['verdict'].iloc[-1] == verdict
    if verdict == UNRESOLVED: assert claims.loc[claims['decides'] == 'yes', 'difference'].isna().all()


def test_no_evaluated_frontier_runs_no_frontier(tmp_path):
    grid = Grid('toy', DESCRIPTION, tmp_path / 'runs', 'imagefolder')
    finished(grid, {'group': 'frontier', 'family': 'trades', 'param': 'trades_beta', 'value': 1.0, 'dataset': 'imagefolder',
                    'method': 'trades', 'seed': 0, 'run': 'not-evaluated'})
    assert frontier_records(grid) == []
    out = Artifacts(tmp_path / 'figures', grid)
    write_frontier(out)
    assert out.manifest == {} and not (tmp_path / 'figures').exists()


def ablation_grid(tmp_path) -> Grid:
    "Three ablation variants on one seed's points, a sweep point equal to one of them (evaluated) and one of its own (not)."
    grid = Grid('toy', DESCRIPTION, tmp_path / 'runs', 'imagefolder')
    for variant, clean, robust in (('full', 0.50, 0.30), ('no_consistency', 0.56, 0.24), ('single_branch', 0.50, 0.30)):
        entry = {'group': 'ablation', 'variant': variant, 'dataset': 'imagefolder', 'method': 'adv_dpnp', 'seed': 0,
                 'run': f'digits-adv_dpnp-{variant}-s0'}
        evaluated(grid, entry, per_point(clean, robust, 0, variant if variant != 'single_branch' else 'full'))   # single_branch: full's results
    for param, value, run in (('beta', 0.0, 'digits-adv_dpnp-no_consistency-s0'), ('beta', 3.0, 'digits-adv_dpnp-full-s0'),
                              ('alpha', 1.0, 'digits-adv_dpnp-alpha=1.0-s0')):
        finished(grid, {'group': 'sweep', 'param': param, 'value': value, 'dataset': 'imagefolder', 'method': 'adv_dpnp',
                        'seed': 0, 'run': run})
    return grid


def test_ablation_and_sensitivity_pair_runs_on_shared_points(tmp_path):
    from advdpnp.report import collect_results
    grid = ablation_grid(tmp_path)
    out = Artifacts(tmp_path / 'figures', grid)
    write_ablation_and_sensitivity(out, collect_results(grid))
    abl = pd.read_csv(tmp_path / 'figures' / 'ablation.csv', index_col='variant')
    assert abl.loc['no_consistency', 'Δ clean'] == pytest.approx(6.0) and abl.loc['no_consistency', 'Δ AutoAttack'] == pytest.approx(-6.0)
    assert abl.loc['single_branch', ['Δ clean', 'Δ clean SE']].tolist() == [0.0, 0.0]    # the same results point by point
    assert abl.loc['full', ['Δ clean', 'Δ PGD-20']].isna().all()
    # paired: the SE counts only the points where the two disagree, far below the unpaired sqrt(SE_a² + SE_b²)
    assert abl.loc['no_consistency', 'Δ clean SE'] < 0.7 * np.hypot(abl.loc['full', 'clean SE'], abl.loc['no_consistency', 'clean SE'])
    assert 'paired SE' in (tmp_path / 'figures' / 'ablation.md').read_text()
    sens = pd.read_csv(tmp_path / 'figures' / 'sensitivity.csv').set_index(['param', 'value'])
    assert sens.loc[('beta', 0.0), 'Δ clean (evaluation)'] == pytest.approx(6.0)                      # the no_consistency run
    assert sens.loc[('beta', 0.0), 'Δ AutoAttack (evaluation)'] == pytest.approx(-6.0)
    assert sens.loc[[('beta', 3.0), ('alpha', 1.0)], 'Δ clean (evaluation)'].isna().all()           # the default; no evaluation
    assert 'cannot be paired' in (tmp_path / 'figures' / 'sensitivity.md').read_text()


def claims_of_toy_grid(tmp_path, scale: str = 'toy') -> pd.DataFrame:
    "claims.csv of a grid at `scale` whose Adv-DPNP is 3 points more accurate on clean inputs than every defence and as robust (seeds 0, 1 of it and PGD-AT, 0 of TRADES and MART)."
    grid = Grid(scale, DESCRIPTION, tmp_path / 'runs', 'imagefolder')
    for method, clean, seeds in (('adv_dpnp', 0.53, (0, 1)), ('pgd_at', 0.50, (0, 1)), ('trades', 0.50, (0,)), ('mart', 0.50, (0,))):
        for seed in seeds:
            name = f'imagefolder-{method}-s{seed}'
            entry = {'group': 'main', 'dataset': 'imagefolder', 'method': method, 'seed': seed, 'run': name}
            evaluated(grid, entry, per_point(clean, 0.25, seed, name, rho=0.9))
    write_claims(Artifacts(tmp_path / 'figures', grid), draws=1000)
    return pd.read_csv(tmp_path / 'figures' / 'claims.csv')


def test_claims_pair_methods_on_shared_seeds(tmp_path):
    "Adv-DPNP 3 points more accurate on clean inputs and as robust: paired on the seeds they share, the clean comparison is decided."
    claims = claims_of_toy_grid(tmp_path)
    one = claims[claims['claim'].str.startswith('1')].set_index(['comparison', 'statistic'])
    clean = one.loc[('adv_dpnp vs pgd_at', 'clean accuracy (%)')]
    assert clean['interval'] == 'paired, 2 shared seed(s)' and clean['difference'] == pytest.approx(3.0)
    assert clean['unpaired low'] < 0 < clean['low'] and clean['high'] < clean['unpaired high']
    # unpaired, the same 3 points were inside the noise; AutoAttack's 300 points cannot show it within the margin
    robust = one.loc[('adv_dpnp vs pgd_at', f'AutoAttack accuracy (%), margin {AUTOATTACK_MARGIN:g} points')]
    assert robust['low'] < -AUTOATTACK_MARGIN < 0 < robust['high'] and clean['verdict'] == robust['verdict'] == UNRESOLVED
    # TRADES ran seed 0 only: Adv-DPNP's seed 1 has other points, so pairing narrows the interval less there
    trades = one.loc[('adv_dpnp vs trades', 'clean accuracy (%)')]
    assert trades['interval'] == 'paired, 1 shared seed(s)'
    assert clean['high'] - clean['low'] < trades['high'] - trades['low'] < trades['unpaired high'] - trades['unpaired low']
    assert 'paired' in (tmp_path / 'figures' / 'claims.md').read_text()
    assert f'AutoAttack comparable within {AUTOATTACK_MARGIN:g} points' in (tmp_path / 'figures' / 'claims.md').read_text()


def test_cpu_claims_keep_the_rule_their_results_were_read_under(tmp_path):
    "At CPU scale claim 1 has no AutoAttack margin (the rule fixed before the committed CPU results): its rows and title are those of that rule."
    claims = claims_of_toy_grid(tmp_path, 'cpu')
    stats = set(claims.loc[claims['claim'].str.startswith('1') & (claims['comparison'] != 'overall'), 'statistic'])
    assert stats == {'clean accuracy (%)', 'AutoAttack accuracy (%)'}
    assert 'margin' not in (tmp_path / 'figures' / 'claims.md').read_text()
    # without a margin the interval that reaches 0 grants comparable robustness: the clean gain decides
    one = claims[claims['claim'].str.startswith('1')].set_index(['comparison', 'statistic'])
    assert one.loc[('adv_dpnp vs pgd_at', 'AutoAttack accuracy (%)'), 'high'] > 0
    assert one.loc[('adv_dpnp vs pgd_at', 'clean accuracy (%)'), 'verdict'] == SUPPORTED
