"""Typed configuration: YAML files into nested frozen dataclasses, with dotted overrides.

Every value lives in ``configs/defaults.yaml`` (the paper's settings, each with its symbol);
an experiment YAML holds only what differs and may chain to another with ``_base_: FILE``.
Command-line overrides ``key.sub=value`` are parsed as YAML scalars. Unknown keys, missing
keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

DEFAULTS_PATH = Path(__file__).resolve().parent.parent / "configs" / "defaults.yaml"


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    num_classes: int
    layers: tuple[int, ...]
    base_width: int
    multi_level: bool
    aspp_branches: int
    predict_with: str
    freeze_bn_stats: bool
    init_from: str
    d_width: int


@dataclass(frozen=True)
class DomainConfig:
    dataset: str
    root: str
    split: str
    list_file: str
    resize: tuple[int, int] | None
    scale_range: tuple[float, float]
    image_rescale: tuple[tuple[float, float], ...]
    crop: tuple[int, int] | None
    mirror: bool


@dataclass(frozen=True)
class SyntheticConfig:
    root: str
    seed: int
    num_source: int
    num_train: int
    num_val: int
    source_size: tuple[int, int]
    target_size: tuple[int, int]


@dataclass(frozen=True)
class DataConfig:
    source: DomainConfig
    target: DomainConfig
    val: DomainConfig
    synthetic: SyntheticConfig
    batch_size: int
    num_workers: int


@dataclass(frozen=True)
class LossConfig:
    seg: str
    focal_gamma: float
    lambda_norm: float
    delta_r: float
    clamp_norm_damping: bool
    lambda_adv: float
    lambda_weight: float
    lambda_local: float
    eps: float


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    momentum: float
    weight_decay: float
    power: float
    warmup_steps: int
    schedule_steps: int
    lr_d: float
    betas_d: tuple[float, float]
    weight_decay_d: float
    lr_scaling: str
    backbone_updates: str
    warmup_form: str


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int
    seed: int
    device: str
    out_dir: str
    run_name: str
    log_every: int
    image_every: int
    eval_every: int
    save_every: int
    keep_checkpoints: int
    amp: str
    channels_last: bool
    compile: bool


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int
    num_workers: int
    flip: bool


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    loss: LossConfig
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads '1e-3' (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(
                f'{key}: expected a string, got {value!r} (quote words such as "off" in YAML files)'
            )
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested dict, rejecting unknown and missing keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
            f"(valid keys under '{prefix.rstrip('.') or '<root>'}': {', '.join(names)})"
        )
    missing = [prefix + n for n in names if n not in data]
    if missing:
        raise ConfigError(f"missing config key(s): {', '.join(missing)}")
    kwargs = {}
    for name in names:
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], tp, prefix + name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML mapping, following ``_base_`` (relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base is not None:
        data = _merge(read_yaml(path.parent / base), data)
    return data


_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=")


def split_overrides(files: list[str]) -> tuple[list[str], list[str]]:
    """A ``nargs="+"`` file option followed by positional overrides takes them in too
    (``--restore a.pth b.pth data.val.root=X``): split off the words that read as
    ``key.sub=value`` and are not existing paths. Returns (files, overrides)."""
    moved = [w for w in files if _OVERRIDE.match(w) and not Path(w).exists()]
    return [w for w in files if w not in moved], moved


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=1e-3'`` -> (['optim', 'lr'], 0.001); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from err
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads off/on/yes/no as booleans; keep the word

    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict; the key path must exist."""
    data = _merge(data, {})
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: unknown key {'.'.join(path[: i + 1])}")
            node[part] = child = dict(child)
            node = child
        if path[-1] not in node:
            raise ConfigError(
                f"override {text!r}: unknown key {'.'.join(path)} "
                f"(valid keys here: {', '.join(sorted(node))})"
            )
        if isinstance(node[path[-1]], dict):
            raise ConfigError(f"override {text!r}: {'.'.join(path)} is a section, not a value")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """defaults.yaml, then ``path`` (if given), then overrides -> a validated ``Config``."""
    data = read_yaml(DEFAULTS_PATH)
    if path is not None:
        data = _merge(data, read_yaml(path))
    return from_dict(Config, apply_overrides(data, overrides))


def config_from_dict(data: dict[str, Any], overrides: typing.Iterable[str] = ()) -> Config:
    """A ``Config`` from a stored dict (e.g. a checkpoint's), merged onto the defaults."""
    return from_dict(Config, apply_overrides(_merge(read_yaml(DEFAULTS_PATH), data), overrides))


def dump_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
