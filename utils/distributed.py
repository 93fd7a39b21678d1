"""Device choice and torchrun-compatible distributed setup (nccl on CUDA, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. ``distributed``: started by torchrun (RANK and
    WORLD_SIZE set), so there is a process group and the models are wrapped in DDP, even with
    one process (``torchrun --nproc_per_node=1`` runs the nccl/gloo code paths)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device, checked.

    On CUDA each process of a job takes its own GPU: ``cuda`` means GPU ``local_rank`` and
    ``cuda:N`` GPU ``N + local_rank`` (torchrun's local ranks 0, 1, ... on GPUs N, N+1, ...;
    without torchrun the local rank is 0). A GPU index this machine does not have is an error.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"train.device={name!r}: not a device (expected auto, cpu, cuda or cuda:N)"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={name!r}: CUDA is not available on this machine "
                f"(train.device=auto or cpu runs on the CPU)"
            )
        first = device.index or 0
        count = torch.cuda.device_count()
        if first + local_rank >= count:
            who = f" for local rank {local_rank} (GPU {first} + {local_rank})" if local_rank else ""
            raise ConfigError(
                f"train.device={name!r}: needs GPU {first + local_rank}{who}, but this machine "
                f"has {count} GPU(s), indices 0..{count - 1}"
            )
        device = torch.device("cuda", first + local_rank)
    return device


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``resolve_device``, and a chosen GPU made the current one, so that pinned memory, nccl
    and ``torch.cuda`` calls without an index all use it (not GPU 0)."""
    device = resolve_device(name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), pick the device and start
    the process group with the backend for its type (``select_device`` picks the device)."""
    env, info = os.environ, DistInfo()
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        info = DistInfo(rank, world, local, distributed=True)
    device = select_device(device_name, info.local_rank)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return info, device


def describe(info: DistInfo, device: torch.device) -> str:
    """One line for the log: the device (and the GPU's name), and the rank and backend under
    torchrun."""
    text = f"device {device}"
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    if info.distributed:
        text += f", rank {info.rank} of {info.world_size}, backend {dist.get_backend()}"
    return text


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without torchrun)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensors(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Rank 0's values of ``tensors``, in place on every rank (nothing without torchrun)."""
    if info.distributed:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes (identity without torchrun)."""
    if info.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


def all_reduce_max(value: float, info: DistInfo, device: torch.device) -> float:
    """Largest ``value`` over processes."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
