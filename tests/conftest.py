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


@pytest.fixture
def small_model():
    """Overrides for a small G and D on the CPU, with warm-up over by step 10."""
    return [
        "train.device=cpu",
        "model.layers=[1,1,1,1]",
        "model.base_width=8",
        "model.d_width=8",
        "optim.warmup_steps=10",
        "optim.schedule_steps=1000",
    ]


@pytest.fixture
def small_batches():
    """A labelled source batch and an unlabelled target batch of one 48x64 image each."""
    from dataset.datasets import Batch

    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (1, 48, 64), generator=gen)
    source = Batch(torch.randn(1, 3, 48, 64, generator=gen), label, ["s"])
    return source, Batch(torch.randn(1, 3, 48, 64, generator=gen), None, ["t"])


@pytest.fixture
def tiny_run(synthetic):
    """Overrides for a short training run of a small G and D on the tiny synthetic benchmark
    (96x48 crops, batch 1, no loader workers, warm-up over by step 2), logging every step. The
    device is the test's to choose."""
    return [
        *synthetic,
        "model.layers=[1,1,1,1]",
        "model.base_width=8",
        "model.d_width=8",
        "data.source.crop=[96,48]",
        "data.target.crop=[96,48]",
        "data.val.resize=[128,64]",
        "data.batch_size=1",
        "data.num_workers=0",
        "eval.num_workers=0",
        "optim.warmup_steps=2",
        "optim.schedule_steps=12",
        "train.log_every=1",
        "train.image_every=0",
    ]


@pytest.fixture
def upsampled_dtypes(monkeypatch):
    """The dtype of every tensor that ``F.interpolate`` receives while the test runs."""
    import torch.nn.functional as F

    seen = []
    interpolate = F.interpolate

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    return seen
