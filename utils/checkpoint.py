"""Checkpoints: one dict of tensors and plain containers, written atomically, loaded safely.

This module owns the training checkpoint's format; everything that writes, reads or resumes
one calls it::

    {"setup": "clan_norm", "step": 2000,
     "models": {"G": state_dict, "D": ...}, "optimizers": {"G": state_dict, "D": ...},
     "scaler": GradScaler state (train.amp=fp16) or None,
     "rng": {"torch": CPU RNG state, "cuda": the GPU's (on CUDA),
             "ranks": [each process's {"torch", "cuda"}] (under torchrun)},
     "world_size": processes, "config": the resolved config as a dict, "metric": mIoU or None}
"""

from __future__ import annotations

import logging
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.config import config_from_dict
from utils.errors import UserError
from utils.files import atomic_write

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same folder, fsync, then
    ``os.replace``, so a crash or kill mid-write never leaves a corrupt or missing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


# What torch.load raises on a file that is not a PyTorch checkpoint (truncated archives, text,
# other pickles): its unpickler reports malformed input with any of these.
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError,
               AttributeError, struct.error, zipfile.BadZipFile)  # fmt: skip


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise CheckpointError(f"checkpoint {path}: not a file ({what})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, *_UNREADABLE) as err:
        if not _looks_like_torch_file(path):
            raise CheckpointError(
                f"checkpoint {path}: not a PyTorch file (neither a zip archive nor a pickle)"
            ) from err
        if not isinstance(err, pickle.UnpicklingError):
            raise CheckpointError(
                f"checkpoint {path}: cannot be read (truncated or not a PyTorch file?): "
                f"{_first_reason(err)}"
            ) from err
        raise CheckpointError(
            f"checkpoint {path}: refused by the safe loader (weights_only=True): it holds "
            f"something other than tensors and plain containers, e.g. pickled code. Only load "
            f"files you trust ({_first_reason(err)})"
        ) from err


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle (protocol 2+ starts with 0x80)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _first_reason(err: BaseException) -> str:
    """The line of torch's (long, multi-line) message that says what was wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Unsupported", "WeightsUnpickler error:")) and len(line) > 24:
            return line
    return lines[0] if lines else type(err).__name__


def step_in_name(path: str | Path) -> int | None:
    """The step in a snapshot's file name (``step_002000.pth``, the released code's
    ``GTA5_2000.pth``): the last run of digits in its stem; None without one."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` with strict key and shape matching; the error lists missing,
    unexpected and mis-shaped keys and names ``source``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"{source}: weights do not match the model"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_preview(shapes)}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def training_checkpoint(
    setup: str,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    config: dict[str, Any],
    metric: float | None,
    device: torch.device,
    rng_ranks: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Everything a run needs to continue (the module docstring's format): models, optimizers
    (in their eager settings), the fp16 GradScaler, step, RNG (CPU, and the GPU's on CUDA),
    config, last metric. ``rng_ranks``: every process's RNG states (``rng_state``) under
    torchrun, so that each rank's dropout draws continue as its own."""
    rng = rng_state(device)
    if rng_ranks is not None and len(rng_ranks) > 1:
        rng["ranks"] = rng_ranks
    return {
        "setup": setup,
        "step": step,
        "models": {name: m.state_dict() for name, m in modules.items()},
        "optimizers": {name: plain_state_dict(o) for name, o in optimizers.items()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
        "config": config,
        "metric": metric,
    }


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random states: the CPU's, and the GPU's on CUDA."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


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


def restore_training(
    ckpt: dict[str, Any],
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    source: str,
    rank: int = 0,
) -> int:
    """Load a training checkpoint into built modules and optimizers (after DDP, compilation and
    the GradScaler are set up, so the optimizer buffers take the parameters' memory layout) and
    restore the RNG, process ``rank``'s where the checkpoint holds each process's; returns its
    step."""
    for name, module in modules.items():
        load_state_strict(module, ckpt["models"].get(name, {}), f"{source} (model {name})")
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
        match_param_layout(opt)
    if scaler is not None:
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        else:
            log.warning(
                "%s holds no GradScaler state (not trained with train.amp=fp16): the loss scale "
                "starts afresh, so this is not an exact continuation",
                source,
            )
    ranks = ckpt["rng"].get("ranks") or [ckpt["rng"]]
    rng = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return int(ckpt["step"])


def match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimizer buffers (momentum, Adam's moments) their parameter's strides: a
    checkpoint keeps the layout of the run that wrote it (NCHW from a CPU run, or with
    ``train.channels_last=false``), the parameters may now be channels_last."""
    for p, slots in opt.state.items():
        for key, value in slots.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                slots[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def is_training_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is this repository's training checkpoint."""
    return isinstance(obj, dict) and isinstance(obj.get("models"), dict)


def generator_of(ckpt: dict[str, Any], path: str | Path) -> tuple[dict[str, Any], dict | None, str]:
    """G's state dict, the stored config (None when absent) and a one-line description of a
    training checkpoint."""
    if "G" not in ckpt["models"]:
        raise CheckpointError(f"{path}: a checkpoint without models.G: {sorted(ckpt['models'])}")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    return ckpt["models"]["G"], config, f"setup {ckpt.get('setup')!r}, step {ckpt.get('step')}"


def resume_checkpoint(path: str | Path, setup: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--resume`` names (a run folder means its ``checkpoints/last.pth``),
    loaded; an error when it is missing or another setup's."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pth"
    if not p.is_file():
        raise CheckpointError(f"--resume {path}: no checkpoint at {p}")
    ckpt = load_checkpoint(p)
    if not isinstance(ckpt, dict) or ckpt.get("setup") != setup:
        found = ckpt.get("setup") if isinstance(ckpt, dict) else None
        raise CheckpointError(
            f"--resume {p}: checkpoint of setup {found!r}, this script trains {setup!r}"
        )
    return p, ckpt


def check_same_stream(
    ckpt: dict[str, Any], batch_size: int, world_size: int, path: str | Path
) -> None:
    """Refuse a resume whose batch size or process count differs from the checkpoint's: the
    data stream's position is counted in batches per process, so it would silently shift."""
    before = (config_from_dict(ckpt["config"]).data.batch_size, int(ckpt.get("world_size", 1)))
    now = (batch_size, world_size)
    if before != now:
        raise CheckpointError(
            f"--resume {path}: the run was trained with data.batch_size={before[0]} on "
            f"{before[1]} process(es), this resume has data.batch_size={now[0]} on {now[1]}; "
            f"the data stream would not continue where it stopped: resume with the same values"
        )
