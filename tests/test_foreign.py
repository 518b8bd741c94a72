"""Loading models that advdpnp did not train (`advdpnp.foreign`): every bad input gets one ForeignModelError that
names the file or parameter, the cause and the fix; pyautoattack's CIFAR-10 ResNet-18 loads strictly.
Small files only (a tiny CNN in tmp_path/'net.py'); the one real model is 44 MB and loads in about a second."""
import argparse
import warnings

import pytest
import torch
import torch.nn as nn

from advdpnp.files import file_sha256
from advdpnp.foreign import (RANDOMIZED, ForeignModelError, build_architecture, load_foreign_model, load_state_dict_from,
                             pyautoattack_example)

NET_PY = '''
import torch.nn as nn
import torch.nn.functional as F

def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))

def not_a_network():
    return {'layers': 3}

class Noisy(nn.Module):
    "Dropout even in eval mode, as some randomized defences do."
    def __init__(self):
        super().__init__()
        self.net = tiny()
    def forward(self, x):
        return F.dropout(self.net(x), 0.5, training=True)
'''

SHAPE = (3, 8, 8)      # inputs of the tiny CNN: small, so every check runs in milliseconds


@pytest.fixture
def net(tmp_path):
    "The file spec prefix of tmp_path/'net.py' (tiny, not_a_network, Noisy)."
    (tmp_path / 'net.py').write_text(NET_PY)
    return f'{tmp_path / "net.py"}'


@pytest.fixture
def tiny_weights(net, tmp_path):
    "(the tiny CNN, its state dict saved as tmp_path/'tiny.pt')."
    network = build_architecture(f'{net}:tiny')
    torch.save(network.state_dict(), tmp_path / 'tiny.pt')
    return network, tmp_path / 'tiny.pt'


def refused(call, *fragments):
    "The ForeignModelError `call` raises; each fragment must be in its message."
    with pytest.raises(ForeignModelError) as caught: call()
    message = str(caught.value)
    for fragment in fragments: assert fragment in message, message
    return message


# --- the architecture spec ---------------------------------------------------------------------------------------

def test_spec_without_colon():
    refused(lambda: build_architecture('resnet18'),
            "spec='resnet18' is not an architecture spec", "'package.module:callable'", "'torchvision:<name>'")


def test_file_spec_that_does_not_exist(tmp_path):
    missing = tmp_path / 'models' / 'wrn.py'
    refused(lambda: build_architecture(f'{missing}:WideResNet'), f'the file {missing} does not exist', 'relative paths start from')


def test_module_attribute_missing(net):
    refused(lambda: build_architecture(f'{net}:tinny'), "has no attribute 'tinny'; did you mean tiny?")
    refused(lambda: build_architecture('torch.nn:Linaer'), "torch.nn has no attribute 'Linaer'; did you mean Linear")


def test_module_not_installed():
    refused(lambda: build_architecture('torch.nnn:Linear'), "there is no module 'torch.nnn'; did you mean torch.nn")


def test_torchvision_name_misspelt():
    refused(lambda: build_architecture('torchvision:resnet81'), "torchvision has no model 'resnet81'; did you mean resnet18")


def test_callable_returning_a_non_module(net):
    refused(lambda: build_architecture(f'{net}:not_a_network'), "returned a dict ({'layers': 3}), not a torch.nn.Module")


def test_wrong_kwargs(net):
    refused(lambda: build_architecture(f'{net}:tiny', {'classes': 3}), "building it with kwargs={'classes': 3} raised TypeError")


def test_specs_that_work(net):
    assert build_architecture(f'{net}:tiny', {'num_classes': 3})[-1].out_features == 3
    assert build_architecture('torchvision:resnet18', {'num_classes': 7}).fc.out_features == 7


# --- the checkpoint ----------------------------------------------------------------------------------------------

def test_checkpoint_needing_unpickling_is_refused_unless_trusted(tiny_weights, tmp_path):
    network, _ = tiny_weights
    path = tmp_path / 'with_args.pt'
    torch.save({'model': network.state_dict(), 'args': argparse.Namespace(lr=0.1)}, path)
    refused(lambda: load_state_dict_from(path), str(path), 'need arbitrary unpickling', 'argparse.Namespace',
            'pass trust=True ONLY for a file from a source you trust')
    with pytest.warns(UserWarning, match=r'weights_only=False\) because trust=True'):
        state_dict = load_state_dict_from(path, trust=True)
    assert list(state_dict) == list(network.state_dict())


