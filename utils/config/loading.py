"""Typed configuration: YAML files into nested frozen dataclasses, with dotted overrides.

Every value lives in ``configs/defaults.yaml`` (the paper's settings, each with its symbol);
an experiment YAML holds only what differs and may chain to another with ``_base_: FILE``.
Command-line overrides ``key.sub=value`` are parsed as YAML scalars. Unknown keys, missing
keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Union

import torch
import yaml

from utils.errors import UserError
from utils.schedules import WARMUP_FORMS

DEFAULTS_PATH = Path(__file__).resolve().parents[2] / "configs" / "defaults.yaml"


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


# What a pair of numbers means, shown in the message when a value does not fit.
Size = Annotated[tuple[int, int], "[W, H]"]
Range = Annotated[tuple[float, float], "[low, high]"]


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


class Preset(NamedTuple):
    """The three switches of ``model.*`` that tell the public DeepLab-v2 layouts apart."""

    multi_level: bool  # C1 reads layer3
    aspp_branches: int  # ASPP convs the forward uses
    predict_with: str  # "sum" (p1 + p2) or "c2"


PRESETS: dict[str, Preset] = {
    "clan": Preset(False, 4, "sum"),  # CLAN, FeatureToAdapt, this repository's default
    "adaptsegnet": Preset(True, 2, "c2"),  # released forward used 2 of the 4 stored branches
    "maxsquare": Preset(True, 2, "c2"),  # same network as AdaptSegNet's multi-level model
    "advent": Preset(True, 4, "c2"),  # ADVENT's multi-level model uses all four
    "dacs": Preset(False, 4, "c2"),  # DACS's one classifier: C2, four branches on layer4
}


def apply_preset(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``model.preset`` (when set) overriding multi_level, aspp_branches and
    predict_with (``validate`` has checked the name)."""
    if not cfg.preset:
        return cfg
    p = PRESETS[cfg.preset]
    return dataclasses.replace(
        cfg, multi_level=p.multi_level, aspp_branches=p.aspp_branches, predict_with=p.predict_with
    )


@dataclass(frozen=True)
class DomainConfig:
    dataset: str
    root: str
    split: str
    list_file: str
    resize: Size | None
    scale_range: Range
    image_rescale: tuple[Annotated[tuple[float, float], "[scale, probability]"], ...]
    crop: Size | None
    mirror: bool
    blur: bool
    label_root: str  # dataset folder: its labels ("": none)
    label_suffix: str
    image_suffix: str
    label_map: str  # dataset folder: YAML id -> trainId ("": the labels are trainIds)
    skip_unreadable: bool  # dataset folder, training: skip and count unreadable images
    condition: str  # acdc, darkzurich
    city: str  # crosscity


@dataclass(frozen=True)
class SyntheticConfig:
    root: str
    seed: int
    num_source: int
    num_train: int
    num_val: int
    source_size: Size
    target_size: Size
    num_synthia: int
    synthia_size: Size
    num_night: int
    num_night_val: int


@dataclass(frozen=True)
class DataConfig:
    source: DomainConfig
    target: DomainConfig
    val: DomainConfig
    synthetic: SyntheticConfig
    batch_size: int
    num_workers: int


@dataclass(frozen=True)
class MaxSquareConfig:
    image_wise: bool
    lambda_target: float
    iw_ratio: float
    multi: bool
    lambda_aux: float
    threshold: float


@dataclass(frozen=True)
class DacsConfig:
    lambda_mix: float
    threshold: float
    mix_ignore: bool
    ema_alpha: float
    teacher_bn: str
    jitter_p: float
    jitter_strength: float
    blur_p: float
    blur_sigma: Range
    blur_kernel: float
    student_passes: str


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
    maxsquare: MaxSquareConfig
    dacs: DacsConfig


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    momentum: float
    weight_decay: float
    power: float
    warmup_steps: int
    schedule_steps: int
    lr_d: float
    betas_d: Annotated[tuple[float, float], "[beta1, beta2]"]
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
    compile_mode: str
    cuda_graph: bool


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int
    num_workers: int
    flip: bool
    label_size: str
    classes: tuple[int, ...]
    mask_absent: bool
    subset_protocol: str
    model: str


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    loss: LossConfig
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig


