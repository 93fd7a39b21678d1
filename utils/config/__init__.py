"""Typed configuration: YAML files into nested frozen dataclasses, with dotted overrides.

Every name is imported from here (``from utils.config import load_config``); each module holds
one duty:

- ``schema``: the nested frozen dataclasses (``Config`` and its sections), the ``Size`` and
  ``Range`` annotations, the model presets (``PRESETS``, ``apply_preset``), ``describe`` (an
  annotation in words) and ``ConfigError``.
- ``loading``: ``configs/defaults.yaml`` (``DEFAULTS_PATH``), then an experiment YAML (with
  ``_base_``), then the ``key.sub=value`` overrides, built into a validated ``Config``
  (``load_config``, ``config_from_dict``, ``from_dict``); back to a dict or a YAML file
  (``to_dict``, ``dump_yaml``); the shipped configs that write a checkpoint
  (``configs_writing``).
- ``checks``: every choice a key can take and every range (``CHOICES``, ``AT_LEAST`` and the
  choice tuples other modules import), and ``validate``.
- ``ownership``: the keys a config sets away from the defaults (``changed_keys``) and a
  script's load-time refusal (``refuse``), with which the scripts refuse the keys another setup
  owns (``utils.setups`` names the owners).
- ``arguments``: the overrides among a command line's words (``split_overrides``,
  ``take_overrides``).
"""

from utils.config.arguments import (
    split_overrides,
    take_overrides,
)
from utils.config.checks import (
    ACDC_CONDITIONS,
    AMP_CHOICES,
    ARCHS,
    AT_LEAST,
    BACKBONE_UPDATES,
    CHOICES,
    COMPILE_MODES,
    CROSSCITY_CITIES,
    DAFORMER_KEYS,
    DARKZURICH_CONDITIONS,
    DATASETS,
    DEEPLABV2_KEYS,
    EVAL_CLASSES,
    EVAL_MODELS,
    FOLDER_KEYS,
    LABEL_SIZES,
    LABELLED_SPLITS,
    LR_SCALINGS,
    MIT_BACKBONES,
    NO_VAL,
    NORM_FEATURES,
    OPTIMIZERS,
    PREDICT_WITH,
    SEG_LOSSES,
    SPLITS,
    STUDENT_PASSES,
    SUBSET_PROTOCOLS,
    TEACHER_BN,
    validate,
)
from utils.config.loading import (
    DEFAULTS_PATH,
    apply_overrides,
    config_from_dict,
    configs_writing,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    to_dict,
)
from utils.config.ownership import (
    changed_keys,
    refuse,
)
from utils.config.schema import (
    PRESETS,
    Config,
    ConfigError,
    DacsConfig,
    DataConfig,
    DomainConfig,
    EvalConfig,
    LossConfig,
    MaxSquareConfig,
    ModelConfig,
    OptimConfig,
    Preset,
    Range,
    RareClassConfig,
    Size,
    SyntheticConfig,
    TrainConfig,
    apply_preset,
    describe,
)

__all__ = [
    "split_overrides",
    "take_overrides",
    "ACDC_CONDITIONS",
    "AMP_CHOICES",
    "ARCHS",
    "AT_LEAST",
    "BACKBONE_UPDATES",
    "CHOICES",
    "COMPILE_MODES",
    "CROSSCITY_CITIES",
    "DAFORMER_KEYS",
    "DARKZURICH_CONDITIONS",
    "DATASETS",
    "DEEPLABV2_KEYS",
    "EVAL_CLASSES",
    "EVAL_MODELS",
    "FOLDER_KEYS",
    "LABEL_SIZES",
    "LABELLED_SPLITS",
    "LR_SCALINGS",
    "MIT_BACKBONES",
    "NO_VAL",
    "NORM_FEATURES",
    "OPTIMIZERS",
    "PREDICT_WITH",
    "SEG_LOSSES",
    "SPLITS",
    "STUDENT_PASSES",
    "SUBSET_PROTOCOLS",
    "TEACHER_BN",
    "validate",
    "DEFAULTS_PATH",
    "apply_overrides",
    "config_from_dict",
    "configs_writing",
    "dump_yaml",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "to_dict",
    "changed_keys",
    "refuse",
    "PRESETS",
    "Config",
    "ConfigError",
    "DacsConfig",
    "DataConfig",
    "DomainConfig",
    "EvalConfig",
    "LossConfig",
    "MaxSquareConfig",
    "ModelConfig",
    "OptimConfig",
    "Preset",
    "Range",
    "RareClassConfig",
    "Size",
    "SyntheticConfig",
    "TrainConfig",
    "apply_preset",
    "describe",
]
