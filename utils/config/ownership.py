"""Which script owns which keys: a key set away from the defaults that a script would
silently ignore is refused, naming the script that reads it."""

from __future__ import annotations

import typing
from typing import Any

from utils.config.checks import _flat
from utils.config.loading import DEFAULTS_PATH, from_dict, read_yaml
from utils.config.schema import Config, ConfigError


def changed_keys(cfg: Config, keys: typing.Iterable[str]) -> dict[str, Any]:
    """The values of ``keys`` (dotted keys, or sections: every key under them) where ``cfg``
    differs from configs/defaults.yaml: what a script that has no use for them refuses."""
    defaults = _flat(from_dict(Config, read_yaml(DEFAULTS_PATH)))
    prefixes = tuple(keys)
    return {
        key: value
        for key, value in _flat(cfg).items()
        if any(key == p or key.startswith(p + ".") for p in prefixes) and value != defaults[key]
    }


# The keys of MaxSquare's losses, read by train_maxsquare_norm.py alone: the other scripts
# refuse them (``foreign_keys``) rather than ignore them.
MAXSQUARE_KEYS = ("loss.maxsquare",)
MAXSQUARE_OWNER = "MaxSquare's target losses (train_maxsquare_norm.py)"
DACS_KEYS = ("loss.dacs", "eval.model")
DACS_OWNER = "DACS's self-training (train_dacs_norm.py)"


def foreign_keys(cfg: Config, keys: typing.Iterable[str], owner: str, script: str) -> list[str]:
    """A problem line for each of ``keys`` that ``cfg`` sets away from the defaults: a key of
    ``owner`` (e.g. "MaxSquare's target loss (train_maxsquare_norm.py)") that ``script`` would
    silently ignore."""
    return [f"{key}={value!r}: a key of {owner}; {script} has no use for it: remove it"
            for key, value in changed_keys(cfg, keys).items()]  # fmt: skip


def refuse(script: str, problems: typing.Sequence[str]) -> None:
    """A script's load-time check: one ConfigError listing every problem, if there are any."""
    if problems:
        raise ConfigError(f"invalid config for {script}:\n  " + "\n  ".join(problems))
