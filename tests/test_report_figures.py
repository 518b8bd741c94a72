"""The report's figures and leaderboard on small synthetic run folders (seconds, no training): the scale's watermark
never covers a tick label, the training curves carry the whole scale description, one legend outside the panels and
each panel's n; the frontier's labels cover no other label; the leaderboard lists evaluation folders of models trained elsewhere beside the grid's runs."""
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from advdpnp.config import RunConfig  # noqa: E402
from advdpnp.evaluate import evaluate_foreign, model_card  # noqa: E402
from advdpnp.frontier import plot_frontier  # noqa: E402
from advdpnp.grid import Grid, GridRun, grid_request  # noqa: E402
from advdpnp.report import (Artifacts, foreign_card, foreign_folders, leaderboard, plot_corruption_bars,  # noqa: E402
                            plot_training_curves, watermark, write_leaderboard)
from advdpnp.runs import RunFolder  # noqa: E402
from conftest import ROOT  # noqa: E402

CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur', 'snow',
               'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression')
METHODS = ('ce', 'adv_dpnp', 'pgd_at')
DESCRIPTION = ('toy scale: a description longer than one line of the figure, as the CPU grid\'s is (PreAct ResNet-18 width 16, '
               '10,000 class-balanced training images, 10 epochs of PGD-5 training at eps 8/255, the study\'s recipe; white-box '
               'attacks and corruptions on 1,000 test images), which the old title cut off at 120 characters: END')


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_watermark_is_below_every_tick_label():
    rng = np.random.default_rng(0)
    long = pd.DataFrame([{'method': m, 'seed': 0, 'corruption': c, 'severity': s, 'n': 100, 'accuracy': rng.uniform(10, 60)}
                         for m in METHODS for c in CORRUPTIONS for s in range(1, 6)])
    fig = plot_corruption_bars(long, 'CIFAR-10, JPEG copy, generated corruptions, n = 100 per pair')
    watermark(fig, 'toy scale - advdpnp numbers')
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    mark = fig.texts[-1].get_window_extent(renderer)
    (ax,) = fig.axes
    labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert len(labels) > len(CORRUPTIONS)
    assert not any(boxes_overlap(mark, b) for b in labels)
    assert mark.y1 <= min(b.y0 for b in labels)                                        # below all of them
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1   # beside the bars
    plt.close(fig)


def finished_run(grid: Grid, name: str, method: str, seed: int, epoch_points=200, n_test=60, epochs=4) -> RunFolder:
    "A stand-in finished run folder: history.csv and metrics.json as the trainer writes them (epoch_attack included)."
    cfg = RunConfig(out_dir=str(grid.out_dir), name=name, dataset='imagefolder', eps=8 / 255)
    folder = RunFolder(cfg.run_dir)
    rng = np.random.default_rng(seed)
    history = pd.DataFrame({'epoch': range(1, epochs + 1), 'loss': np.linspace(2.0, 1.0, epochs),
                            'test_acc': np.linspace(0.2, 0.6, epochs) + rng.uniform(0, 0.05, epochs),
                            'test_pgd_acc': np.linspace(0.1, 0.3, epochs), 'lr': 0.1, 'seconds': 1.0})
    attack = {'epoch_attack': {'name': 'pgd', 'norm': 'Linf', 'eps': 8 / 255, 'steps': 10, 'step': 2 / 255, 'points': epoch_points}}
    with folder.lock():
        folder.begin(cfg, 'fresh')
        folder.finish({'model': {}}, history, {'n_test': n_test, 'train_seconds': 60.0, 'clean_acc': 0.6, 'test_pgd_acc': 0.3,
                                               **(attack if epoch_points else {})})
    grid.runs[name] = GridRun(name, {})
    grid.entries.append({'group': 'main', 'dataset': 'imagefolder', 'method': method, 'seed': seed, 'run': name})
    return folder


