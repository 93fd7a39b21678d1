"""Every setup the repository trains, named once: its training script, the config keys only it
reads, and its variants (the labels of the tables, the demo configs, how the speed benchmark
times them). The benchmarks, the provenance of results, the key checks and the tests read this
table; adding a setup is an entry here, its script, its configs, its docs page and its tests.

A key that one setup owns is refused by the other scripts when it is set away from its default
(``foreign_keys``): a key the script would silently ignore is an error naming the script that
reads it. A setup may accept another's keys where its configs are the base of that setup's
(``ignores``).

This module imports the config schema only: the scripts are named by file, and
``script_module`` imports one where a benchmark runs it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from utils.config import Config, changed_keys


class Variant(NamedTuple):
    """One way to run a setup."""

    label: str  # its row in the tables ("MaxSquare + IW + Norm")
    demo: str | None  # its config on the synthetic benchmark (configs/demo/...)
    speed: tuple[str, ...] | None = None  # benchmarks.speed: its overrides on the defaults
    start: str | None = None  # the demo config of the first stage it starts from
    baseline: str | None = None  # the same variant without the norm loss (its label)


class Setup(NamedTuple):
    """A training script and what belongs to it alone."""

    script: str  # the training script
    owner: str  # what owns ``owns``, in words
    owns: tuple[str, ...]  # the keys (or sections) only this script reads
    variants: tuple[Variant, ...]
    ignores: tuple[str, ...] = ()  # scripts whose keys this one accepts (its configs are theirs)
    reference: str | None = None  # benchmarks.speed's step of the upstream code, by name
    archs: tuple[str, ...] = ("deeplabv2",)  # the network families (model.arch) it trains


# MaxSquare's and DACS's speed runs use their configs' model and loss: the model of their
# preset, CE, lambda_target 0.1, ClassMix's pool with the ignore label.
_MAXSQUARE = ("model.preset=maxsquare", "loss.seg=ce", "loss.maxsquare.lambda_target=0.1")
_IW = (*_MAXSQUARE, "loss.maxsquare.image_wise=true")
_DACS = ("model.preset=dacs", "loss.seg=ce", "loss.dacs.mix_ignore=true")
_OFF = ("loss.lambda_norm=0",)  # each baseline is its "+ Norm" without the norm loss
# DAFormer's speed runs: its network (MiT-B5; model.backbone=mit_b0 on a CPU), AdamW, its
# additions to DACS at its GTA5 -> Cityscapes values, without rare-class sampling (a sampler,
# not a step)
_DAFORMER = ("model.arch=daformer", "model.backbone=mit_b5", "optim.optimizer=adamw",
             "optim.lr=6e-5", "optim.weight_decay=0.01", "loss.seg=ce",
             "loss.dacs.mix_ignore=true", "loss.dacs.mix_classes=batch",
             "loss.dacs.source_ce=all", "loss.dacs.ignore_top=15", "loss.dacs.ignore_bottom=120",
             "loss.dacs.fd_lambda=0.005", "loss.dacs.fd_classes=[6,7,11,12,13,14,15,16,17,18]",
             "loss.dacs.ema_alpha=0.999", "loss.dacs.jitter_strength=0.2")  # fmt: skip
MAXSQUARE_START = "configs/demo/maxsquare_source.yaml"

SETUPS: tuple[Setup, ...] = (
    Setup(
        "train_norm_only.py", "the norm loss alone", (),
        (Variant("Source only", "configs/demo/source_only.yaml", _OFF),
         Variant("Norm only", "configs/demo/norm_only.yaml", (), baseline="Source only"),
         Variant("Source only (DAFormer)", "configs/demo/daformer_source_only.yaml"),
         Variant("Norm only (DAFormer)", "configs/demo/daformer_norm_only.yaml",
                 baseline="Source only (DAFormer)")),
        # CLAN's configs are Norm only's plus D: its configs carry CLAN's values
        ignores=("train_clan_norm.py",),
        reference="reference_step",
        archs=("deeplabv2", "daformer"),
    ),
    Setup(
        "train_clan_norm.py", "CLAN's discriminator and adversarial loss",
        ("loss.lambda_adv", "loss.lambda_weight", "loss.lambda_local", "loss.eps", "optim.lr_d",
         "optim.betas_d", "optim.weight_decay_d"),
        (Variant("CLAN", "configs/demo/clan.yaml", _OFF),
         Variant("CLAN + Norm", "configs/demo/clan_norm.yaml", (), baseline="CLAN")),
        reference="reference_step",
    ),
    Setup(
        "train_maxsquare_norm.py", "MaxSquare's target losses",
        ("loss.maxsquare",),
        (Variant("Source only (MaxSquare's start)", MAXSQUARE_START),
         Variant("MaxSquare", "configs/demo/maxsquare.yaml", (*_MAXSQUARE, *_OFF),
                 MAXSQUARE_START),
         Variant("MaxSquare + Norm", "configs/demo/maxsquare_norm.yaml", _MAXSQUARE,
                 MAXSQUARE_START, "MaxSquare"),
         Variant("MaxSquare + IW", "configs/demo/maxsquare_iw.yaml", (*_IW, *_OFF),
                 MAXSQUARE_START),
         Variant("MaxSquare + IW + Norm", "configs/demo/maxsquare_iw_norm.yaml", _IW,
                 MAXSQUARE_START, "MaxSquare + IW"),
         Variant("MaxSquare + IW + Multi", "configs/demo/maxsquare_iw_multi.yaml", None,
                 MAXSQUARE_START),
         Variant("MaxSquare + IW + Multi + Norm", "configs/demo/maxsquare_iw_multi_norm.yaml",
                 None, MAXSQUARE_START, "MaxSquare + IW + Multi")),
        reference="reference_maxsquare_step",
    ),
    Setup(
        "train_dacs_norm.py", "DACS's self-training", ("loss.dacs", "eval.model"),
        (Variant("DACS", "configs/demo/dacs.yaml", (*_DACS, *_OFF)),
         Variant("DACS + Norm", "configs/demo/dacs_norm.yaml", _DACS, baseline="DACS"),
         Variant("DACS + Norm, one pass", None, (*_DACS, "loss.dacs.student_passes=one")),
         Variant("DAFormer", "configs/demo/daformer.yaml", (*_DAFORMER, *_OFF)),
         Variant("DAFormer + Norm", "configs/demo/daformer_norm.yaml", _DAFORMER,
                 baseline="DAFormer"),
         Variant("DAFormer + Norm (decoder)", "configs/demo/daformer_norm_decoder.yaml",
                 (*_DAFORMER, "loss.norm_features=decoder"), baseline="DAFormer"),
         Variant("DAFormer w/o rare-class sampling", "configs/demo/daformer_no_rcs.yaml"),
         Variant("DAFormer w/o feature distance", "configs/demo/daformer_no_fd.yaml")),
        reference="reference_dacs_step",
        archs=("deeplabv2", "daformer"),
    ),
)  # fmt: skip


def setup_of(script: str) -> Setup:
    """The setup that ``script`` (a file name, ``train_clan_norm.py``) trains."""
    for setup in SETUPS:
        if setup.script == Path(script).name:
            return setup
    raise KeyError(f"{script}: no such training script (known: {', '.join(scripts())})")


def scripts() -> list[str]:
    """Every training script, in the table's order."""
    return [setup.script for setup in SETUPS]


