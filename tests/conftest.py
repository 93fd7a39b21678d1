"""Shared test setup: the repository root on sys.path, deterministic single-threaded torch."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Overrides that point every dataset at a tiny synthetic benchmark, generated once on
    first use by the training scripts themselves (``data.synthetic.root``)."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return [
        f"data.synthetic.root={root}",
        "data.synthetic.num_source=6",
        "data.synthetic.num_train=6",
        "data.synthetic.num_val=3",
        "data.synthetic.source_size=[160,88]",
        "data.synthetic.target_size=[192,96]",
        f"data.source.root={root}/GTA5",
        f"data.target.root={root}/Cityscapes",
        f"data.val.root={root}/Cityscapes",
    ]
