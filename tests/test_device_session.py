"""The prepared device call on the CPU: `python -m advdpnp.device_session run` at the micro scale with a budget of
seconds, as the GPU machine runs it (which has no papermill, nbdev or Jupyter), then `collect`."""
import json
import subprocess
import sys
import tarfile

import pytest

from conftest import write_tiny_imagefolder

# What the GPU machine has (torch, torchvision, numpy, pandas, seaborn, scikit-learn with scipy) and what the carry
# folder brings (`make gpu-carry`): every third-party module a session imports must be one of these.
DEVICE = {'torch', 'torchvision', 'numpy', 'pandas', 'seaborn', 'matplotlib', 'sklearn', 'scipy', 'PIL', 'dateutil', 'pytz',
          'tzdata', 'packaging', 'pyparsing', 'cycler', 'kiwisolver', 'fontTools', 'contourpy', 'joblib', 'threadpoolctl',
          'filelock', 'fsspec', 'jinja2', 'markupsafe', 'networkx', 'sympy', 'mpmath', 'typing_extensions', 'six', 'triton',
          'torchgen', 'cuda', 'mpl_toolkits', 'cython_runtime',
          'defusedxml', 'charset_normalizer'}   # the last two: optional imports of torchvision's VOC dataset and numpy's f2py
CARRIED = {'pyautoattack', 'tqdm', 'fastcore'}

SESSION = """
import json, sys
from advdpnp.device_session import main
rc = main(sys.argv[1:])
top = {m.split('.')[0] for m in sys.modules}
json.dump(sorted(top), open('modules.json', 'w'))
sys.exit(rc)
"""


