"""The config's checks: every choice a key can take and every range (``CHOICES``,
``AT_LEAST`` and the tuples the modules that act on a choice import), and ``validate``, which
lists each choice, range and combination of a config that is invalid."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from utils.config.schema import PRESETS, Config, DomainConfig, _raise
from utils.schedules import WARMUP_FORMS

# Every choice a key can take, and every range: checked in one place (``validate``) when a
# config loads, before any file is written. The modules that act on a choice import it here.
AMP_CHOICES = ("off", "bf16", "fp16")
SEG_LOSSES = ("ce", "focal")
LR_SCALINGS = ("none", "linear")
BACKBONE_UPDATES = ("once", "released", "released_torch14")
PREDICT_WITH = ("sum", "c2")
ARCHS = ("deeplabv2", "daformer")  # model.arch: the network families (model.build.FAMILIES)
OPTIMIZERS = ("sgd", "adamw")  # optim.optimizer: G's optimizers (utils.training.optim.OPTIMIZERS)
# The keys of the DeepLab-v2 family: read and checked only where model.arch names it, so that
# another family brings its own subsection without them.
DEEPLABV2_KEYS = ("model.preset", "model.layers", "model.base_width", "model.multi_level",
                  "model.aspp_branches", "model.predict_with", "model.freeze_bn_stats")  # fmt: skip
# DAFormer's keys: the MiT sizes (model.mit.MIT_VARIANTS), read only where model.arch=daformer
MIT_BACKBONES = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mit_demo")
DAFORMER_KEYS = ("model.backbone", "model.head_channels")
NORM_FEATURES = ("backbone", "decoder")  # loss.norm_features (decoder: DAFormer's head only)
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
MIX_CLASSES = ("image", "batch")  # ClassMix's class pool: each image's own | the batch's
SOURCE_CE = ("valid", "all")  # the source CE's mean: over labelled pixels | over all pixels
CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ARCHS,
    "optim.optimizer": OPTIMIZERS,
    "model.predict_with": PREDICT_WITH,
    "model.backbone": MIT_BACKBONES,
    "loss.norm_features": NORM_FEATURES,
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
    "loss.dacs.mix_classes": MIX_CLASSES,
    "loss.dacs.source_ce": SOURCE_CE,
}
AT_LEAST: dict[str, float] = {  # key: smallest valid value
    "model.num_classes": 1, "model.base_width": 1, "model.d_width": 1, "model.head_channels": 1,
    "data.batch_size": 1, "data.num_workers": 0, "eval.batch_size": 1, "eval.num_workers": 0,
    "data.synthetic.seed": 0, "data.synthetic.num_source": 0, "data.synthetic.num_train": 0,
    "data.synthetic.num_val": 0, "data.synthetic.num_synthia": 0, "data.synthetic.num_night": 0,
    "data.synthetic.num_night_val": 0, "data.rcs.min_pixels": 0, "data.rcs.min_crop_ratio": 0,
    "loss.focal_gamma": 0, "loss.lambda_norm": 0, "loss.lambda_adv": 0, "loss.lambda_weight": 0,
    "loss.lambda_local": 0, "loss.eps": 0, "loss.maxsquare.lambda_target": 0,
    "loss.maxsquare.iw_ratio": 0, "loss.maxsquare.lambda_aux": 0, "loss.maxsquare.threshold": 0,
    "loss.dacs.lambda_mix": 0, "loss.dacs.threshold": 0, "loss.dacs.ema_alpha": 0,
    "loss.dacs.jitter_p": 0, "loss.dacs.jitter_strength": 0, "loss.dacs.blur_p": 0,
    "loss.dacs.blur_kernel": 0, "loss.dacs.ignore_top": 0, "loss.dacs.ignore_bottom": 0,
    "loss.dacs.fd_lambda": 0,
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
    problems += _cat_max_ratio_problems(name, d)
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


def _cat_max_ratio_problems(name: str, d: DomainConfig) -> list[str]:
    """``cat_max_ratio`` in (0, 1], and below 1 only where crops of a labelled set are drawn:
    the source's (the target's labels are not read in training, the val set is not cropped)."""
    key, ratio = f"data.{name}.cat_max_ratio", d.cat_max_ratio
    if not 0 < ratio <= 1:
        return [f"{key}: expected a number > 0 and <= 1 (1 = any crop), got {ratio}"]
    if ratio == 1:
        return []
    if name == "target":
        return [f"{key}={ratio}: a crop's class shares need labels, and the target's are not "
                f"read in training: 1.0"]  # fmt: skip
    if d.crop is None:
        return [f"{key}={ratio}: it chooses among crops, and data.{name}.crop is null: 1.0"]
    return []


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


def _problems(cfg: Config, defaults: dict[str, Any] | None = None) -> list[str]:
    """``validate``'s lines, in this order: each choice, range and combination of ``cfg`` that
    is invalid (and, given the defaults.yaml dict, another family's keys that it sets)."""
    problems = _table_problems(cfg)
    problems += _model_problems(cfg, defaults)
    problems += _range_problems(cfg)
    problems += _data_problems(cfg)
    problems += _graph_problems(cfg)
    return problems


def _table_problems(cfg: Config) -> list[str]:
    """Each key of ``CHOICES`` off its choices, and of ``AT_LEAST`` below its smallest value
    (each family's own keys only where ``model.arch`` names it)."""
    other_family = {"deeplabv2": DAFORMER_KEYS, "daformer": DEEPLABV2_KEYS}.get(cfg.model.arch, ())
    flat = {k: v for k, v in _flat(cfg).items() if k not in other_family}
    problems = [
        f"{key}: expected one of {', '.join(choices)}, got {flat[key]!r}"
        for key, choices in CHOICES.items()
        if key in flat and flat[key] not in choices
    ]
    problems += [
        f"{key}: expected a number >= {low:g}, got {flat[key]!r}"
        for key, low in AT_LEAST.items()
        if key in flat and not flat[key] >= low  # (NaN fails too)
    ]
    return problems


def _model_problems(cfg: Config, defaults: dict[str, Any] | None) -> list[str]:
    """The DeepLab-v2 network's preset, its depth and its ASPP branches; the norm loss's
    features where the family has them; DAFormer's keys set away from ``defaults`` (the
    defaults.yaml dict) while the family is DeepLab-v2."""
    if cfg.model.arch != "deeplabv2":
        return []
    problems = []
    flat = _flat(cfg)
    problems += [f"{key}={flat[key]}: a key of model.arch=daformer; this config's family is "
                 f"deeplabv2" for key in DAFORMER_KEYS
                 if defaults is not None and flat[key] != _get(defaults, key)]  # fmt: skip
    if cfg.loss.norm_features == "decoder":
        problems.append("loss.norm_features: DeepLab-v2 (model.arch=deeplabv2) has no decoder; "
                        "its norm loss reads layer4: backbone")  # fmt: skip
    if cfg.model.preset not in ("", *PRESETS):
        problems.append(f"model.preset: expected one of {', '.join(PRESETS)} or '', got "
                        f"{cfg.model.preset!r}")  # fmt: skip
    if len(cfg.model.layers) != 4 or min(cfg.model.layers) < 1:
        problems.append(f"model.layers: expected 4 block counts >= 1, got {list(cfg.model.layers)}")
    if cfg.model.aspp_branches not in (2, 4):
        problems.append(f"model.aspp_branches: expected 2 or 4, got {cfg.model.aspp_branches}")
    return problems


def _get(data: dict[str, Any], key: str) -> Any:
    """The value of a dotted key in a nested dict."""
    for part in key.split("."):
        data = data[part]
    return data


def _range_problems(cfg: Config) -> list[str]:
    """Each value outside what it can take that the tables cannot say: the class sets scored,
    the losses' bounds of 1, the blur's sigma range, the momentum below 1, the device."""
    problems = []
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
    ds = cfg.loss.dacs
    if not 0 < ds.fd_min_ratio <= 1:
        problems.append(f"loss.dacs.fd_min_ratio: expected 0 < ratio <= 1, got {ds.fd_min_ratio}")
    k = cfg.model.num_classes
    if any(not 0 <= c < k for c in ds.fd_classes) or len(set(ds.fd_classes)) < len(ds.fd_classes):
        problems.append(f"loss.dacs.fd_classes: expected distinct trainIds in 0..{k - 1}, got "
                        f"{list(ds.fd_classes)}")  # fmt: skip
    if not cfg.data.rcs.temperature > 0:
        problems.append(f"data.rcs.temperature: expected a number > 0, got "
                        f"{cfg.data.rcs.temperature}")  # fmt: skip
    lo, hi = cfg.loss.dacs.blur_sigma
    if not 0 < lo <= hi:
        problems.append(f"loss.dacs.blur_sigma: expected 0 < low <= high, got [{lo}, {hi}]")
    if cfg.optim.optimizer != "sgd" and cfg.optim.backbone_updates != "once":
        problems.append(f"optim.backbone_updates={cfg.optim.backbone_updates}: the released "
                        f"update is SGD's; optim.optimizer is {cfg.optim.optimizer}")  # fmt: skip
    if not cfg.optim.momentum < 1:
        problems.append(f"optim.momentum: expected a number < 1, got {cfg.optim.momentum}")
    if cfg.train.device != "auto":
        try:
            torch.device(cfg.train.device)
        except RuntimeError:
            problems.append(f"train.device: expected auto, cpu, cuda or cuda:N, got "
                            f"{cfg.train.device!r}")  # fmt: skip
    return problems


def _data_problems(cfg: Config) -> list[str]:
    """The data's sections, the synthetic images' sizes, and a val set to evaluate on."""
    problems = []
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
    return problems
