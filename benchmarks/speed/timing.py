"""Timing and profiling of a step: wall time between device synchronisations, the step's
peak device memory (``PeakMemory``) and, from ``torch.profiler``, the GPU busy fraction, the
kernels and the host's launch calls per step (``profile_steps``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from utils.training.state import TrainState


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _state_bytes(state: TrainState) -> int:
    """Device bytes this state owns now: parameters, buffers, gradients, optimizer state."""
    tensors = []
    for module in state.modules.values():
        tensors += [*module.parameters(), *module.buffers()]
        tensors += [p.grad for p in module.parameters() if p.grad is not None]
    for opt in state.optimizers.values():
        tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


class PeakMemory:
    """Peak device memory of one step, with the resident memory of the other states (not the
    one stepped) subtracted; ``None`` off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.others = device, 0

    def start(self, state: TrainState) -> None:
        if self.device.type == "cuda":
            self.others = torch.cuda.memory_allocated(self.device) - _state_bytes(state)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) - self.others


LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch",
                "cudaLaunchCooperativeKernel")  # fmt: skip


def busy_time(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time a device was busy, with
    overlapping kernels (several streams) counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def profile_steps(steps: Sequence[Callable[[], object]], device: torch.device) -> dict[str, float]:
    """``torch.profiler`` over ``steps``: GPU busy fraction (kernel intervals' union over the
    wall time), GPU kernels per step and the host's kernel/graph launch calls per step."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for step in steps:
            step()
        _sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e for e in prof.events() if e.name.startswith(LAUNCH_CALLS)]
    n = len(steps)
    busy = busy_time([(e.time_range.start, e.time_range.end) for e in kernels])
    return {"busy": busy / wall_us, "kernels": len(kernels) / n, "launches": len(launches) / n}