_WORDS = {  # a type in words: (one, several)
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true or false values"),
    str: ("a string", "strings"),
}


def describe(tp: Any, plural: bool = False) -> str:
    """An annotation in words: ``Size | None`` -> "a pair of integers [W, H], or null"."""
    meaning = ""
    if typing.get_origin(tp) is Annotated:
        tp, meaning = typing.get_args(tp)[0], f" {typing.get_args(tp)[1]}"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        words = " or ".join(describe(a, plural) for a in args if a is not type(None))
        return words + (", or null" if type(None) in args else "")
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0], plural=True)}{meaning}"
        if len(args) == 2 and args[0] == args[1]:
            return f"{'pairs' if plural else 'a pair'} of {describe(args[0], True)}{meaning}"
        return f"a list of {len(args)} values ({', '.join(map(describe, args))}){meaning}"
    return _WORDS[tp][plural] + meaning


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


def _raise(problems: typing.Sequence[str]) -> None:
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


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


# Every choice a key can take, and every range: checked in one place (``validate``) when a
# config loads, before any file is written. The modules that act on a choice import it here.
AMP_CHOICES = ("off", "bf16", "fp16")
SEG_LOSSES = ("ce", "focal")
LR_SCALINGS = ("none", "linear")
BACKBONE_UPDATES = ("once", "released", "released_torch14")
PREDICT_WITH = ("sum", "c2")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DATASETS = ("gta5", "synthia", "cityscapes", "folder", "acdc", "darkzurich", "crosscity")
# Each real benchmark's parts (dataset.targets): conditions, times of day, cities and splits.
ACDC_CONDITIONS = ("fog", "night", "rain", "snow", "all")
DARKZURICH_CONDITIONS = ("night", "twilight", "day")
CROSSCITY_CITIES = ("Rome", "Rio", "Tokyo", "Taipei")
SPLITS = {"acdc": ("train", "val", "test"), "darkzurich": ("train", "val", "test"),
          "crosscity": ("train", "test")}  # fmt: skip
