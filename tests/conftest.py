"""Shared test setup: the repository root on sys.path, deterministic single-threaded torch, the
tiny configurations every test file builds on (``from conftest import TINY_EVAL``), fixtures
for the tiny synthetic benchmark, short training runs, and the checkpoint files of every public
DeepLab-v2 layout.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)

# A G of one block per stage and width 8, with a D to match: seconds on a CPU.
TINY_MODEL = ["model.layers=[1,1,1,1]", "model.base_width=8", "model.d_width=8"]
SIZE = {"layers": (1, 1, 1, 1), "base_width": 8}  # the same G, as DeepLabV2 arguments
_TINY_DATA = ["data.val.resize=[128,64]", "data.num_workers=0", "eval.num_workers=0"]
# Evaluating a tiny G on the CPU, in the test process.
TINY_EVAL = [*TINY_MODEL, *_TINY_DATA, "train.device=cpu"]
# Training it: 96x48 crops, batch 1, every step logged, no image grids; the device is the
# test's to choose.
TINY_TRAIN = [*TINY_MODEL, *_TINY_DATA, "data.source.crop=[96,48]", "data.target.crop=[96,48]",
              "data.batch_size=1", "train.log_every=1", "train.image_every=0"]  # fmt: skip
# A short run in the test process: on the CPU, batch 2, warm-up over by step 2.
TINY_CPU_TRAIN = [*TINY_TRAIN, "train.device=cpu", "data.batch_size=2", "optim.warmup_steps=2",
                  "optim.schedule_steps=12"]  # fmt: skip
# The norm-only runs': a larger learning rate, and image grids every 2 steps.
TINY_NORM_ONLY = [*TINY_CPU_TRAIN, "optim.lr=0.01", "train.image_every=2"]
# DAFormer's network at the tiny sizes: the smallest MiT and a 16-channel head.
TINY_DAFORMER = ["model.backbone=mit_demo", "model.head_channels=16"]


def tiny_sized(overrides: list[str]) -> list[str]:
    """A speed setup's overrides (``benchmarks.speed.SETUPS``) at the tests' sizes: with
    ``TINY_DAFORMER`` after them where they name DAFormer's network (its MiT-B5 otherwise)."""
    return [*overrides, *(TINY_DAFORMER if "model.arch=daformer" in overrides else [])]


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """``XDG_CACHE_HOME`` in a temporary folder for the whole session, in ``os.environ`` so
    that the commands the tests start inherit it: no test writes to the real cache (the class
    statistics of rare-class sampling, ``dataset.class_stats``)."""
    path = tmp_path_factory.mktemp("cache_home")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


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
    return [*TINY_MODEL, "train.device=cpu", "optim.warmup_steps=10", "optim.schedule_steps=1000"]


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
    (``TINY_TRAIN``, warm-up over by step 2). The device is the test's to choose."""
    return [*synthetic, *TINY_TRAIN, "optim.warmup_steps=2", "optim.schedule_steps=12"]


def train_run(main, tmp_path: Path, name: str, *args: str) -> Path:
    """The run folder ``tmp_path/name`` of a training script's ``main(args)``, which must
    finish (exit status 0)."""
    assert main([*args, f"train.out_dir={tmp_path}", f"train.run_name={name}"]) == 0
    return tmp_path / name


def norm_only_run(tmp_path: Path, synthetic: list[str], name: str, *extra: str,
                  config: str = "configs/demo/norm_only.yaml") -> Path:  # fmt: skip
    """A ``TINY_NORM_ONLY`` run of ``train_norm_only.py`` on ``config``, with ``extra``."""
    import train_norm_only

    args = ["--config", config, *TINY_NORM_ONLY, *synthetic, *extra]
    return train_run(train_norm_only.main, tmp_path, name, *args)


def metrics_rows(run_dir: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_rows(run_dir: Path) -> list[dict]:
    """The per-step records of a run's ``metrics.jsonl`` (those with a source loss), without
    their timings, which no two runs share."""
    return [{k: v for k, v in r.items() if "sec_per_step" not in k}
            for r in metrics_rows(run_dir) if "train/loss_seg" in r]  # fmt: skip


def dacs_run(tmp_path: Path, synthetic: list[str], name: str, steps: int, *extra: str,
             resume: Path | None = None) -> Path:  # fmt: skip
    """``train_dacs_norm.py`` on the demo's ``dacs_norm.yaml`` at tiny sizes, batch 2, for
    ``steps`` steps with ``extra``; or the run ``resume`` continued to ``steps``."""
    import train_dacs_norm

    args = (["--resume", str(resume)] if resume else
            ["--config", "configs/demo/dacs_norm.yaml", *synthetic, *TINY_TRAIN,
             "train.device=cpu", "optim.schedule_steps=12", "data.batch_size=2",
             f"train.out_dir={tmp_path}", f"train.run_name={name}", "train.save_every=0",
             *extra])  # fmt: skip
    assert train_dacs_norm.main([*args, f"train.max_steps={steps}"]) == 0
    return tmp_path / name


def state_weights(state) -> dict[str, torch.Tensor]:
    """Copies of every tensor of a ``TrainState``'s modules, keyed ``<module>.<key>``."""
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in state.modules.items()
        for key, value in module.state_dict().items()
    }


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


