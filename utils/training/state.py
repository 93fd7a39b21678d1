"""What a setup builds and a step works with: ``TrainState``, and how the loop prepares it
(memory layout, DDP, compilation, mixed precision) before the first step.

A training script's ``build(cfg, device)`` returns a ``TrainState``; its
``train_step(state, source, target, step)`` does one optimisation step (forward, backward,
``optimizer.step()``) through the state's helpers and returns a dict of values to log:
detached scalar tensors on the state's device or plain numbers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dataset.datasets import Batch
from model.build import build_model
from model.contract import Segmenter
from utils.checkpoint import restore_training, training_checkpoint
from utils.config import Config, to_dict
from utils.distributed import DistInfo, broadcast_tensors
from utils.schedules import norm_damping
from utils.training.optim import OPTIMIZERS

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainState:
    """What a setup builds: G (and other modules) and their optimizers with base learning rates.

    Every optimizer param group carries ``lr_mult`` (x10 for the classifiers); the loop sets
    ``lr = poly_lr(step, base_lr) * lr_mult`` before each step. The loop then fills ``runners``
    (what a step calls for a training forward: the module itself, or its DDP / compiled
    wrapper), ``amp_dtype`` and ``scaler`` (a GradScaler, enabled for float16 only, that serves
    every optimizer); ``modules`` stay the plain modules (checkpoints, methods, evaluation).
    ``schedule(cfg, step)`` gives the step's scalars (dampings, switches) as numbers, and any
    random draws as CPU tensors, each a function of the step; a step reads them through
    ``values(step)``. Every module is checkpointed; ``scored`` names the one evaluated.
    """

    cfg: Config
    device: torch.device
    model: Segmenter
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    base_lrs: dict[str, float]
    uses_target: bool
    partial_g_passes: bool = False  # some of G's passes leave parameters unused (DDP must look)
    schedule: Callable[[Config, int], dict[str, Any]] = lambda cfg, step: {}
    scored: str = "G"  # the module that evaluation and image grids use (a teacher's name)
    static_values: dict[str, torch.Tensor] | None = None  # set by a CUDA graph's runner
    runners: dict[str, nn.Module] = field(default_factory=dict)
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def values(self, step: int) -> dict[str, Any]:
        """The step's values: ``schedule(cfg, step)``, or under ``train.cuda_graph`` the device
        tensors that the graph reads them from (its runner fills them before each step, so the
        step's code must only compute with them, never branch on them)."""
        if self.static_values is not None:
            return self.static_values
        return self.schedule(self.cfg, step)

    @property
    def scored_model(self) -> nn.Module:
        """The model that evaluation scores and image grids show (``scored``)."""
        return self.modules[self.scored]

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

    def checkpoint(
        self,
        setup: str,
        step: int,
        metric: float | None = None,
        rng_ranks: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, Any]:
        """This state as a training checkpoint at ``step`` (``utils.checkpoint`` owns the
        format), with every process's random states where ``rng_ranks`` holds them."""
        return training_checkpoint(setup, step, self.modules, self.optimizers, self.scaler,
                                   to_dict(self.cfg), metric, self.device, rng_ranks)  # fmt: skip

    def restore(self, ckpt: dict[str, Any], source: str, rank: int = 0) -> int:
        """Load a training checkpoint into this prepared state (after ``prepare``: the
        GradScaler exists, and the optimizer buffers take the parameters' memory layout), with
        process ``rank``'s random states; returns its step."""
        return restore_training(ckpt, self.modules, self.optimizers, self.scaler, self.device,
                                source, rank)  # fmt: skip

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
        trained = any(p.requires_grad for p in module.parameters())
        if info.distributed and not trained:  # a teacher, a frozen copy: made from this rank's
            # initial G, they start as rank 0's, the G that DDP gives every rank
            broadcast_tensors([*module.parameters(), *module.buffers()], info)
        if info.distributed and trained:  # (a mean teacher is no DDP module: it has no grads)
            ids = [device.index] if device.type == "cuda" else None
            # Looking for unused parameters costs a graph traversal per pass, and DDP warns on
            # every rank when it finds none: only where some go unused (G in Norm only, whose
            # target pass skips the heads). D's step uses all of D.
            unused = name == "G" and state.partial_g_passes
            runner = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)
        if t.compile:
            runner = torch.compile(runner, mode=t.compile_mode)
        state.runners[name] = runner


BuildFn = Callable[[Config, torch.device], TrainState]


StepFn = Callable[[TrainState, Batch, "Batch | None", int], dict[str, "torch.Tensor | float"]]


def build_generator(cfg: Config, device: torch.device) -> tuple[Segmenter, torch.optim.Optimizer]:
    """G in train mode on ``device`` (``model.arch``) and its optimizer (``optim.optimizer``; SGD:
    backbone x1, classifiers x10, each weight updated once per step, or as the released code
    did: ``optim.backbone_updates``)."""
    model = build_model(cfg.model, cfg.loss.norm_features).to(device)
    model.train()
    return model, OPTIMIZERS[cfg.optim.optimizer](cfg.optim, model)


def norm_step_values(cfg: Config, step: int) -> dict[str, float]:
    """The step value of every setup with the norm loss, a pure function of the step: the
    norm-loss damping d_norm."""
    n = cfg.optim.schedule_steps
    return {"damping_norm": norm_damping(step, n, cfg.loss.clamp_norm_damping)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