NO_VAL = "none"  # data.val.dataset: no labelled val set; training runs without evaluating
LABELLED_SPLITS = {"acdc": ("train", "val"), "darkzurich": ("val",), "crosscity": ("test",)}
FOLDER_KEYS = ("label_root", "label_suffix", "image_suffix", "label_map", "skip_unreadable")
EVAL_CLASSES = (19, 16, 13)  # all 19 classes, SYNTHIA's 16 and 13 (dataset.labels.CLASS_SUBSETS)
LABEL_SIZES = ("full", "input")  # val labels at full size (AdaptSegNet's) | resized (MaxSquare's)
SUBSET_PROTOCOLS = ("ignore_outside", "full_matrix")  # a class subset's IoU: its own matrix, or
# the full one's (utils.evaluation.metrics.ConfusionMatrix.iou)
EVAL_MODELS = ("student", "teacher")  # which of a self-training run's models is scored
TEACHER_BN = ("keep", "copy")  # the teacher's BatchNorm statistics: its own | the student's
STUDENT_PASSES = ("two", "one")  # DACS's student forward: a pass per batch | one joint batch
CHOICES: dict[str, tuple[str, ...]] = {
    "model.predict_with": PREDICT_WITH,
    "data.source.dataset": DATASETS,
    "data.target.dataset": DATASETS,
    "data.val.dataset": (*DATASETS, "none"),
    "loss.seg": SEG_LOSSES,
    "optim.lr_scaling": LR_SCALINGS,
    "optim.backbone_updates": BACKBONE_UPDATES,
    "optim.warmup_form": WARMUP_FORMS,
    "train.amp": AMP_CHOICES,
    "train.compile_mode": COMPILE_MODES,
    "eval.label_size": LABEL_SIZES,
    "eval.subset_protocol": SUBSET_PROTOCOLS,
    "eval.model": EVAL_MODELS,
    "loss.dacs.teacher_bn": TEACHER_BN,
    "loss.dacs.student_passes": STUDENT_PASSES,
}
AT_LEAST: dict[str, float] = {  # key: smallest valid value
    "model.num_classes": 1, "model.base_width": 1, "model.d_width": 1,
    "data.batch_size": 1, "data.num_workers": 0, "eval.batch_size": 1, "eval.num_workers": 0,
    "data.synthetic.seed": 0, "data.synthetic.num_source": 0, "data.synthetic.num_train": 0,
    "data.synthetic.num_val": 0, "data.synthetic.num_synthia": 0, "data.synthetic.num_night": 0,
    "data.synthetic.num_night_val": 0,
    "loss.focal_gamma": 0, "loss.lambda_norm": 0, "loss.lambda_adv": 0, "loss.lambda_weight": 0,
    "loss.lambda_local": 0, "loss.eps": 0, "loss.maxsquare.lambda_target": 0,
    "loss.maxsquare.iw_ratio": 0, "loss.maxsquare.lambda_aux": 0, "loss.maxsquare.threshold": 0,
    "loss.dacs.lambda_mix": 0, "loss.dacs.threshold": 0, "loss.dacs.ema_alpha": 0,
    "loss.dacs.jitter_p": 0, "loss.dacs.jitter_strength": 0, "loss.dacs.blur_p": 0,
    "loss.dacs.blur_kernel": 0,
    "optim.lr": 0, "optim.momentum": 0, "optim.weight_decay": 0, "optim.power": 0,
    "optim.warmup_steps": 0, "optim.schedule_steps": 1, "optim.lr_d": 0, "optim.weight_decay_d": 0,
    "train.max_steps": 1, "train.log_every": 1, "train.image_every": 0, "train.eval_every": 0,
    "train.save_every": 0, "train.keep_checkpoints": 0,
}  # fmt: skip


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def _domain_problems(name: str, d: DomainConfig, batch_size: int) -> list[str]:
    k = f"data.{name}"
    problems = [
        f"{k}.{key}: expected a positive [W, H] pair or null, got {list(size)}"
        for key, size in (("resize", d.resize), ("crop", d.crop))
        if size is not None and min(size) <= 0
    ]
    lo, hi = d.scale_range
    if not 0 < lo <= hi:
        problems.append(f"{k}.scale_range: expected 0 < low <= high, got {list(d.scale_range)}")
    if any(not f > 0 or not 0 <= p <= 1 for f, p in d.image_rescale) or (
        sum(p for _, p in d.image_rescale) > 1
    ):
        problems.append(
            f"{k}.image_rescale: expected [scale > 0, probability] pairs whose probabilities sum "
            f"to at most 1, got {[list(x) for x in d.image_rescale]}"
        )
    problems += _dataset_problems(name, d)
    if name == "val":
        if d.crop is not None:
            problems.append(f"{k}.crop: evaluation scores whole images (labels at full size): null")
        if d.blur:
            problems.append(f"{k}.blur: evaluation scores the images as they are: false")
        return problems
    if d.crop is not None and d.image_rescale:
        problems.append(
            f"{k}: crop and image_rescale cannot be combined (the image is rescaled, its label "
            f"is not, so a crop would not match): set {k}.crop=null or {k}.image_rescale=[]"
        )
    random_size = d.image_rescale or tuple(d.scale_range) != (1.0, 1.0)
    if d.crop is None and random_size and batch_size > 1:
        problems.append(
            f"{k}: without a crop, a random rescale gives each image its own size, so "
            f"data.batch_size={batch_size} images cannot be stacked: use data.batch_size=1 (as "
            f"the released code) or a crop"
        )
    return problems


