from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    "The repository root."
    return ROOT


def write_tiny_imagefolder(folder: Path, classes=('cat', 'dog', 'frog'), per_class: int = 6, size: int = 16) -> Path:
    "A small ImageFolder tree (train/ and test/, random RGB PNGs) in `folder`."
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for c in classes:
            (folder / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / c / f'{i}.png')
    return folder
