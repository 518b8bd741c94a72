"""logger='tensorboard': the per-epoch rows of history.csv also reach TensorBoard, in the run folder; history.csv
stays the record, and a fresh start clears the old event files."""
import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from advdpnp.config import RunConfig
from advdpnp.runs import RunFolder
from advdpnp.train import train


def test_tensorboard_receives_every_epoch(tmp_path):
    cfg = RunConfig(dataset='digits', method='ce', epochs=2, n_train=256, n_test=64, width=4, epoch_pgd_points=0,
                    out_dir=str(tmp_path), name='tb', device='cpu', logger='tensorboard')
    result = train(cfg, progress=False)
    folder = RunFolder(result.run_dir)
    events = EventAccumulator(str(folder.file(folder.TENSORBOARD))).Reload()
    history = pd.read_csv(folder.file(folder.HISTORY))
    for tag in ('loss', 'test_acc', 'lr'):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == history['epoch'].tolist()
        assert [round(s.value, 5) for s in scalars] == [round(v, 5) for v in history[tag]]
    train(RunConfig(**{**cfg.to_dict(), 'overwrite': True, 'logger': 'none'}), progress=False)
    assert not folder.file(folder.TENSORBOARD).exists()          # a fresh start leaves no events of the old run