def _dataset_problems(name: str, d: DomainConfig) -> list[str]:
    """The keys a section's dataset reads: a folder's label keys, a benchmark's part and
    split; a key that its dataset would ignore is a problem, as an unknown key is."""
    k, problems = f"data.{name}", []
    if d.dataset == NO_VAL:
        return problems
    defaults = {"label_root": "", "label_suffix": ".png", "image_suffix": "", "label_map": "",
                "skip_unreadable": False}  # fmt: skip
    if d.dataset != "folder":
        problems += [f"{k}.{key}={getattr(d, key)!r}: only dataset folder reads it"
                     for key in FOLDER_KEYS if getattr(d, key) != defaults[key]]  # fmt: skip
    else:
        if not d.label_root and name != "target":
            problems.append(f"{k}.label_root: a folder {name} set needs its labels: set it")
        if d.label_map and not d.label_root:
            problems.append(f"{k}.label_map: a map of labels, but {k}.label_root is not set")
        if not d.label_suffix:
            problems.append(f"{k}.label_suffix: expected the end of a label's name, e.g. .png")
        if name == "val" and d.skip_unreadable:
            problems.append(f"{k}.skip_unreadable: evaluation scores every image: false")
    parts = {"acdc": ("condition", ACDC_CONDITIONS), "darkzurich": ("condition",
             DARKZURICH_CONDITIONS), "crosscity": ("city", CROSSCITY_CITIES)}  # fmt: skip
    key, choices = parts.get(d.dataset, ("", ()))
    for other in ("condition", "city"):
        value = getattr(d, other)
        if other == key and value not in choices:
            problems.append(f"{k}.{other}: expected one of {', '.join(choices)} for dataset "
                            f"{d.dataset}, got {value!r}")  # fmt: skip
        elif other != key and value:
            problems.append(f"{k}.{other}={value!r}: dataset {d.dataset} has no {other} to choose")
    if d.dataset in SPLITS and d.split not in SPLITS[d.dataset]:
        problems.append(f"{k}.split: expected one of {', '.join(SPLITS[d.dataset])} for dataset "
                        f"{d.dataset}, got {d.split!r}")  # fmt: skip
    elif name != "target" and d.dataset in LABELLED_SPLITS:
        labelled = LABELLED_SPLITS[d.dataset]
        if d.split not in labelled or (d.dataset == "darkzurich" and d.condition != "night"):
            where = "val/night" if d.dataset == "darkzurich" else " and ".join(labelled)
            problems.append(f"{k}: {d.dataset} has labels for {where} only, and the {name} set "
                            f"needs them: got split {d.split!r}"
                            + (f", condition {d.condition!r}" if d.condition else ""))  # fmt: skip
    return problems


def _graph_problems(cfg: Config) -> list[str]:
    """What a whole-step CUDA graph cannot run: it replays fixed kernels on fixed buffers."""
    t = cfg.train
    if not t.cuda_graph:
        return []
    problems = []
    if t.amp == "fp16":
        problems.append(
            "train.cuda_graph=true with train.amp=fp16: the GradScaler reads its overflow check "
            "on the host every step, which a CUDA graph cannot capture: use train.amp=bf16 or off"
        )
    if t.compile:
        problems.append(
            "train.cuda_graph=true with train.compile=true: choose one (train.compile_mode="
            "reduce-overhead is torch.compile's own CUDA graphs)"
        )
    for name in ("source", "target"):
        d = getattr(cfg.data, name)
        if d.image_rescale or (tuple(d.scale_range) != (1.0, 1.0) and d.crop is None):
            problems.append(
                f"train.cuda_graph=true: data.{name} gives batches of varying size (random "
                f"rescale without a crop), and a CUDA graph replays one shape: set data.{name}.crop"
            )
        elif d.crop is None and d.resize is None:
            problems.append(
                f"train.cuda_graph=true: data.{name} keeps each image's own size (no resize, no "
                f"crop), and a CUDA graph replays one shape: set data.{name}.resize or .crop"
            )
    return problems


def validate(cfg: Config) -> Config:
    """Check every choice, range and combination of ``cfg``; one ``ConfigError`` lists them all,
    each naming its key, the value and what was expected. Returns ``cfg``."""
    _raise(_problems(cfg))
    return cfg