def variants() -> dict[str, tuple[Setup, Variant]]:
    """Every variant by its label, with its setup."""
    return {v.label: (setup, v) for setup in SETUPS for v in setup.variants}


def script_module(setup: Setup) -> ModuleType:
    """The training script's module (imported where a benchmark runs it)."""
    return importlib.import_module(Path(setup.script).stem)


def script_for_config(config: str | Path) -> Setup | None:
    """The setup that trains ``config``, told by its file name: the setup of the demo config
    whose name is the longest start of it (``maxsquare_source_multi.yaml``: the MaxSquare
    script, by ``maxsquare_source``), or None."""
    stem = Path(config).stem
    named = [(Path(v.demo).stem, setup) for setup in SETUPS for v in setup.variants if v.demo]
    fits = [(len(name), setup) for name, setup in named if stem.startswith(name)]
    return max(fits, key=lambda fit: fit[0])[1] if fits else None


def foreign_keys(cfg: Config, script: str) -> list[str]:
    """A problem line for each key that another setup owns and ``cfg`` sets away from the
    defaults: ``script`` would silently ignore it (the setups it ``ignores`` aside); and one
    for a network family (``model.arch``) that ``script`` does not train."""
    mine = setup_of(script)
    problems = []
    if cfg.model.arch not in mine.archs:
        problems.append(f"model.arch={cfg.model.arch}: {mine.script} trains model.arch="
                        f"{' or '.join(mine.archs)} only")  # fmt: skip
    for other in SETUPS:
        if other is mine or other.script in mine.ignores:
            continue
        problems += [f"{key}={value!r}: a key of {other.owner} ({other.script}); {mine.script} "
                     f"has no use for it: remove it"
                     for key, value in changed_keys(cfg, other.owns).items()]  # fmt: skip
    return problems
