"""The training loop shared by every setup.

A training script builds its ``TrainState`` and defines its ``train_step``; this loop owns the
rest: run folder, seeding, data, learning-rate schedules, logging, image grids, evaluation,
checkpoints and resume. ``train_step(state, source, target, step)`` does one optimisation step
(forward, backward, ``optimizer.step()``) and returns a dict of values to log: detached scalar
tensors on the state's device or plain numbers. The loop sums them as they come, with no host
sync, and reads them at logging steps only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dataset.build import build_dataset, ensure_data
from dataset.datasets import Batch, DatasetError, eval_loader, infinite_loader
from dataset.labels import NUM_CLASSES, colorize
from dataset.transforms import denormalize
from model.build import build_model
from model.deeplabv2 import DeepLabV2
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
    step_in_name,
)
from utils.config import Config, ConfigError, config_from_dict, dump_yaml, load_config, to_dict
from utils.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_mean,
    broadcast_object,
    cleanup,
    describe,
    init_distributed,
    resolve_device,
)
from utils.errors import OutputExistsError, UserError, add_debug_flag
from utils.evaluation.inference import (
    class_ious,
    class_mious,
    class_results,
    class_tables,
    class_views,
    evaluate_views,
    miou_lines,
    predicted_train_ids,
)
from utils.logger import MetricWriter, setup_logging, write_json
from utils.losses import feature_norm, upsample_to
from utils.provenance import command_line, provenance
from utils.schedules import poly_lr
from utils.training.graphs import CudaGraphBackend, GraphedStep
from utils.training.optim import build_sgd

log = logging.getLogger("train")


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainState:
    """What a setup builds: G (and other modules) and their optimizers with base learning rates.

    Every optimizer param group carries ``lr_mult`` (x10 for the classifiers); the loop sets
    ``lr = poly_lr(step, base_lr) * lr_mult`` before each step. The loop then fills ``runners``
    (what a step calls for a training forward: the module itself, or its DDP / compiled
    wrapper), ``amp_dtype`` and ``scaler`` (a GradScaler, enabled for float16 only, that serves
    every optimizer); ``modules`` stay the plain modules (checkpoints, methods, evaluation).
    ``schedule(cfg, step)`` gives the step's scalars (dampings, switches) as numbers; a step
    reads them through ``values(step)``.
    """

    cfg: Config
    device: torch.device
    model: DeepLabV2
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    base_lrs: dict[str, float]
    uses_target: bool
    partial_g_passes: bool = False  # some of G's passes leave parameters unused (DDP must look)
    schedule: Callable[[Config, int], dict[str, float]] = lambda cfg, step: {}
    static_values: dict[str, torch.Tensor] | None = None  # set by a CUDA graph's runner
    runners: dict[str, nn.Module] = field(default_factory=dict)
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def values(self, step: int) -> dict[str, torch.Tensor | float]:
        """The step's scalars: ``schedule(cfg, step)``, or under ``train.cuda_graph`` the 0-dim
        device tensors that the graph reads them from (its runner fills them before each step,
        so the step's code must only compute with them, never branch on them)."""
        if self.static_values is not None:
            return self.static_values
        return self.schedule(self.cfg, step)

    def run(self, name: str) -> nn.Module:
        """The module to call for a training forward (DDP/compiled wrapper when there is one)."""
        return self.runners.get(name, self.modules[name])

    def autocast(self) -> contextlib.AbstractContextManager:
        """The one mixed-precision context (``train.amp``); a null context when it is off (so
        a device type that autocast does not know, such as ``meta``, runs too)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # Under a CUDA graph the weights' casts are recorded and replayed: no cast cache (as
        # PyTorch's CUDA graph notes ask).
        cache = not self.cfg.train.cuda_graph
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the device (non-blocking; NHWC images with channels_last)."""
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.device.type == "cuda" and self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the GradScaler when float16 needs one."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step_optimizers(self) -> None:
        """Step every optimizer (unscaling first under float16), then update the scale."""
        for opt in self.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()


def prepare(state: TrainState, info: DistInfo) -> None:
    """Memory layout, compilation, DDP and mixed precision, from ``train.*``."""
    t, device = state.cfg.train, state.device  # (choices checked when the config loaded)
    state.amp_dtype = AMP_DTYPES[t.amp]
    if t.amp == "fp16":
        state.scaler = torch.amp.GradScaler(device.type)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for name, module in state.modules.items():
        if device.type == "cuda" and t.channels_last:
            module.to(memory_format=torch.channels_last)
        runner = module
        if info.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # Looking for unused parameters costs a graph traversal per pass: only where some
            # go unused (G in Norm only, whose target pass skips the heads) and for the small D.
            unused = state.partial_g_passes if name == "G" else True
            runner = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)
        if t.compile:
            runner = torch.compile(runner, mode=t.compile_mode)
        state.runners[name] = runner


