"""The config's schema: the nested frozen dataclasses that ``configs/defaults.yaml`` fills, the
model presets, the annotations' words for messages, and ``ConfigError``."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, Union

from utils.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


# What a pair of numbers means, shown in the message when a value does not fit.
Size = Annotated[tuple[int, int], "[W, H]"]
Range = Annotated[tuple[float, float], "[low, high]"]


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # the network family; the keys up to freeze_bn_stats are DeepLab-v2's
    preset: str
    num_classes: int
    layers: tuple[int, ...]
    base_width: int
    multi_level: bool
    aspp_branches: int
    predict_with: str
    freeze_bn_stats: bool
    backbone: str  # daformer's keys: the MiT size and the head's channels
    head_channels: int
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
    cat_max_ratio: float  # a crop's largest class share must be below it (1.0: any crop)
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
class RareClassConfig:
    enabled: bool  # DAFormer's rare-class sampling of the source (dataset.rare_class)
    temperature: float
    min_pixels: int
    min_crop_ratio: float
    cache_dir: str  # the class statistics' cache ("": the user's cache folder)


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
    rcs: RareClassConfig
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
    mix_classes: str  # DAFormer's keys from here: ClassMix's class pool
    ignore_top: int  # pseudo-label weight zeroed on these rows
    ignore_bottom: int
    source_ce: str
    fd_lambda: float  # the ImageNet feature distance
    fd_classes: tuple[int, ...]
    fd_min_ratio: float


@dataclass(frozen=True)
class LossConfig:
    seg: str
    focal_gamma: float
    lambda_norm: float
    delta_r: float
    norm_features: str
    clamp_norm_damping: bool
    lambda_adv: float
    lambda_weight: float
    lambda_local: float
    eps: float
    maxsquare: MaxSquareConfig
    dacs: DacsConfig


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str
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


def _raise(problems: typing.Sequence[str]) -> None:
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
