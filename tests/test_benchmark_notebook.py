"nbs/benchmark.ipynb at a tiny size through papermill: the table, the bound and the files."
import json

import pandas as pd
import papermill

from conftest import ROOT


def test_benchmark_notebook_writes_table_and_summary(tmp_path):
    papermill.execute_notebook(str(ROOT / 'nbs' / 'benchmark.ipynb'), str(tmp_path / 'bench.ipynb'), cwd=str(ROOT),
                               progress_bar=False, kernel_name='python3',
                               parameters=dict(device='cpu', arch='small_cnn', width=4, batch_size=16, k=2, steps=1, warmup=1,
                                               rounds=2, n_images=64, out_dir=str(tmp_path / 'bench'), tag='test'))
    table = pd.read_csv(tmp_path / 'bench' / 'test' / 'benchmark.csv')
    configs = sorted((m, p) for m in ('ce', 'pgd_at', 'adv_dpnp') for p in ('fast', 'plain'))
    assert sorted(zip(table['round'], table.method, table.path)) == sorted((r, *c) for r in (0, 1) for c in configs)   # every configuration in every round
    assert (table.step_s > 0).all() and (table.img_per_s - 16 / table.step_s).abs().max() < 1e-6
    assert set(table[table.method != 'ce'].k) == {2} and set(table[table.method == 'ce'].k) == {0}
    result = json.loads((tmp_path / 'bench' / 'test' / 'benchmark.json').read_text())
    s = result['summary']
    assert abs(s['bound_(k+2)/(k+1)'] - 4 / 3) < 1e-12
    fast = table[table.path == 'fast'].pivot(index='round', columns='method', values='step_s')
    per_round = fast['adv_dpnp'] / fast['pgd_at']                                # a ratio within each round
    assert abs(s['adv_dpnp/pgd_at'] - per_round.median()) < 1e-9
    assert max(abs(a - b) for a, b in zip(s['adv_dpnp/pgd_at_range'], [per_round.min(), per_round.max()])) < 1e-9
    assert s['rounds'] == result['rounds'] == 2 and '-p rounds 2' in result['command']
    assert s['flops_adv_dpnp/pgd_at'] > 1                                      # Adv-DPNP's update has more passes
    assert result['machine']['device'] == 'cpu' and 'papermill nbs/benchmark.ipynb' in result['command']