BuildFn = Callable[[Config, torch.device], TrainState]
StepFn = Callable[[TrainState, Batch, "Batch | None", int], dict[str, "torch.Tensor | float"]]


class NonFiniteLossError(UserError, RuntimeError):
    """A loss term became NaN or infinite; the message names it and the steps."""


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was written."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} after step {step}")
        self.signum = signum


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


def build_generator(cfg: Config, device: torch.device) -> tuple[DeepLabV2, torch.optim.Optimizer]:
    """G in train mode on ``device`` and its SGD optimizer (backbone x1, classifiers x10; each
    weight updated once per step, or as the released code did: ``optim.backbone_updates``)."""
    model = build_model(cfg.model).to(device)
    model.train()
    sgd = build_sgd(cfg.optim, model.backbone_stages(), model.param_groups(cfg.optim.lr))
    return model, sgd


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="experiment YAML (merged onto configs/defaults.yaml)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run from its checkpoints/last.pth (or from the given checkpoint)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.config is None and args.resume is None:
        parser.error("one of --config or --resume is required")
    return args


def _resume_checkpoint(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pth"
    if not p.is_file():
        raise CheckpointError(f"--resume {path}: no checkpoint at {p}")
    return p


def _new_run_dir(cfg: Config, config_path: str) -> Path:
    name = cfg.train.run_name or f"{Path(config_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.train.out_dir) / name
    if run_dir.exists():
        if (run_dir / "checkpoints" / "last.pth").is_file():
            hint = f"continue it with --resume {run_dir}"
        else:
            hint = "it holds no checkpoint (it stopped before its first save): remove it"
        raise OutputExistsError(
            f"run folder {run_dir} already exists: {hint}, or choose another train.run_name"
        )
    (run_dir / "checkpoints").mkdir(parents=True)
    return run_dir


def _set_learning_rates(state: TrainState, step: int, world_size: int) -> dict[str, float]:
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


def checkpoint_dict(
    state: TrainState, setup: str, step: int, metric: float | None = None
) -> dict[str, Any]:
    """Everything a run needs to continue: models, optimizers, the fp16 GradScaler, step, RNG
    (CPU, and the GPU's on CUDA), config, last metric."""
    rng = {"torch": torch.get_rng_state()}
    if state.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(state.device)
    return {
        "setup": setup,
        "step": step,
        "models": {name: m.state_dict() for name, m in state.modules.items()},
        "optimizers": {name: plain_state_dict(o) for name, o in state.optimizers.items()},
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "rng": rng,
        "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
        "config": to_dict(state.cfg),
        "metric": metric,
    }


def plain_state_dict(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with the settings a CUDA graph gave its groups (learning rates as
    device tensors, fused or capturable steps) back to the eager ones, so any run can load it."""
    sd = opt.state_dict()
    groups = []
    for group in sd["param_groups"]:
        group = dict(group)
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        for key in ("fused", "capturable"):
            if key in group:
                group[key] = opt.defaults.get(key, group[key])
        groups.append(group)
    return {**sd, "param_groups": groups}


def _restore(state: TrainState, ckpt: dict[str, Any], source: str) -> int:
    """Load a checkpoint into a prepared state (after ``prepare``: the GradScaler exists, and
    the optimizer buffers take the parameters' memory layout)."""
    for name, module in state.modules.items():
        load_state_strict(module, ckpt["models"].get(name, {}), f"{source} (model {name})")
    for name, opt in state.optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
        _match_param_layout(opt)
    if state.scaler is not None:
        if ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])
        else:
            log.warning(
                "%s holds no GradScaler state (not trained with train.amp=fp16): the loss scale "
                "starts afresh, so this is not an exact continuation",
                source,
            )
    torch.set_rng_state(ckpt["rng"]["torch"])
    if state.device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], state.device)
    return int(ckpt["step"])


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimizer buffers (momentum, Adam's moments) their parameter's strides: a
    checkpoint keeps the layout of the run that wrote it (NCHW from a CPU run, or with
    ``train.channels_last=false``), the parameters may now be channels_last."""
    for p, slots in opt.state.items():
        for key, value in slots.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                slots[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


@torch.no_grad()
def _picture(
    model: DeepLabV2, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """What TensorBoard shows of a batch's first image, in eval mode as evaluation (the picture
    leaves BN's running statistics alone): input | label | prediction | entropy as one
    3 x H x 4W image (3W without a label; a label of another size, from an image-only rescale,
    resized to the image, nearest), and the per-pixel norms of its backbone features (h x w)."""
    from torchvision.utils import make_grid  # (a slow import: on first use only)

    from utils.analysis.panels import entropy_map, heat_colours

    image = batch.image[:1].to(device)
    size = tuple(image.shape[-2:])
    model.eval()
    out = model(image)
    model.train()
    probs = upsample_to(model.predict(out), size).softmax(1)[0].cpu()  # K x H x W
    tiles = [denormalize(image[0].cpu())]
    if batch.label is not None:
        label = batch.label[:1, None].float()
        label = torch.nn.functional.interpolate(label, size=size, mode="nearest")[0, 0].long()
        tiles.append(torch.from_numpy(colorize(label.numpy())).permute(2, 0, 1))
    pred = predicted_train_ids(probs[None])[0].numpy()
    tiles.append(torch.from_numpy(colorize(pred)).permute(2, 0, 1))
    entropy = heat_colours(entropy_map(probs).numpy())
    tiles.append(torch.from_numpy(entropy).permute(2, 0, 1))
    grid = make_grid(torch.stack(tiles), nrow=len(tiles), padding=2)
    return grid, feature_norm(out.features)[0].cpu()


def _evaluate_and_report(
    state: TrainState,
    loader: Any,
    writer: MetricWriter | None,
    run_dir: Path,
    step: int,
    command: str = "",
) -> dict[int, float]:
    """Score the val split on the class sets of ``eval.classes`` (19 classes by default, 16 and
    13 in the SYNTHIA configs); returns the mIoU of each, in that order."""
    # float32, as evaluate_cityscapes.py: results.json must be what it reports for last.pth.
    classes, mask = state.cfg.eval.classes, state.cfg.eval.mask_absent
    cms = evaluate_views(state.model, loader, state.device, class_views(classes, mask),
                         progress=writer is not None, flip=state.cfg.eval.flip)  # fmt: skip
    ious = class_ious(cms, classes, mask)
    if writer is None:  # not rank 0: the matrices were all-reduced, rank 0 reports
        return class_mious(ious)
    table = class_tables({f"step {step}": ious}, classes, mask)
    log.info("target val at step %d:\n%s", step, table)
    results = class_results(ious, cms, mask, by_name=False)
    mious = {k: v for k, v in results.items() if k.startswith("mIoU")}
    writer.scalars(step, {**mious, "pixel_acc": cms[0].pixel_accuracy()}, prefix="val/")
    writer.text("val/iou_table", table, step)
    # The resolved config is the run folder's config.yaml; its hash ties the two together.
    stamp = provenance(command, to_dict(state.cfg), state.device)
    write_json(run_dir / "results.json",
               {"step": step, **results, "provenance": stamp})  # fmt: skip
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
    start = 0
    if checkpoint is not None:
        start = _restore(state, checkpoint, checkpoint_path)
        log.info("resumed at step %d of %d", start, cfg.train.max_steps)
    t = cfg.train
    run_step = _step_runner(state, train_step, info)
    bs, workers = cfg.data.batch_size, cfg.data.num_workers
    pin = device.type == "cuda"
    ranks = {"rank": info.rank, "world_size": info.world_size}
    source = build_dataset(cfg.data.source, with_labels=True)
    source_iter = infinite_loader(source, bs, t.seed, start, workers, pin, **ranks)
    target_iter = None
    if state.uses_target:
        target = build_dataset(cfg.data.target, with_labels=False)
        target_iter = infinite_loader(target, bs, t.seed + 1, start, workers, pin, **ranks)
    val = build_dataset(cfg.data.val, with_labels=True, evaluation=True)
    val_loader = eval_loader(
        val, cfg.eval.batch_size, cfg.eval.num_workers, pin_memory=pin, **ranks
    )
    log.info(
        "data: source %d images (%s), target %s, val %d images; batch %d per process x %d",
        len(source), cfg.data.source.root,
        f"{len(target)} images ({cfg.data.target.root})" if state.uses_target else "unused",
        len(val), bs, info.world_size,
    )  # fmt: skip

    writer = MetricWriter(run_dir, purge_after=start) if info.is_main else None
    checkpoints = _Checkpointer(run_dir / "checkpoints", t.keep_checkpoints)
    sums: dict[str, torch.Tensor | float] = {}
    count, first_unlogged, tic = 0, start, time.perf_counter()
    pending: _LogStep | None = None  # a logging step's values, read after the next step starts

    def report(entry: _LogStep) -> None:
        values = entry.read()
        _check_finite(values, entry.first, entry.step, run_dir)
        if writer is not None:
            writer.scalars(entry.step + 1, values, prefix="train/")
        bar.set_postfix({k: f"{values[k]:.3g}" for k in _bar_keys(values)})

    mious: dict[int, float] = {}  # the last evaluation's, per class set
    bar = tqdm(range(start, t.max_steps), initial=start, total=t.max_steps, desc="train",
               disable=not info.is_main)  # fmt: skip
    with _StopRequest().installed() as stop:
        for step in bar:
            lrs = _set_learning_rates(state, step, info.world_size)
            src = next(source_iter)
            tgt = next(target_iter) if target_iter is not None else None
            losses = run_step(state, src, tgt, step)
            if pending is not None:  # the step above is queued: reading now stalls nothing
                report(pending)
                pending = None
            accumulate(sums, losses)
            count += 1
            done = step + 1
            last = done == t.max_steps
            log_step = done % t.log_every == 0 or last
            # Without torchrun a signal is seen at once; with it, the ranks agree at log steps.
            stopping = stop.signum is not None and not info.distributed
            if log_step and info.distributed:
                stopping = all_reduce_max(float(stop.signum or 0), info, device) > 0
            periodic = bool(t.save_every) and done % t.save_every == 0
            saving = periodic or last or stopping
            if log_step or saving:
                extra = {**lrs, "sec_per_step": (time.perf_counter() - tic) / count}
                pending = _LogStep(sums, count, info, device, first_unlogged, step, extra)
                if saving or last:  # a checkpoint is only written after its values are checked
                    report(pending)
                    pending = None
                sums, count, first_unlogged, tic = {}, 0, done, time.perf_counter()
            if writer is not None and t.image_every and (done % t.image_every == 0 or done == 1):
                for domain, batch in (("source", src), ("target", tgt)):
                    if batch is None:
                        continue
                    grid, norms = _picture(state.model, batch, device)
                    tiles = (
                        "input_label_pred_entropy"
                        if batch.label is not None
                        else "input_pred_entropy"
                    )
                    writer.image(f"{domain}/{tiles}", grid, done)
                    writer.histogram(f"{domain}/feat_norm_per_pixel", norms, done)
            if t.eval_every and done % t.eval_every == 0 and not last:
                mious = _evaluate_and_report(state, val_loader, writer, run_dir, done, command)
            if saving and info.is_main:
                first = next(iter(mious.values()), math.nan)  # the first class set's
                metric = None if math.isnan(first) else first
                checkpoints.save(checkpoint_dict(state, setup, done, metric), periodic)
            if stopping and not last:
                bar.close()
                if writer is not None:
                    writer.close()
                    log.warning("saved %s at step %d", run_dir / "checkpoints" / "last.pth", done)
                raise Interrupted(stop.signum or signal.SIGTERM, done)
    bar.close()
    mious = _evaluate_and_report(state, val_loader, writer, run_dir, t.max_steps, command)
    if writer is not None:
        writer.close()
    return mious


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


def _bar_keys(terms: dict[str, Any]) -> list[str]:
    """What the progress bar shows: the losses that move and the mean feature norm per domain
    (the step-wise norm loss is dr^2 at every step by construction: logs only)."""
    return [
        k for k in terms if k.startswith(("loss", "feat_norm")) and not k.startswith("loss_norm")
    ]


def accumulate(sums: dict[str, torch.Tensor | float], terms: dict[str, Any]) -> None:
    """Add a step's logged values to ``sums`` in place: tensors stay where they are (no host
    sync), plain numbers stay Python floats."""
    for key, value in terms.items():
        value = value.detach().float() if torch.is_tensor(value) else float(value)
        sums[key] = sums[key] + value if key in sums else value


def stack_means(
    sums: dict[str, torch.Tensor | float], count: int, device: torch.device
) -> tuple[list[str], torch.Tensor]:
    """The sorted keys and ``sums / count`` as one float32 vector on ``device``, whatever device
    each value was on (or a plain number)."""
    keys = sorted(sums)
    values = [torch.as_tensor(sums[k], dtype=torch.float32).to(device).reshape(()) for k in keys]
    return keys, torch.stack(values) / count


def reduce_means(
    sums: dict[str, torch.Tensor | float], count: int, info: DistInfo, device: torch.device
) -> dict[str, float]:
    """Each key's mean over the last ``count`` steps, averaged over processes: one all-reduce
    and one read back to the host (a logging step's only sync)."""
    return _LogStep(sums, count, info, device).read()


class _LogStep:
    """A logging step's means (``reduce_means``), copied to the host without blocking: on CUDA
    into pinned memory behind an event, so the loop can queue the next step before it reads
    them (``read`` waits for the copy only, not for the step queued after it)."""

    def __init__(
        self,
        sums: dict[str, torch.Tensor | float],
        count: int,
        info: DistInfo,
        device: torch.device,
        first: int = 0,
        step: int = 0,
        extra: dict[str, float] | None = None,
    ) -> None:
        self.keys, means = stack_means(sums, count, device)
        means = all_reduce_mean(means, info)
        self.first, self.step, self.extra = first, step, extra or {}
        self.event = None
        if means.device.type == "cuda":
            self.host = torch.empty(means.shape, dtype=means.dtype, pin_memory=True)
            self.host.copy_(means, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = means

    def read(self) -> dict[str, float]:
        if self.event is not None:
            self.event.synchronize()
        return {**dict(zip(self.keys, self.host.tolist())), **self.extra}


def _check_same_stream(ckpt: dict[str, Any], cfg: Config, info: DistInfo, path: Path) -> None:
    """Refuse a resume whose batch size or process count differs from the checkpoint's: the
    data stream's position is counted in batches per process, so it would silently shift."""
    stored = config_from_dict(ckpt["config"])
    before = (stored.data.batch_size, int(ckpt.get("world_size", 1)))
    now = (cfg.data.batch_size, info.world_size)
    if before != now:
        raise CheckpointError(
            f"--resume {path}: the run was trained with data.batch_size={before[0]} on "
            f"{before[1]} process(es), this resume has data.batch_size={now[0]} on {now[1]}; "
            f"the data stream would not continue where it stopped: resume with the same values"
        )


def _remove_unstarted_run(run_dir: Path) -> None:
    """Delete a run folder this invocation created when bad input stopped it before its first
    checkpoint: nothing the user had is touched, and the same run_name can be used again."""
    if any((run_dir / "checkpoints").glob("*.pth")):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            root.removeHandler(handler)
    shutil.rmtree(run_dir, ignore_errors=True)


def _check_finite(values: dict[str, float], first: int, step: int, run_dir: Path) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"loss term(s) {', '.join(bad)} became non-finite between steps {first} and {step} "
            f"({values}); the last good checkpoint is {run_dir / 'checkpoints' / 'last.pth'} "
            f"(train.log_every=1 pinpoints the step)"
        )


def main(
    description: str,
    setup: str,
    build: BuildFn,
    train_step: StepFn,
    argv: Sequence[str] | None = None,
    check: Callable[[Config], None] | None = None,
) -> int:
    """Command-line entry shared by the training scripts (single process or torchrun).
    ``check(cfg)`` raises a ``ConfigError`` for combinations the setup cannot train; it runs,
    with every other check of the config, before the run folder is written."""
    args = parse_args(description, argv)
    checkpoint = None
    if args.resume:
        path = _resume_checkpoint(args.resume)
        checkpoint = load_checkpoint(path)
        if not isinstance(checkpoint, dict) or checkpoint.get("setup") != setup:
            found = checkpoint.get("setup") if isinstance(checkpoint, dict) else None
            raise CheckpointError(
                f"--resume {path}: checkpoint of setup {found!r}, this script trains {setup!r}"
            )
        cfg = config_from_dict(checkpoint["config"], args.overrides)
        run_dir = path.parent.parent
    else:
        cfg = load_config(args.config, args.overrides)
    if cfg.model.num_classes != NUM_CLASSES:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}: training labels are the "
            f"{NUM_CLASSES} Cityscapes trainIds (SYNTHIA's too, as CLAN trains them), so G "
            f"needs {NUM_CLASSES} outputs; 16- and 13-output models can be evaluated, not trained"
        )
    if check is not None:
        check(cfg)
    info, device = init_distributed(cfg.train.device)
    try:
        if checkpoint is None:
            run_dir = _new_run_dir(cfg, args.config) if info.is_main else None
            run_dir = broadcast_object(run_dir, info)
            if info.is_main:
                dump_yaml(cfg, run_dir / "config.yaml")
        else:
            _check_same_stream(checkpoint, cfg, info, path)
        setup_logging(run_dir / "train.log" if info.is_main else None,
                      logging.INFO if info.is_main else logging.WARNING)  # fmt: skip
        log.info("run folder: %s; %s", run_dir, describe(info, device))
        try:
            command = command_line(Path(sys.modules[build.__module__].__file__ or setup).name, argv)
            mious = train(cfg, setup, build, train_step, run_dir, checkpoint,
                         str(args.resume or ""), info, device, command)  # fmt: skip
        except Interrupted as stop:
            log.warning("%s; continue with --resume %s", stop, run_dir)
            return 128 + stop.signum
        except (ConfigError, CheckpointError, DatasetError):
            if checkpoint is None and info.is_main:
                _remove_unstarted_run(run_dir)
            raise
    finally:
        cleanup()
    if info.is_main:
        print("\n".join(miou_lines(mious)))
    return 0
