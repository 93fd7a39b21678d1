"""The keys a config sets away from the defaults, and a script's load-time refusal: the pieces
with which a script refuses the keys that another setup owns (``utils.setups.foreign_keys``)."""

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


def refuse(script: str, problems: typing.Sequence[str]) -> None:
    """A script's load-time check: one ConfigError listing every problem, if there are any."""
    if problems:
        raise ConfigError(f"invalid config for {script}:\n  " + "\n  ".join(problems))
