"""The command line's overrides: the words ``key.sub=value`` that argparse leaves among the
positional arguments or hands to a ``nargs="+"`` option."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path
from typing import Any

_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=")


def split_overrides(words: typing.Sequence[str]) -> tuple[list[str], list[str]]:
    """Split off the words that read as ``key.sub=value`` and are not existing paths. Returns
    (the other words, the overrides)."""
    moved = [w for w in words if _OVERRIDE.match(w) and not Path(w).exists()]
    return [w for w in words if w not in moved], moved


def take_overrides(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    dest: str,
    convert: typing.Callable[[str], Any] = str,
    expected: str = "",
    choices: typing.Sequence[str] = (),
    at_least_one: bool = True,
) -> None:
    """A ``nargs="+"`` option followed by the positional overrides takes them in too, since
    argparse cannot tell them apart (``--seeds 0 1 model.init_from=X``, ``--restore a.pth
    data.val.root=X``): move the words that read as overrides to the front of
    ``args.overrides`` (ahead of those argparse found), and ``convert`` the option's other
    words. A word
    that does not convert (``ValueError``) or is not among ``choices`` (when given), or no
    word left, is a usage error naming the option and what it expects (``expected``, e.g.
    "integers"); no word is allowed for a ``nargs="*"`` option (``at_least_one=False``). An
    option left at a default that is not a list of words is kept as it is."""
    words = getattr(args, dest)
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        return
    words, moved = split_overrides(words)
    args.overrides = [*moved, *args.overrides]
    option = "--" + dest.replace("_", "-")
    if not words and at_least_one:
        parser.error(f"{option}: no value given")
    values, bad = [], []
    for word in words:
        try:
            if choices and word not in choices:
                raise ValueError(word)
            values.append(convert(word))
        except ValueError:
            bad.append(repr(word))
    if bad:
        expected = f"one of {', '.join(map(repr, choices))}" if choices else expected or "values"
        parser.error(f"{option}: expected {expected}, got {', '.join(bad)}")
    setattr(args, dest, values)