def _problems(cfg: Config) -> list[str]:
    """``validate``'s lines: each choice, range and combination of ``cfg`` that is invalid."""
    flat = _flat(cfg)
    problems = [
        f"{key}: expected one of {', '.join(choices)}, got {flat[key]!r}"
        for key, choices in CHOICES.items()
        if flat[key] not in choices
    ]
    problems += [
        f"{key}: expected a number >= {low:g}, got {flat[key]!r}"
        for key, low in AT_LEAST.items()
        if not flat[key] >= low  # (NaN fails too)
    ]
    if cfg.model.preset not in ("", *PRESETS):
        problems.append(f"model.preset: expected one of {', '.join(PRESETS)} or '', got "
                        f"{cfg.model.preset!r}")  # fmt: skip
    if len(cfg.model.layers) != 4 or min(cfg.model.layers) < 1:
        problems.append(f"model.layers: expected 4 block counts >= 1, got {list(cfg.model.layers)}")
    if cfg.model.aspp_branches not in (2, 4):
        problems.append(f"model.aspp_branches: expected 2 or 4, got {cfg.model.aspp_branches}")
    classes = cfg.eval.classes
    if (
        not classes
        or any(k not in EVAL_CLASSES for k in classes)
        or len(set(classes)) < len(classes)
    ):
        problems.append(f"eval.classes: expected a list of distinct class counts from "
                        f"{', '.join(map(str, EVAL_CLASSES))}, got {list(classes)}")  # fmt: skip
    for key, value in (
        ("loss.maxsquare.iw_ratio", cfg.loss.maxsquare.iw_ratio),
        ("loss.maxsquare.threshold", cfg.loss.maxsquare.threshold),
        ("loss.dacs.threshold", cfg.loss.dacs.threshold),
        ("loss.dacs.ema_alpha", cfg.loss.dacs.ema_alpha),
        ("loss.dacs.jitter_p", cfg.loss.dacs.jitter_p),
        ("loss.dacs.blur_p", cfg.loss.dacs.blur_p),
        ("loss.dacs.blur_kernel", cfg.loss.dacs.blur_kernel),
    ):
        if not value <= 1:
            problems.append(f"{key}: expected a number <= 1, got {value}")
    lo, hi = cfg.loss.dacs.blur_sigma
    if not 0 < lo <= hi:
        problems.append(f"loss.dacs.blur_sigma: expected 0 < low <= high, got [{lo}, {hi}]")
    if not cfg.optim.momentum < 1:
        problems.append(f"optim.momentum: expected a number < 1, got {cfg.optim.momentum}")
    if cfg.train.device != "auto":
        try:
            torch.device(cfg.train.device)
        except RuntimeError:
            problems.append(f"train.device: expected auto, cpu, cuda or cuda:N, got "
                            f"{cfg.train.device!r}")  # fmt: skip
    for name in ("source", "target", "val"):
        problems += _domain_problems(name, getattr(cfg.data, name), cfg.data.batch_size)
    for name in ("source_size", "target_size", "synthia_size"):  # the synthetic images' sizes
        size = getattr(cfg.data.synthetic, name)
        if min(size) < 32:
            problems.append(f"data.synthetic.{name}: expected [W, H], both >= 32, got {list(size)}")
    if cfg.data.val.dataset == NO_VAL and cfg.train.eval_every:
        problems.append(
            f"train.eval_every={cfg.train.eval_every}: data.val.dataset is none, so there is "
            f"nothing to evaluate on: set it to 0, or name a val set"
        )
    problems += _graph_problems(cfg)
    return problems


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
    cfg = _build(Config, data, "", problems, read_yaml(DEFAULTS_PATH))
    mistyped = [line.split(":")[0].split("[")[0] for line in problems[typed:]]
    if cfg is not None:
        problems += [line for line in _problems(cfg) if not any(k in line for k in mistyped)]
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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
