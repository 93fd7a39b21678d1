"""The one evaluation prelude of every script that scores, draws or analyses a trained G.

``prepare_eval`` reads the first weights file and its config (``--config``, else the one the
checkpoint stores, else the defaults, with the command line's overrides on top), creates the
data where it is generated, builds the val split and its loader and picks the device; the
scripts then restore each file in turn with ``Evaluation.restore``. ``val_loader`` is the val
split and loader alone, which training's own evaluation shares. Below it, the command-line
flags that configure a checkpoint (``--config``, ``--preset``, ``--flip``, ``--classes``,
``--mask-absent``, ``--label-size``, ``--subset-protocol``) and the overrides they stand for.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dataset.build import build_dataset, ensure_data
from dataset.datasets import SegmentationDataset, eval_loader
from dataset.labels import CLASS_SUBSETS
from model.build import Restored, restore_model
from model.weights import Weights, read_weights, scored_weights
from utils.checkpoint import CheckpointError
from utils.config import (
    LABEL_SIZES,
    PRESETS,
    SUBSET_PROTOCOLS,
    Config,
    config_from_dict,
    load_config,
    take_overrides,
)
from utils.distributed import select_device

log = logging.getLogger(__name__)


def val_dataset(cfg: Config) -> SegmentationDataset:
    """The val split of ``data.val``, its images resized to ``data.val.resize``; returns it with
    the labels at full size (``eval.label_size=full``) or resized with the images, nearest
    neighbour (``input``), so that predictions are scored at that size."""
    # evaluation=True keeps the label at full size; without it the label follows the image's
    # resize by NEAREST_EXACT, which picks the pixels PIL's NEAREST picks (MaxSquare's resize)
    full = cfg.eval.label_size == "full"
    return build_dataset(cfg.data.val, with_labels=True, evaluation=full)


def val_loader(
    cfg: Config,
    dataset: SegmentationDataset,
    device: torch.device | None,
    rank: int = 0,
    world_size: int = 1,
) -> torch.utils.data.DataLoader:
    """The in-order loader over this rank's shard of the val split (``eval.batch_size``,
    ``eval.num_workers``; pinned memory on CUDA)."""
    pin = device is not None and device.type == "cuda"
    return eval_loader(dataset, cfg.eval.batch_size, cfg.eval.num_workers, pin_memory=pin,
                       rank=rank, world_size=world_size)  # fmt: skip


@dataclass
class Evaluation:
    """What ``prepare_eval`` gives a script: the first file's config (data, evaluation settings
    and device for every file), the device (None without weights files: ``--pred-dir``), the
    val split (None when not asked for) and its loader, and each file on demand."""

    cfg: Config
    files: list[str]
    device: torch.device | None
    val: SegmentationDataset | None
    config_path: str | None
    overrides: list[list[str]]  # per file
    first: Weights | None = field(default=None, repr=False)  # read already, until restored
    teacher_seen: bool = False  # a file restored so far is a self-training run's (has a teacher)

    @functools.cached_property
    def loader(self) -> torch.utils.data.DataLoader:
        """The val split's loader (made on first use: scoring PNGs on disk needs none)."""
        if self.val is None:
            raise ValueError("prepare_eval(val=False) built no val split")
        return val_loader(self.cfg, self.val, self.device)

    def restore(self, index: int) -> Restored:
        """File ``index`` read (the first one was already) and restored into a G built from its
        own config, with this evaluation's overrides and the file's preset (given, stored or
        inferred from the file), the student's weights or the teacher's (``eval.model``); on
        the CPU."""
        weights = self.first if index == 0 and self.first is not None else None
        if weights is None:
            weights = read_weights(self.files[index])
        self.first = None  # the model holds the weights now
        own = eval_config(self.config_path, weights.config, self.overrides[index])
        self.teacher_seen = self.teacher_seen or weights.teacher is not None
        return restore_model(own.model, scored_weights(weights, own.eval.model))

    @property
    def scored_model(self) -> str | None:
        """What results record as ``protocol.model``: ``eval.model`` where a self-training
        run's file was scored (student or teacher), else None."""
        return self.cfg.eval.model if self.teacher_seen else None


