"""The training loop shared by every setup.

A training script builds its ``TrainState`` and defines its ``train_step``
(``utils.training.state``); ``train`` owns the rest: seeding, data, learning-rate schedules,
logging (``utils.training.meters``), image grids (``utils.training.images``), evaluation,
checkpoints and resume (``utils.checkpoint``). The step's values are summed as they come, with
no host sync, and read at logging steps only. SIGTERM/SIGINT finish the step, save
``last.pth`` and stop (``Interrupted``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dataset.build import build_dataset, ensure_data
from dataset.class_stats import ClassStats, load_class_stats, save_class_stats
from dataset.datasets import Batch, SegmentationDataset, infinite_loader
from dataset.rare_class import RareClassCrops, RareClasses, rare_classes
from utils.checkpoint import rng_state, save_checkpoint, step_in_name
from utils.config import NO_VAL, Config, dump_yaml, read_yaml, to_dict
from utils.distributed import (
    DistInfo,
    all_reduce_max,
    broadcast_object,
    gather_objects,
    resolve_device,
)
from utils.errors import UserError
from utils.evaluation.inference import evaluate_views
from utils.evaluation.prepare import val_dataset, val_loader
from utils.evaluation.reports import (
    class_ious,
    class_mious,
    class_results,
    class_tables,
    class_views,
    protocol_of,
)
from utils.logger import MetricWriter
from utils.protocols import flatten
from utils.provenance import write_results
from utils.schedules import poly_lr
from utils.training.graphs import CudaGraphBackend, GraphedStep
from utils.training.images import log_images
from utils.training.meters import Progress
from utils.training.state import BuildFn, StepFn, TrainState, prepare, seed_everything

log = logging.getLogger("train")


def train(
    cfg: Config,
    setup: str,
    build: BuildFn,
    train_step: StepFn,
    run_dir: Path,
    checkpoint: dict[str, Any] | None = None,
    checkpoint_path: str = "",
    info: DistInfo | None = None,
    device: torch.device | None = None,
    command: str = "",
) -> dict[int, float]:
    """Run ``train_step`` from step 0 (or the ``checkpoint``'s) to ``train.max_steps``; returns
    the final target-val mIoU of each class set of ``eval.classes``. SIGTERM/SIGINT save
    ``last.pth`` and raise ``Interrupted``. Under torchrun every rank calls this; only rank 0
    writes."""
    info = info or DistInfo()
    device = device or resolve_device(cfg.train.device)
    state, start = _start(cfg, build, checkpoint, checkpoint_path, info, device)
    run_step = _step_runner(state, train_step, info)
    data = _data(state, start, info)
    t = cfg.train
    progress = Progress(run_dir, start, t.max_steps, info, device)
    checkpoints = _Checkpointer(run_dir / "checkpoints", t.keep_checkpoints)
    mious: dict[int, float] = {}  # the last evaluation's, per class set
    with _StopRequest().installed() as stop:
        for step in progress.bar:
            lrs = _set_learning_rates(state, step, info.world_size)
            source = next(data.source)
            target = next(data.target) if data.target is not None else None
            progress.add(run_step(state, source, target, step))  # read after the step is queued
            done = step + 1
            last = done == t.max_steps
            log_step = done % t.log_every == 0 or last
            stopping = _stopping(stop, log_step, info, device)
            periodic = bool(t.save_every) and done % t.save_every == 0
            saving = periodic or last or stopping
            if log_step or saving:  # a checkpoint is only written after its values are checked
                progress.log(step, lrs, read_now=saving)
            if progress.writer is not None and _images_due(t.image_every, done):
                log_images(progress.writer, state.scored_model, (source, target), done, device)
            if t.eval_every and done % t.eval_every == 0 and not last and data.val is not None:
                mious = _evaluate(state, data.val, progress.writer, run_dir, done, command)
            # every process's random states (dropout's), gathered by all, written by rank 0
            rngs = gather_objects(rng_state(device), info) if saving else None
            if saving and info.is_main:
                checkpoints.save(state.checkpoint(setup, done, _metric(mious), rngs), periodic)
                save_config(cfg, run_dir, start)  # the config the checkpoints now hold
            if stopping and not last:
                progress.close()
                if progress.writer is not None:
                    log.warning("saved %s at step %d", run_dir / "checkpoints" / "last.pth", done)
                raise Interrupted(stop.signum or signal.SIGTERM, done)
    progress.bar.close()
    if data.val is not None:
        mious = _evaluate(state, data.val, progress.writer, run_dir, t.max_steps, command)
    progress.close()
    return mious


def _images_due(every: int, done: int) -> bool:
    """Whether TensorBoard's image grids are drawn after step ``done``: after the first step
    and every ``train.image_every`` steps (never with 0)."""
    return bool(every) and (done % every == 0 or done == 1)


def _start(
    cfg: Config,
    build: BuildFn,
    checkpoint: dict[str, Any] | None,
    checkpoint_path: str,
    info: DistInfo,
    device: torch.device,
) -> tuple[TrainState, int]:
    """Seeded, the data in place, the setup built and prepared (and restored from
    ``checkpoint``); returns the state and the step to start from."""
    seed_everything(cfg.train.seed + info.rank)
    if info.is_main:
        ensure_data(cfg.data)
    broadcast_object(None, info)  # the others wait for the synthetic data
    # A resumed run takes every weight from its checkpoint: the initial-weights file is not
    # read again (it may have moved since).
    no_init = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=""))
    state = build(cfg if checkpoint is None else no_init, device)
    state.cfg = cfg
    prepare(state, info)
    if checkpoint is None:
        return state, 0
    start = state.restore(checkpoint, checkpoint_path, info.rank)
    log.info("resumed at step %d of %d", start, cfg.train.max_steps)
    return state, start


def save_config(cfg: Config, run_dir: Path, start: int) -> None:
    """``config.yaml``: the resolved config that the run's checkpoints hold (a new run's is
    written when its folder is made). The first checkpoint of a resumed segment (from step
    ``start``) with other settings replaces it, keeping the one it replaces as
    ``config.before_step_NNNNNN.yaml`` (another number where that name is taken), and logs the
    keys that changed; a resume that stops before saving leaves it as it was."""
    path = run_dir / "config.yaml"
    if path.is_file():
        before, now = flatten(read_yaml(path)), flatten(to_dict(cfg))
        changed = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
        if not changed:
            return
        kept = run_dir / f"config.before_step_{start:06d}.yaml"
        for n in itertools.count(2):
            if not kept.exists():
                break
            kept = run_dir / f"config.before_step_{start:06d}-{n}.yaml"
        path.replace(kept)
        log.info("resumed at step %d with other settings (%s kept): %s", start, kept.name,
                 "; ".join(changed))  # fmt: skip
    dump_yaml(cfg, path)


class _Data(NamedTuple):
    source: Iterator[Batch]
    target: Iterator[Batch] | None  # None: the setup has no target pass
    val: torch.utils.data.DataLoader | None  # None: no labelled val set (data.val.dataset=none)


def _data(state: TrainState, start: int, info: DistInfo) -> _Data:
    """Endless source and target streams positioned at step ``start`` (sharded by rank), and
    the val loader."""
    cfg, device = state.cfg, state.device
    bs, workers, seed = cfg.data.batch_size, cfg.data.num_workers, cfg.train.seed
    pin = device.type == "cuda"
    ranks = {"rank": info.rank, "world_size": info.world_size}
    source = build_dataset(cfg.data.source, with_labels=True)
    rare = _rare_classes(cfg, source, info) if cfg.data.rcs.enabled else None
    drawn = source if rare is None else RareClassCrops(source, rare.crop_pixels)
    source_iter = infinite_loader(drawn, bs, seed, start, workers, pin, **ranks, rare=rare)
    target_iter = None
    if state.uses_target:
        target = build_dataset(cfg.data.target, with_labels=False)
        target_iter = infinite_loader(target, bs, seed + 1, start, workers, pin, **ranks)
    val = val_dataset(cfg) if cfg.data.val.dataset != NO_VAL else None
    loader = val_loader(cfg, val, device, **ranks) if val is not None else None
    log.info(
        "data: source %d images (%s), target %s, val %s; batch %d per process x %d",
        len(source), cfg.data.source.root,
        f"{len(target)} images ({cfg.data.target.root})" if state.uses_target else "unused",
        f"{len(val)} images" if val is not None else "none (not evaluated: score the "
        "checkpoints with evaluate_cityscapes.py and a labelled set)", bs, info.world_size,
    )  # fmt: skip
    return _Data(source_iter, target_iter, loader)


def _rare_classes(cfg: Config, source: SegmentationDataset, info: DistInfo) -> RareClasses:
    """Rare-class sampling's draw (``data.rcs``): rank 0 reads the source's class statistics
    from their cache or computes them, every rank gets them (or rank 0's error), and they are
    cached once checked (an error writes nothing)."""
    r = cfg.data.rcs
    stats: ClassStats | UserError | None = None
    if info.is_main:
        try:
            stats = load_class_stats(source, cfg.model.num_classes, r.cache_dir,
                                     cfg.data.num_workers)  # fmt: skip
        except UserError as err:
            stats = err
    stats = broadcast_object(stats, info)
    if isinstance(stats, UserError):
        raise stats
    assert stats is not None
    rare = rare_classes(stats, r.temperature, r.min_pixels, r.min_crop_ratio)
    if info.is_main and stats.fresh:
        save_class_stats(stats)
    log.info("rare-class sampling: P(c) = %s",
             ", ".join(f"{c}: {p:.4f}" for c, p in zip(rare.classes, rare.probs)))  # fmt: skip
    return rare


def _set_learning_rates(state: TrainState, step: int, world_size: int) -> dict[str, float]:
    """Every optimizer group's rate for ``step``: ``poly_lr`` of its optimizer's base rate
    (times the process count with ``optim.lr_scaling=linear``) times the group's
    ``lr_mult``; returns each optimizer's base-group rate for the logs."""
    o = state.cfg.optim
    scale = world_size if o.lr_scaling == "linear" else 1
    lrs = {}
    for name, opt in state.optimizers.items():
        base = state.base_lrs[name] * scale
        lr = poly_lr(step, base, o.schedule_steps, o.power, o.warmup_steps, o.warmup_form)
        for group in opt.param_groups:
            if torch.is_tensor(group["lr"]):  # a CUDA graph's optimizer reads it on the device
                group["lr"].fill_(lr * group["lr_mult"])
            else:
                group["lr"] = lr * group["lr_mult"]
        lrs[f"lr_{name}"] = lr
    return lrs


def _step_runner(state: TrainState, train_step: StepFn, info: DistInfo) -> StepFn:
    """``train_step``, or under ``train.cuda_graph`` on one GPU its CUDA graph runner; eager
    (with a warning saying why) where a graph cannot run."""
    if not state.cfg.train.cuda_graph:
        return train_step
    if state.device.type != "cuda" or info.distributed:
        why = "under torchrun" if info.distributed else f"on {state.device}"
        log.warning("train.cuda_graph=true: not available %s, the step runs eagerly", why)
        return train_step
    return GraphedStep(train_step, CudaGraphBackend(state.device))


def _evaluate(
    state: TrainState,
    loader: Any,
    writer: MetricWriter | None,
    run_dir: Path,
    step: int,
    command: str = "",
) -> dict[int, float]:
    """Score the val split on the class sets of ``eval.classes`` (19 classes by default, 16 and
    13 in the SYNTHIA configs), log the table and write ``results.json``; returns the mIoU of
    each set, in that order."""
    # float32, as evaluate_cityscapes.py: results.json must be what it reports for last.pth.
    classes, mask = state.cfg.eval.classes, state.cfg.eval.mask_absent
    cms = evaluate_views(state.scored_model, loader, state.device, class_views(classes, mask),
                         progress=writer is not None, flip=state.cfg.eval.flip)  # fmt: skip
    ious = class_ious(cms, classes, mask, state.cfg.eval.subset_protocol)
    if writer is None:  # not rank 0: the matrices were all-reduced, rank 0 reports
        return class_mious(ious)
    # the weights scored: the run's last step, or a mid-run evaluation's
    selection = "last" if step == state.cfg.train.max_steps else f"step {step}"
    model = state.cfg.eval.model if "teacher" in state.modules else None  # self-training
    scored = protocol_of(state.cfg, selection, model)
    table = class_tables({f"step {step}": ious}, classes, mask, scored)
    log.info("target val at step %d:\n%s", step, table)
    results = class_results(ious, cms, mask, state.cfg.eval.subset_protocol, by_name=False)
    mious = {k: v for k, v in results.items() if k.startswith("mIoU")}
    writer.scalars(step, {**mious, "pixel_acc": cms[0].pixel_accuracy()}, prefix="val/")
    writer.text("val/iou_table", table, step)
    # The resolved config is the run folder's config.yaml; its hash ties the two together.
    write_results(run_dir / "results.json", {"step": step, **results}, command,
                  to_dict(state.cfg), state.device, with_config=False,
                  protocol=scored.fields())  # fmt: skip
    return class_mious(ious)


class _Checkpointer:
    """``last.pth`` plus periodic ``step_NNNNNN.pth``, the oldest removed beyond ``keep``."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder, self.keep = folder, keep

    def save(self, ckpt: dict[str, Any], periodic: bool) -> None:
        save_checkpoint(ckpt, self.folder / "last.pth")
        if not periodic:
            return
        save_checkpoint(ckpt, self.folder / f"step_{ckpt['step']:06d}.pth")
        if self.keep > 0:
            by_step = sorted(self.folder.glob("step_*.pth"), key=step_in_name)
            for old in by_step[: -self.keep]:
                old.unlink()


def _metric(mious: dict[int, float]) -> float | None:
    """A checkpoint's metric: the last evaluation's mIoU on its first class set (None before
    any evaluation)."""
    first = next(iter(mious.values()), math.nan)
    return None if math.isnan(first) else first


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was written."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} after step {step}")
        self.signum = signum


def _stopping(stop: _StopRequest, log_step: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether to save and stop after this step: without torchrun a signal is seen at once;
    with it, the ranks agree at logging steps."""
    if not info.distributed:
        return stop.signum is not None
    if log_step:
        return all_reduce_max(float(stop.signum or 0), info, device) > 0
    return False


class _StopRequest:
    """Signal handler: the first SIGTERM/SIGINT asks the loop to save and stop after the current
    step; a second one stops at once (the last complete checkpoint stays intact)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