def test_trusted_whole_pickled_network(net, tmp_path):
    network = build_architecture(f'{net}:Noisy')
    torch.save(network, tmp_path / 'whole.pt')        # its class lives in net.py, run under a module name of its own
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        assert list(load_state_dict_from(tmp_path / 'whole.pt', trust=True)) == list(network.state_dict())


def test_state_key_absent_lists_the_keys(tiny_weights, tmp_path):
    network, _ = tiny_weights
    torch.save({'epoch': 30, 'ema': network.state_dict()}, tmp_path / 'ckpt.pt')
    refused(lambda: load_state_dict_from(tmp_path / 'ckpt.pt', state_key='model'),
            "has no entry state_key='model'", "'epoch' (int), 'ema' (OrderedDict)")
    refused(lambda: load_state_dict_from(tmp_path / 'ckpt.pt'),
            'holds none under state_dict, model, model_state_dict, net, network', "'epoch' (int), 'ema' (OrderedDict)", 'state_key=')
    assert list(load_state_dict_from(tmp_path / 'ckpt.pt', state_key='ema')) == list(network.state_dict())


def test_checkpoint_missing_or_empty(tmp_path):
    refused(lambda: load_state_dict_from(tmp_path / 'nothing.pt'), "nothing.pt' does not exist")
    (tmp_path / 'empty.pt').write_bytes(b'')
    refused(lambda: load_state_dict_from(tmp_path / 'empty.pt'), 'is empty (0 bytes)', 'download or copy it again')


def test_state_dict_under_state_dict_with_module_prefix_works(net, tiny_weights, tmp_path):
    network, _ = tiny_weights
    torch.save({'epoch': 30, 'state_dict': nn.DataParallel(network).state_dict()}, tmp_path / 'ddp.pt')
    assert all(key.startswith('module.') for key in torch.load(tmp_path / 'ddp.pt', weights_only=True)['state_dict'])
    model, info = load_foreign_model(f'{net}:tiny', tmp_path / 'ddp.pt', input_shape=SHAPE)
    assert (info['state_key'], info['stripped_prefix']) == ('state_dict', True)
    x = torch.rand(2, *SHAPE)
    with torch.no_grad(): assert torch.equal(model(x), network(x))


# --- does the checkpoint fit the architecture? -------------------------------------------------------------------

def test_missing_and_unexpected_keys_are_named(net, tiny_weights, tmp_path):
    network, _ = tiny_weights
    tweaked = dict(network.state_dict())
    del tweaked['4.bias']
    tweaked['4.scale'] = torch.ones(1)
    tweaked['head.weight'] = torch.ones(1)
    torch.save(tweaked, tmp_path / 'tweaked.pt')
    refused(lambda: load_foreign_model(f'{net}:tiny', tmp_path / 'tweaked.pt', input_shape=SHAPE),
            f"checkpoint {tmp_path / 'tweaked.pt'} does not fit spec=", '1 missing key: 4.bias',
            '2 unexpected keys: 4.scale, head.weight', 'may be for another architecture')


def test_shape_mismatch_is_named(net, tiny_weights):
    _, path = tiny_weights
    refused(lambda: load_foreign_model(f'{net}:tiny', path, {'num_classes': 100}, input_shape=SHAPE),
            '2 shape mismatches: 4.weight (checkpoint [10, 4], model [100, 4]), 4.bias (checkpoint [10], model [100])',
            'may be for another architecture')


# --- does the model behave as the evaluation assumes? ------------------------------------------------------------

def test_wrong_num_classes(net, tiny_weights):
    _, path = tiny_weights
    refused(lambda: load_foreign_model(f'{net}:tiny', path, num_classes=100, input_shape=SHAPE),
            'the model has 10 output columns but num_classes=100')