def test_device_session_micro(tmp_path, root):
    write_tiny_imagefolder(tmp_path / 'folder', classes=tuple(f'c{i}' for i in range(10)), per_class=4, size=8)
    run = lambda *args: subprocess.run([sys.executable, '-c', SESSION, *args], cwd=tmp_path, capture_output=True, text=True,
                                       env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin', 'OMP_NUM_THREADS': '2'})
    p = run('run', '--out', 'out', '--budget', '7200', '--scale', 'micro', '--cifar_dir', 'folder', '--runs_dir', 'runs',
            '--figures', 'figures', '--device', 'cpu', '--compile_mode', 'off', '--max_runs', '1')
    assert p.returncode == 0, p.stderr[-3000:]
    session = json.loads((tmp_path / 'out' / 'session.json').read_text())
    assert [r['done'] for r in session['runs']][:2] == ['trained+evaluated', 'skipped: max_runs=1']
    assert session['runs'][0]['run'] == 'imagefolder-pgd_at-s0'          # the priority order: PGD-AT first
    with tarfile.open(tmp_path / 'out' / 'imagefolder-pgd_at-s0.tar.gz') as t: names = {n.split('/')[-1] for n in t.getnames()}
    assert names == {'config.json', 'metrics.json', 'history.csv', 'training_curves.png', 'evaluation.json'}   # no checkpoint
    modules = set(json.loads((tmp_path / 'modules.json').read_text()))
    third_party = {m for m in modules if m not in sys.stdlib_module_names and not m.startswith('_') and m != 'advdpnp'}
    assert third_party <= DEVICE | CARRIED, third_party - DEVICE - CARRIED
    assert not {'papermill', 'nbdev', 'nbclient', 'jupyter_client', 'IPython'} & modules

    p = run('collect', 'out', '--figures', 'figures')
    assert p.returncode == 0, p.stderr[-3000:]
    results = tmp_path / 'figures' / 'micro' / session['card']['slug']
    assert (results / 'imagefolder-pgd_at-s0' / 'evaluation.json').exists() and (results / 'results.md').exists()
    again = run('run', '--out', 'out2', '--budget', '0.01', '--scale', 'micro', '--cifar_dir', 'folder', '--runs_dir', 'runs',
                '--figures', 'figures', '--device', 'cpu', '--no_benchmark')
    assert again.returncode == 0, again.stderr[-3000:]
    runs = json.loads((tmp_path / 'out2' / 'session.json').read_text())['runs']
    assert runs[0]['done'] == 'skipped: results committed'                 # filed results are never redone
    assert runs[1]['done'].startswith('skipped: estimated')                # and nothing starts that does not fit


def test_device_session_bad_budget(tmp_path, root):
    p = subprocess.run([sys.executable, '-m', 'advdpnp.device_session', 'run', '--out', 'o', '--budget', '-5'], cwd=tmp_path,
                       capture_output=True, text=True, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and '--budget -5.0: must be a positive number of seconds' in p.stderr
    assert not (tmp_path / 'o').exists()                                   # refused before anything is written


def test_device_session_collect_of_a_folder_without_a_session(tmp_path, root):
    p = subprocess.run([sys.executable, '-m', 'advdpnp.device_session', 'collect', 'typo', '--figures', 'figures'], cwd=tmp_path,
                       capture_output=True, text=True, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and 'typo/session.json does not exist' in p.stderr and 'Traceback' not in p.stderr
    assert not (tmp_path / 'figures').exists()                             # refused before anything is written


def test_device_session_refuses_an_earlier_sessions_folder(tmp_path, root):
    (tmp_path / 'out').mkdir(); (tmp_path / 'out' / 'session.json').write_text('{"an": "earlier session"}')
    p = subprocess.run([sys.executable, '-m', 'advdpnp.device_session', 'run', '--out', 'out', '--budget', '60'], cwd=tmp_path,
                       capture_output=True, text=True, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and "out holds an earlier session's files (session.json)" in p.stderr and 'Traceback' not in p.stderr
    assert (tmp_path / 'out' / 'session.json').read_text() == '{"an": "earlier session"}'   # nothing written over
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']                          # refused before anything is written


def test_device_session_collect_of_a_record_that_is_not_a_sessions(tmp_path, root):
    (tmp_path / 'back').mkdir()
    (tmp_path / 'back' / 'session.json').write_text(json.dumps({'card': {'slug': '../x'}, 'scale': 'gpu', 'started': '2026-12-03T10:00:00+00:00'}))
    p = subprocess.run([sys.executable, '-m', 'advdpnp.device_session', 'collect', 'back', '--figures', 'figures'], cwd=tmp_path,
                       capture_output=True, text=True, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and "back/session.json is not a device session's record" in p.stderr and 'Traceback' not in p.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['back']                         # nothing filed anywhere


def test_device_session_refuses_a_machine_without_cifar(tmp_path, root):
    p = subprocess.run([sys.executable, '-m', 'advdpnp.device_session', 'run', '--out', 'out', '--budget', '60',
                        '--cifar_tar', 'carry/typo.tar.gz'], cwd=tmp_path,
                       capture_output=True, text=True, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and '--cifar_tar carry/typo.tar.gz is not a file' in p.stderr and 'Traceback' not in p.stderr
    assert list(tmp_path.iterdir()) == []                                  # refused before anything is written
    from advdpnp.device_session import device_session
    with pytest.raises(FileNotFoundError, match='no CIFAR-10 here'):          # the function refuses as the command does
        device_session(tmp_path / 'out', 60, data_dir=tmp_path / 'data', cifar_dir=tmp_path / 'data' / 'copy')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('device', ['gpu', 'cuda:0'])
def test_device_session_refuses_a_device_that_is_not_here(tmp_path, root, device):
    import torch
    if device == 'cuda:0' and torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    (tmp_path / 'copy' / 'train').mkdir(parents=True); (tmp_path / 'copy' / 'test').mkdir()   # data present: only the device is wrong
    p = subprocess.run([sys.executable, '-m', 'advdpnp.device_session', 'run', '--out', 'out', '--budget', '60',
                        '--cifar_dir', 'copy', '--device', device], cwd=tmp_path,
                       capture_output=True, text=True, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and f'--device {device}: ' in p.stderr and 'Traceback' not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ['copy']                         # refused before anything is written