def bf16_head_gradient_errors(device, channels_last: bool = False) -> dict[str, float]:
    """Each DAFormer head parameter's gradient under bf16 autocast against float32's (relative
    L2 error), for a small MiT on a blocky 128x128 batch; dropout and drop path off, so both
    passes see the same network. ``channels_last``: the network in that layout, as
    ``train.channels_last`` gives it on CUDA."""
    import torch.nn.functional as F

    from model.daformer import DAFormer

    torch.manual_seed(0)
    model = DAFormer(19, "mit_demo", head_channels=16).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout2d) or getattr(m, "stochastic_depth", False):
            m.eval()
    label = torch.randint(0, 19, (2, 8, 8)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    x = torch.randn(2, 3, 8, 8).repeat_interleave(16, 2).repeat_interleave(16, 3) * 50
    model, x, label = model.to(device), x.to(device), label.to(device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)  # fmt: skip

    def grads(amp: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).p2
        F.cross_entropy(logits.float(), label).backward()
        return {n: p.grad.clone() for n, p in model.decode_head.named_parameters()}

    exact, bf16 = grads(False), grads(True)
    return {n: ((bf16[n] - g).norm() / g.norm()).item() for n, g in exact.items()}


# --- Weights files of every layout the loader reads, made from a seeded tiny G. ---


class Evil:
    """Pickled, it runs a command when unpickled: what the safe loader must refuse."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def producer(preset="clan", num_classes=19, seed=0, **size):
    """A seeded random G in eval mode whose BN statistics and affine parameters are not the
    defaults, so that a load that skipped or misplaced any tensor would show."""
    from model.deeplabv2 import DeepLabV2
    from utils.config import PRESETS

    torch.manual_seed(seed)
    p = PRESETS[preset]
    model = DeepLabV2(num_classes, multi_level=p.multi_level, aspp_branches=p.aspp_branches,
                      predict_with=p.predict_with, **{**SIZE, **size})  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model.eval()


def unused_branches(model):
    """Branches 2 and 3 of a two-branch release: stored at their N(0, 0.01) init, never used."""
    extra = {}
    for head in ("layer5", "layer6"):
        w = model.state_dict()[f"{head}.conv2d_list.0.weight"]
        for i in (2, 3):
            extra[f"{head}.conv2d_list.{i}.weight"] = torch.randn_like(w) * 0.01
            extra[f"{head}.conv2d_list.{i}.bias"] = torch.zeros(w.shape[0])
    return extra


def without_counters(state):
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def checkpoint_dict(model, cfg_overrides):
    """This repository's checkpoint, with a stored config describing ``model``."""
    from utils.config import load_config, to_dict

    cfg = load_config(None, cfg_overrides)
    return {"setup": "norm_only", "step": 7, "models": {"G": model.state_dict(), "D": {}},
            "optimizers": {}, "config": to_dict(cfg), "metric": None}  # fmt: skip


# layout name -> (preset of the producing model, preset to name, file content from the model)
LAYOUT_FILES = {
    "checkpoint": ("clan", None, lambda m, ov: checkpoint_dict(m, ov)),
    "clan": ("clan", None, lambda m, ov: without_counters(m.state_dict())),
    "feature_to_adapt": ("clan", None, lambda m, ov: m.state_dict()),
    "adaptsegnet": (
        "adaptsegnet", "adaptsegnet",
        lambda m, ov: without_counters({**m.state_dict(), **unused_branches(m)}),
    ),
    "maxsquare": (
        "maxsquare", None,
        lambda m, ov: {
            "epoch": 3, "iteration": 2000, "best_MIou": np.float64(0.41),
            "state_dict": {f"module.{k}": v for k, v in {**m.state_dict(),
                                                         **unused_branches(m)}.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 2.5e-4, "params": [0, 1]}]},
        },
    ),
    "advent": ("advent", "advent", lambda m, ov: m.state_dict()),
}  # fmt: skip


def write_layout(tmp_path, layout, overrides=()):
    """(path, producing model, preset to name) for ``layout``."""
    preset, named, content = LAYOUT_FILES[layout]
    model = producer(preset)
    path = tmp_path / f"{layout}.pth"
    torch.save(content(model, [*TINY_EVAL, *overrides, f"model.preset={preset}"]), path)
    return path, model, named


def tiny_cfg(*extra):
    """The model section of a tiny evaluation config."""
    from utils.config import load_config

    return load_config(None, [*TINY_EVAL, *extra]).model


def spy_terms(monkeypatch, module, names):
    """Wrap the loss functions ``names``, as ``module`` (a training script) and
    ``utils.losses`` (where the shared step pieces call them) hold them, so that each returned
    term records the gradient that reaches it in the backward passes: d(total)/d(term), i.e.
    its weight in the total (None if the term was left out)."""
    import utils.losses

    seen = []

    def wrap(name, fn):
        def spy(*args, **kwargs):
            term = fn(*args, **kwargs)
            record = {"name": name, "grad": None}
            seen.append(record)
            if term.requires_grad:
                term.register_hook(lambda g, r=record: r.update(grad=float(g)))
            return term

        return spy

    for name in names:
        for owner in (module, utils.losses):
            if hasattr(owner, name):
                monkeypatch.setattr(owner, name, wrap(name, getattr(owner, name)))
    return seen