def test_training_curves_title_legend_and_n(tmp_path):
    grid = Grid('toy', DESCRIPTION, tmp_path / 'runs', 'imagefolder')
    for m in METHODS:
        for seed in (0, 1): finished_run(grid, f'imagefolder-{m}-s{seed}', m, seed)
    fig = plot_training_curves(grid)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_text()
    assert 'END' in title and '…' not in title and title.replace('\n', ' ').startswith(DESCRIPTION)   # the whole description
    assert fig._suptitle.get_window_extent(renderer).x1 <= fig.bbox.x1 + 1                            # wrapped to the figure
    clean, pgd, objective = fig.axes
    assert 'n = 60 test points' in clean.get_title() and 'n = 200 class-balanced' in pgd.get_title()
    assert 'eps 8/255, step 2/255' in pgd.get_title()
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1           # one legend ...
    legend = fig.legends[0].get_window_extent(renderer)
    assert all(not boxes_overlap(legend, ax.get_window_extent(renderer)) for ax in fig.axes)    # ... over no panel
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(METHODS)
    out = Artifacts(tmp_path / 'figures', grid)
    out.figure(fig, 'training_curves', 'Training curves')
    assert (tmp_path / 'figures' / 'training_curves.png').stat().st_size > 0


def test_training_curves_of_runs_without_epoch_attack(tmp_path):
    grid = Grid('toy', 'toy', tmp_path / 'runs', 'imagefolder')
    finished_run(grid, 'old-run', 'ce', 0, epoch_points=0)   # recorded before metrics.json had epoch_attack
    fig = plot_training_curves(grid)
    assert 'n not recorded' in fig.axes[1].get_title()
    plt.close(fig)


def evaluated_run(grid: Grid, name: str) -> None:
    "A finished grid run with the evaluation the grid asks of it (AutoAttack on 4 points), its model card included."
    folder = finished_run(grid, name, 'adv_dpnp', 0)
    asked = dict(attacks='autoattack', n_eval=None, n_autoattack=None, soundness=False)
    grid.runs[name] = GridRun(name, {}, asked)
    result = {'request': grid_request(grid, name), 'checkpoint_sha256': folder.metrics()['checkpoint_sha256'], 'n': 4,
              'n_per_attack': {'clean': 4, 'autoattack': 4, 'worst_case': 4}, 'accuracy': {'clean': 0.75, 'autoattack': 0.5},
              'worst_case': 0.5, 'standard_errors': {'clean': 0.2165, 'autoattack': 0.25, 'worst_case': 0.25},
              'per_point': {'clean': [1, 1, 1, 0], 'autoattack': [1, 1, 0, 0], 'worst_case': [1, 1, 0, 0]}}
    folder.write_evaluation({**result, 'model_card': model_card(folder.config(), result)})


@pytest.fixture
def theirs(tmp_path):
    "(spec, checkpoint) of a small network 'trained elsewhere' (random weights) for digits."
    (tmp_path / 'theirs.py').write_text('import torch.nn as nn\n'
                                        'def net(): return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n')
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    torch.save(network.state_dict(), tmp_path / 'theirs.pt')
    return f'{tmp_path}/theirs.py:net', tmp_path / 'theirs.pt'


