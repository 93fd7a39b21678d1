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
from pathlib import Path
from typing import Annotated, Any, Union

import yaml

from utils.config.checks import _problems
from utils.config.schema import Config, ConfigError, _raise, describe
from utils.files import atomic_write

DEFAULTS_PATH = Path(__file__).resolve().parents[2] / "configs" / "defaults.yaml"


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    expected = describe(tp)
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
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
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
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


def _build(
    cls: type, data: Any, prefix: str, problems: list[str], fallback: dict[str, Any] | None
) -> Any:
    """``cls`` from a nested dict, each unknown, missing or mistyped key a line added to
    ``problems``; a key that has a value in ``fallback`` (the defaults, the same nesting) takes
    it, so that the rest can still be checked. None where nothing could stand in."""
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {data!r}")
        return None
    fallback = fallback if isinstance(fallback, dict) else {}
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        problems.append(f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
                        f"(valid keys under '{where}': {', '.join(names)})")  # fmt: skip
    missing = [prefix + n for n in names if n not in data]
    if missing:
        problems.append(f"missing config key(s): {', '.join(missing)}")
    kwargs = {}
    for name in names:
        tp, given, default = hints[name], data.get(name, fallback.get(name)), fallback.get(name)
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, given, f"{prefix}{name}.", problems, default)
            continue
        try:
            kwargs[name] = _coerce(given, tp, prefix + name)
        except ConfigError as err:
            if name in data:
                problems.append(str(err))
            try:
                kwargs[name] = _coerce(default, tp, prefix + name)
            except ConfigError:
                kwargs[name] = None
    if any(v is None and not _optional(hints[k]) for k, v in kwargs.items()):
        return None
    return cls(**kwargs)


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested dict; one ``ConfigError`` lists every
    unknown, missing and mistyped key."""
    problems: list[str] = []
    built = _build(cls, data, prefix, problems, None)
    _raise(problems)
    return built


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


def apply_overrides(
    data: dict[str, Any], overrides: typing.Iterable[str], problems: list[str] | None = None
) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict; the key path must exist. A bad
    override is skipped and is a line of ``problems`` (given), else of one ``ConfigError``."""
    own = problems is None
    problems = [] if problems is None else problems
    data = _merge(data, {})
    for text in overrides:
        try:
            _apply_override(data, text)
        except ConfigError as err:
            problems.append(str(err))
    if own:
        _raise(problems)
    return data


def _apply_override(data: dict[str, Any], text: str) -> None:
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


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """defaults.yaml, then ``path`` (if given), then overrides -> a validated ``Config``."""
    data = read_yaml(DEFAULTS_PATH)
    if path is not None:
        data = _merge(data, read_yaml(path))
    return _resolve(data, overrides)


def config_from_dict(data: dict[str, Any], overrides: typing.Iterable[str] = ()) -> Config:
    """A ``Config`` from a stored dict (e.g. a checkpoint's), merged onto the defaults."""
    return _resolve(_merge(read_yaml(DEFAULTS_PATH), data), overrides)


def _resolve(data: dict[str, Any], overrides: typing.Iterable[str]) -> Config:
    """``data`` with ``overrides``, built and validated; one ``ConfigError`` lists every bad
    override, unknown or mistyped key and invalid value. A mistyped value stands in with its
    default for the checks of the others, which leave out the lines that name its key."""
    problems: list[str] = []
    data = apply_overrides(data, overrides, problems)
    typed = len(problems)
    defaults = read_yaml(DEFAULTS_PATH)
    cfg = _build(Config, data, "", problems, defaults)
    mistyped = [line.split(":")[0].split("[")[0] for line in problems[typed:]]
    if cfg is not None:
        problems += [line for line in _problems(cfg, defaults)
                     if not any(k in line for k in mistyped)]  # fmt: skip
    _raise(problems)
    return cfg


def configs_writing(path: str | Path) -> list[Path]:
    """The shipped configs whose runs write the checkpoint ``path``
    (``<train.out_dir>/<train.run_name>/checkpoints/...``, a fixed run name): where a missing
    ``model.init_from`` of another stage's run was meant to come from."""
    run_dir = Path(path).resolve().parent.parent
    found = []
    for config in sorted(DEFAULTS_PATH.parent.rglob("*.yaml")):
        if config == DEFAULTS_PATH:
            continue
        t = load_config(config).train
        if t.run_name and (Path(t.out_dir) / t.run_name).resolve() == run_dir:
            found.append(config.relative_to(DEFAULTS_PATH.parent.parent))
    return found


def dump_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a temporary file, then a rename)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