def prepare_eval(
    files: Sequence[str],
    config_path: str | None,
    overrides: Sequence[str],
    *,
    member_overrides: Sequence[Sequence[str]] | None = None,
    check: Callable[[Config], None] | None = None,
    data: bool = True,
    val: bool = True,
    stored: dict[str, Any] | None = None,
) -> Evaluation:
    """The evaluation prelude (module docstring). ``member_overrides``: extra overrides per
    file (an ensemble's presets); ``check(cfg)`` refuses options the first file's config cannot
    honour, before any work; ``data=False`` skips the data (``predict.py``: the user's own
    images), ``val=False`` the val split (``analyze_features.py`` builds its own); ``stored``,
    without files, the config to start from in place of the defaults (``--pred-dir``: the one
    recorded beside the predictions)."""
    files = list(files)
    for path in files:  # a missing file fails now, not after the others' work
        if not Path(path).is_file():
            raise CheckpointError(f"--restore {path}: not a file")
    per_file = [[*overrides, *extra] for extra in (member_overrides or [[] for _ in files])]
    first = read_weights(files[0]) if files else None
    cfg = eval_config(config_path, first.config if first else stored,
                      per_file[0] if files else overrides)  # fmt: skip
    if check is not None:
        check(cfg)
    device = select_device(cfg.train.device) if files else None
    if data:
        ensure_data(cfg.data)
    split = None
    if data and val:
        split = val_dataset(cfg)
        log.info("val: %d images from %s (split %s)", len(split), cfg.data.val.root,
                 cfg.data.val.split)  # fmt: skip
    return Evaluation(cfg, files, device, split, config_path, per_file, first)


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--preset`` and ``--flip``, which ``checkpoint_overrides`` reads: how
    ``evaluate_cityscapes.py`` and ``predict.py`` configure a checkpoint."""
    parser.add_argument("--config", help="YAML for the model and data.val (default: checkpoint's)")
    parser.add_argument(
        "--preset", choices=list(PRESETS), help="network layout (sets model.preset)"
    )
    parser.add_argument(
        "--flip", action="store_true", help="average with the mirrored image (sets eval.flip)"
    )


def checkpoint_overrides(args: argparse.Namespace) -> list[str]:
    """``args.overrides`` with ``--preset`` and ``--flip`` as the overrides they stand for."""
    overrides = list(args.overrides)
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    if args.flip:
        overrides.append("eval.flip=true")
    return overrides


def add_output_flags(parser: argparse.ArgumentParser, save_help: str) -> None:
    """``--save-dir`` (help: ``save_help``), ``--overwrite`` and ``--results``: where an
    evaluation's PNGs and results JSON go, and whether it may replace existing ones."""
    parser.add_argument("--save-dir", metavar="DIR", help=save_help)
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace existing outputs: files in --save-dir and --panels-dir, and a results JSON "
        "that holds another evaluation's record (other files, weights or settings)",
    )  # fmt: skip
    parser.add_argument("--results", metavar="FILE", help="results JSON (default: see below)")


def add_class_flags(parser: argparse.ArgumentParser) -> None:
    """``--classes``, ``--mask-absent``, ``--label-size`` and ``--subset-protocol``, which
    ``check_class_flags`` and ``class_overrides`` read: which class sets a score reports, how
    predictions of the classes outside a set count, at which size the labels are scored, and
    which pixels a set's IoUs count."""
    parser.add_argument(
        "--classes", nargs="+", metavar="{19,16,13}",
        help="class sets to report (sets eval.classes; default: the config's, [19], or [16, "
        "13] for SYNTHIA configs): 16 = without terrain, truck, train; 13 = also without "
        "wall, fence, pole",
    )  # fmt: skip
    parser.add_argument(
        "--mask-absent", action="store_true",
        help="take the argmax over each set's classes only (sets eval.mask_absent); without "
        "it a prediction of a class outside the set is an error of the true class",
    )  # fmt: skip
    parser.add_argument(
        "--label-size", choices=LABEL_SIZES,
        help="sets eval.label_size: full = labels at full resolution, predictions upsampled to "
        "them (AdaptSegNet's evaluation, the paper's Table 1); input = labels resized (nearest) "
        "with the image to data.val.resize (MaxSquare's evaluation)",
    )  # fmt: skip
    parser.add_argument(
        "--subset-protocol", choices=SUBSET_PROTOCOLS,
        help="sets eval.subset_protocol, how a subset's (16, 13) IoUs are counted: "
        "ignore_outside = pixels labelled outside the set are ignored (this repository's "
        "default); full_matrix = the IoUs of the 19-class matrix averaged over the set (DACS's "
        "and DAFormer's evaluation)",
    )  # fmt: skip


def check_class_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--classes`` as ints; the ``key.sub=value`` words it swallowed go to the overrides."""
    take_overrides(parser, args, "classes", int, choices=[str(k) for k in CLASS_SUBSETS])


def class_overrides(args: argparse.Namespace) -> list[str]:
    """``--classes``, ``--mask-absent``, ``--label-size`` and ``--subset-protocol`` as the
    overrides they stand for."""
    overrides = []
    if args.classes:
        overrides.append(f"eval.classes=[{','.join(map(str, args.classes))}]")
    if args.mask_absent:
        overrides.append("eval.mask_absent=true")
    if args.label_size:
        overrides.append(f"eval.label_size={args.label_size}")
    if args.subset_protocol:
        overrides.append(f"eval.subset_protocol={args.subset_protocol}")
    return overrides


def eval_config(
    config_path: str | None, stored: dict[str, Any] | None, overrides: Sequence[str]
) -> Config:
    """The config to evaluate a file with: ``config_path`` if given, else the config stored in
    the checkpoint, else the defaults; ``overrides`` on top."""
    if config_path:
        return load_config(config_path, overrides)
    if stored is not None:
        return config_from_dict(stored, overrides)
    return load_config(None, overrides)
