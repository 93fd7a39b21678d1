"""The repository's error types and the command-line boundary that reports them.

A ``UserError`` is a problem with what the user gave (a config key, a file, a dataset, an
argument), not with the code: the scripts print its message as ``error: <message>`` and exit
with status 2, with no traceback. Any other exception is a bug and keeps its traceback.
``--debug`` (or ``FTA_DEBUG=1``) shows the traceback for every error.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_USER_ERROR = 2
# OSErrors about the output location (permissions, a full or read-only disk, a file where a
# folder should be, a file-size limit): the user's disk or folder, not the code.
_OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                  errno.ENOTDIR, errno.EFBIG, errno.EEXIST, errno.EISDIR}  # fmt: skip
# Said in words where the system's text would puzzle ("File exists" for a folder to make).
_OUTPUT_WORDS = {errno.EEXIST: "a file is there, where a folder should be",
                 errno.EISDIR: "a folder is there, where a file should be"}  # fmt: skip


class UserError(Exception):
    """Bad input: the message names the key, file or value and what was expected."""


class UsageError(UserError, ValueError):
    """A command-line argument that cannot be used (e.g. ensemble weights that do not fit)."""


class PredictionError(UserError, ValueError):
    """A prediction PNG on disk that cannot be scored (wrong size, channels or values)."""


class MissingPredictionError(UserError, FileNotFoundError):
    """A prediction PNG (or the folder of them) that is not there."""


class OutputExistsError(UserError, FileExistsError):
    """An output (run folder, prediction files) that exists and would be overwritten."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: read by ``run``, which shows full tracebacks when it is given."""
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of any error (or FTA_DEBUG=1)"
    )


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``, so that a value the code cannot use is a
    usage error naming the option, not a traceback later."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return integer


def _debugging(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("FTA_DEBUG", "") not in ("", "0")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call a script's ``main(argv)``: a ``UserError``, or an ``OSError`` about an unwritable or
    full output location, prints ``error: <message>`` on stderr and returns 2; ``--debug``
    re-raises it with its traceback. Other exceptions propagate (bugs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except UserError as err:
        if _debugging(argv):
            raise
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:
        if err.errno not in _OUTPUT_ERRNOS or _debugging(argv):
            raise
        where = err.filename2 or err.filename or "the output"  # a rename's target is the 2nd
        print(f"error: cannot write {where}: {_OUTPUT_WORDS.get(err.errno, err.strerror)}",
              file=sys.stderr)  # fmt: skip
    return EXIT_USER_ERROR


def refuse_overwrite(given: Path, option: str, targets: Sequence[Path] | None = None) -> None:
    """The scripts' one overwrite guard, called before any work unless ``--overwrite``: an
    error naming what this run would replace. ``given`` is what the user passed as ``option``:
    a folder, of which the files among ``targets`` (this run's outputs) that exist are named
    (targets outside it are not checked); or, without ``targets``, an output file, refused
    when it exists."""
    if targets is None:
        if given.exists():
            raise OutputExistsError(f"{option} {given} exists: pass --overwrite to replace it")
        return
    existing = [p for p in targets if p.exists() and given in p.parents]
    if existing:
        shown = ", ".join(str(p) for p in existing[:3])
        raise OutputExistsError(
            f"{option} {given} already holds {len(existing)} of this run's files ({shown}"
            f"{', ...' if len(existing) > 3 else ''}): pass --overwrite to replace them"
        )
