"""Files written atomically (``atomic_write``): checkpoints, JSON, PNGs (``save_png``) and
figures, so a kill mid-write never leaves half a file under the final name."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = False
) -> None:
    """``write(f)`` fills a new temporary file beside ``path`` (``f`` open in binary mode),
    which then replaces ``path`` in one ``os.replace``: a crash or kill mid-write leaves the
    file that was there (or none), never half of the new one. On any error, Ctrl-C included,
    the temporary file is removed. ``fsync``: flush it to disk before the rename, so the new
    file also survives a power cut.

    The temporary name (``.<name>.<pid>.<random>.tmp``) is created exclusively, so concurrent
    writers never share one, and ends in ``.tmp``: a library that infers the format from the
    file name must be given it (``format="PNG"``). Its permissions follow the umask, as
    ``open(path, "wb")`` would set them. An ``OSError`` names ``path``, not the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:  # created here, so the cleanup below never removes another writer's file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:  # a missing or read-only folder
        raise _naming(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise _naming(path, err) from err
        raise


def _naming(path: Path, err: OSError) -> OSError:
    """``err`` (which has an errno) about ``path``, the file the user sees; the same errno
    gives the same ``OSError`` subclass."""
    return OSError(err.errno, err.strerror, str(path))


def save_png(array: np.ndarray, path: Path) -> Path:
    """``array`` ((H, W) or (H, W, 3) uint8) as a PNG at ``path``, atomically, its folder
    created; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, partial(Image.fromarray(array).save, format="PNG"))
    return path