def test_randomized_model_is_refused_with_the_rand_advice(net, tmp_path):
    torch.save(build_architecture(f'{net}:Noisy').state_dict(), tmp_path / 'noisy.pt')
    message = refused(lambda: load_foreign_model(f'{net}:Noisy', tmp_path / 'noisy.pt', input_shape=SHAPE), RANDOMIZED)
    assert "evaluate it with AutoAttack's 'rand' version" in message


def test_bad_normalization_is_refused_before_loading(net, tmp_path):
    never_read = tmp_path / 'never_read.pt'         # the arguments are checked before any file is opened
    refused(lambda: load_foreign_model(f'{net}:tiny', never_read, mean=(0.5, 0.5, 0.5)), 'give both')
    refused(lambda: load_foreign_model(f'{net}:tiny', never_read, mean=(0.5, 0.5), std=(0.2, 0.2)),
            'one value per channel of input_shape=(3, 32, 32)')


def test_normalization_wraps_the_network(net, tiny_weights):
    network, path = tiny_weights
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    model, info = load_foreign_model(f'{net}:tiny', path, mean=mean, std=std, num_classes=10, input_shape=SHAPE)
    assert not model.training and info['mean'] == list(mean) and info['std'] == list(std)
    x = torch.rand(2, *SHAPE)
    standardized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad(): torch.testing.assert_close(model(x), network(standardized))


# --- a real foreign model ----------------------------------------------------------------------------------------

def test_pyautoattack_resnet18_loads_strictly():
    example = pyautoattack_example()
    if example is None: pytest.skip("pyautoattack's example model (examples/model_test.pt, examples/resnet.py) is not installed")
    spec, checkpoint = example
    assert spec == 'pyautoattack.examples.resnet:ResNet18'
    model, info = load_foreign_model(spec, checkpoint, num_classes=10)
    assert not model.training
    assert (info['num_classes'], info['state_key'], info['stripped_prefix'], info['trusted_unpickling']) == (10, None, False, False)
    assert info['checkpoint_sha256'] == file_sha256(checkpoint)
    assert info['checkpoint'] == str(checkpoint.resolve())
    assert info['num_parameters'] == 11_173_962
    batch = torch.rand(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(model(batch), model(batch))      # deterministic in eval mode


def test_evaluate_notebook_on_a_model_trained_elsewhere(root, tmp_path):
    "nbs/evaluate.ipynb with model/checkpoint/dataset: pyautoattack's ResNet-18 gets an evaluation folder with model.json, the evaluation and its card; a second request adds to it."
    import papermill
    from conftest import write_tiny_imagefolder
    from advdpnp.files import file_sha256
    from advdpnp.runs import RunFolder
    example = pyautoattack_example()
    if example is None: pytest.skip("pyautoattack's example model (examples/model_test.pt, examples/resnet.py) is not installed")
    spec, checkpoint = example
    data = write_tiny_imagefolder(tmp_path / 'folder', classes=tuple('abcdefghij'), per_class=2, size=32)
    run = lambda out, **p: papermill.execute_notebook(
        str(root / 'nbs' / 'evaluate.ipynb'), str(tmp_path / out), cwd=str(root), progress_bar=False, kernel_name='python3',
        parameters=dict(model=spec, checkpoint=str(checkpoint), dataset='imagefolder', data_dir=str(data), out_dir=str(tmp_path / 'runs'),
                        attacks='pgd', soundness=False, device='cpu', card='{"venue": "examples of pyautoattack"}', **p))
    run('a.ipynb', n_eval=10)
    folder = RunFolder(tmp_path / 'runs' / 'eval-model_test-imagefolder')
    assert folder.status() == 'foreign'
    model = folder.foreign_model()
    assert model['checkpoint_sha256'] == file_sha256(checkpoint) and model['num_classes'] == 10 and model['spec'] == spec
    (evaluation,) = folder.evaluations()
    assert evaluation['n'] == 10 and evaluation['request']['attacks'] == ['pgd'] and abs(evaluation['eps'] - 8 / 255) < 1e-12
    assert evaluation['model_card']['venue'] == 'examples of pyautoattack' and evaluation['model_card']['architecture'] == spec
    run('b.ipynb', n_eval=4)
    assert sorted(e['n'] for e in folder.evaluations()) == [4, 10]
    with pytest.raises(papermill.PapermillExecutionError, match='not both'):
        run('c.ipynb', run_dir=str(folder.path))
