"""Checkpoints: one dict of tensors and plain containers, written atomically, loaded safely."""

from __future__ import annotations

import os
import pickle
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file."""


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same folder, fsync, then
    ``os.replace``, so a crash or kill mid-write never leaves a corrupt or missing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # name the file the user sees
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


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
