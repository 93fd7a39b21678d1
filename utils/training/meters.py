"""The loop's logged values: summed on the device as they come, read once per logging step.

A step returns its values as detached tensors on the device or plain numbers; ``accumulate``
adds them up without a host sync, and a logging step turns the sums into means with one
all-reduce and one copy to the host (``LogStep``). That copy is read after the next step has
been queued, so logging never stalls the GPU; a step that writes a checkpoint reads it at once,
so no checkpoint is written unchecked. ``Progress`` writes the means to ``metrics.jsonl``,
TensorBoard and the progress bar, and stops the run when one of them is not finite.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from utils.distributed import DistInfo, all_reduce_mean
from utils.errors import UserError
from utils.logger import MetricWriter


class NonFiniteLossError(UserError, RuntimeError):
    """A loss term became NaN or infinite; the message names it and the steps."""


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


class LogStep:
    """Each key's mean over the last ``count`` steps, averaged over processes (one all-reduce),
    copied to the host without blocking: on CUDA into pinned memory behind an event, so the
    loop can queue the next step before it reads them (``read`` waits for the copy only, not
    for the step queued after it). ``first`` and ``step`` are the steps the means cover."""

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


class Progress:
    """The logged side of a run: the progress bar over the steps, the sums since the last
    logging step, the logging step waiting to be read, and the metric files (rank 0 only:
    ``writer`` is None on the other ranks)."""

    def __init__(self, run_dir: Path, start: int, total: int, info: DistInfo,
                 device: torch.device) -> None:  # fmt: skip
        self.run_dir, self.info, self.device = run_dir, info, device
        self.writer = MetricWriter(run_dir, purge_after=start) if info.is_main else None
        self.bar = tqdm(range(start, total), initial=start, total=total, desc="train",
                        disable=not info.is_main)  # fmt: skip
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count, self.first_unlogged, self.tic = 0, start, time.perf_counter()
        self.pending: LogStep | None = None  # read after the next step is queued

    def add(self, values: dict[str, Any]) -> None:
        """A step's values, once the step is queued: the previous logging step is read now
        (reading stalls nothing), then the values join the sums."""
        if self.pending is not None:
            self._report(self.pending)
            self.pending = None
        accumulate(self.sums, values)
        self.count += 1

    def log(self, step: int, lrs: dict[str, float], read_now: bool) -> None:
        """Close the interval ending at ``step``: its means are read after the next step is
        queued, or at once with ``read_now`` (before a checkpoint is written)."""
        extra = {**lrs, "sec_per_step": (time.perf_counter() - self.tic) / self.count}
        self.pending = LogStep(self.sums, self.count, self.info, self.device,
                               self.first_unlogged, step, extra)  # fmt: skip
        if read_now:
            self._report(self.pending)
            self.pending = None
        self.sums, self.count, self.first_unlogged = {}, 0, step + 1
        self.tic = time.perf_counter()

    def _report(self, entry: LogStep) -> None:
        values = entry.read()
        check_finite(values, entry.first, entry.step, self.run_dir)
        if self.writer is not None:
            self.writer.scalars(entry.step + 1, values, prefix="train/")
        self.bar.set_postfix({k: f"{values[k]:.3g}" for k in bar_keys(values)})

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def bar_keys(terms: dict[str, Any]) -> list[str]:
    """What the progress bar shows: the losses that move and the mean feature norm per domain
    (the step-wise norm loss is dr^2 at every step by construction: logs only)."""
    return [
        k for k in terms if k.startswith(("loss", "feat_norm")) and not k.startswith("loss_norm")
    ]


def check_finite(values: dict[str, float], first: int, step: int, run_dir: Path) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"loss term(s) {', '.join(bad)} became non-finite between steps {first} and {step} "
            f"({values}); the last good checkpoint is {run_dir / 'checkpoints' / 'last.pth'} "
            f"(train.log_every=1 pinpoints the step)"
        )
