"The pyautoattack example model (a CIFAR-10 ResNet-18 trained elsewhere) on the offline JPEG copy's test set."
import json, sys, time
import torch
from advdpnp.evaluate import evaluate_foreign, results_table
from advdpnp.foreign import pyautoattack_example
torch.set_num_threads(2)
spec, ckpt = pyautoattack_example()
common = dict(spec=spec, checkpoint=ckpt, dataset='imagefolder', data_dir='data/cifar10-jpeg', out_dir='runs', name='eval-pyautoattack-example',
              progress=False, card={'authors': 'pyautoattack example (fra31/auto-attack)', 'additional_data': False})
stages = [dict(attacks=('fgsm',), n_eval=None, soundness=False),
          dict(attacks=('pgd', 'cw', 'autoattack'), n_eval=1000, n_autoattack=100, soundness=False),
          dict(attacks=('pgd',), n_eval=100, soundness=True)]
for i in map(int, sys.argv[1:]):
    t0 = time.time()
    res = evaluate_foreign(**common, **stages[i])
    print(f'stage {i}: {time.time() - t0:.0f} s', flush=True)
    print(results_table(res).to_string(index=False), flush=True)
    if 'soundness' in res: print(res['soundness']['verdict'], flush=True)