def test_leaderboard_lists_models_trained_elsewhere(tmp_path, theirs):
    grid = Grid('toy', 'toy', tmp_path / 'runs', 'imagefolder')
    evaluated_run(grid, 'imagefolder-adv_dpnp-s0')
    spec, checkpoint = theirs
    ask = dict(dataset='digits', n_test=60, soundness=False, progress=False)
    evaluate_foreign(spec, checkpoint, name='eval-in-grid', out_dir=grid.out_dir, attacks=('pgd',), **ask)   # found in out_dir
    evaluate_foreign(spec, checkpoint, name='eval-elsewhere', out_dir=tmp_path / 'other', attacks=('pgd',), **ask)
    more = evaluate_foreign(spec, checkpoint, name='eval-elsewhere', out_dir=tmp_path / 'other', attacks=('fgsm',), n_eval=20, **ask)
    elsewhere = tmp_path / 'other' / 'eval-elsewhere'
    assert len(RunFolder(elsewhere).evaluations()) == 2 and more['n'] == 20
    assert foreign_card(elsewhere)['n_eval'] == 60               # the evaluation on the most points, not the newest

    board = leaderboard(grid, foreign=[elsewhere])
    assert list(board['run']) == ['imagefolder-adv_dpnp-s0', 'eval-in-grid', 'eval-elsewhere']   # equal: out_dir's first
    assert list(board['trained']) == ['this grid', 'elsewhere', 'elsewhere']
    assert list(board['dataset']) == ['CIFAR-10, JPEG copy', 'digits (scikit-learn, 8x8)', 'digits (scikit-learn, 8x8)']
    assert list(board['eps']) == ['8/255', '0.2', '0.2']
    assert board.loc[0, 'AutoAttack'] == 50.0 and board.loc[0, 'n_autoattack'] == 4 and pd.isna(board.loc[1, 'AutoAttack'])
    assert leaderboard(grid, foreign=[elsewhere, elsewhere]).shape == board.shape                 # each folder once
    with pytest.raises(FileNotFoundError, match='has no model.json'): leaderboard(grid, foreign=[tmp_path / 'other'])

    out = Artifacts(tmp_path / 'figures', grid)
    write_leaderboard(out, foreign=[elsewhere])
    out.write_manifest({}, root=tmp_path)
    manifest = json.loads((tmp_path / 'figures' / 'manifest.json').read_text())
    assert manifest['artifacts']['leaderboard']['runs'] == ['imagefolder-adv_dpnp-s0']   # the grid's runs, as for every artifact
    assert manifest['artifacts']['leaderboard']['foreign'] == ['eval-in-grid', 'eval-elsewhere']
    assert manifest['foreign']['eval-elsewhere']['path'] == 'other/eval-elsewhere'       # relative to root
    assert manifest['foreign']['eval-elsewhere']['checkpoint_sha256'] == more['checkpoint_sha256']
    md = (tmp_path / 'figures' / 'leaderboard.md').read_text()
    assert 'eval-elsewhere' in md and 'elsewhere' in md and 'this grid' in md


def test_leaderboard_without_foreign_models(tmp_path):
    grid = Grid('toy', 'toy', tmp_path / 'runs', 'imagefolder')
    evaluated_run(grid, 'imagefolder-adv_dpnp-s0')
    board = leaderboard(grid)
    assert list(board['trained']) == ['this grid'] and foreign_folders(grid) == []


EXAMPLES = {'pyautoattack-example': ROOT / 'paper_figures' / 'foreign' / 'pyautoattack-example',   # the committed copy
            'eval-pyautoattack-example': ROOT / 'runs' / 'eval-pyautoattack-example'}      # where run.py made it (not in git)


@pytest.mark.parametrize('name', EXAMPLES)
def test_the_pyautoattack_example_on_the_leaderboard(tmp_path, name):
    if not (EXAMPLES[name] / 'model.json').exists(): pytest.skip(f'{EXAMPLES[name]} is not here')
    grid = Grid('toy', 'toy', tmp_path / 'runs', 'imagefolder')
    (row,) = [r for _, r in leaderboard(grid, foreign=[EXAMPLES[name]]).iterrows()]
    assert (row['run'], row['trained'], row['dataset'], row['eps']) == (name, 'elsewhere', 'CIFAR-10, JPEG copy', '8/255')
    assert (row['n_eval'], row['n_autoattack'], row['clean'], row['AutoAttack']) == (1000, 100, 87.1, 0.0)   # the AutoAttack evaluation
    assert row['architecture'] == 'pyautoattack.examples.resnet:ResNet18'


def test_committed_frontier_figure_labels_every_point_and_no_label_covers_another():
    """The committed CPU frontier's figure, drawn again from its table (as `redraw_frontier` does): every point carries its
    knob, and no two labels overlap, although points of different families nearly coincide there (without adjustText
    three pairs of labels overlap in its AutoAttack panel)."""
    table = pd.read_csv(ROOT / 'paper_figures' / 'frontier-cpu' / 'frontier.csv', dtype={'seeds': str})
    fig = plot_frontier(table)
    fig.canvas.draw()
    for ax in fig.axes:
        boxes = [t.get_window_extent() for t in ax.texts if t.get_text()]
        assert len(boxes) == len(table), ax.get_title()
        assert [(i, j) for i in range(len(boxes)) for j in range(i) if boxes_overlap(boxes[i], boxes[j])] == [], ax.get_title()
    plt.close(fig)
