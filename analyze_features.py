r"""Feature-space analysis of trained checkpoints: do G's backbone feature norms grow, and do
the source and target features move together (the paper's Fig. 1 and 3)?

    python analyze_features.py --restore runs/RUN/checkpoints/last.pth --out analysis/
    python analyze_features.py --restore src_only.pth norm_only.pth clan_norm.pth --out DIR \
        --images 20 --pixels-per-domain 2000 --seed 0
    python analyze_features.py --restore GTA2Cityscapes_CLAN.pth --preset clan --out DIR

For each checkpoint: G's layer4 features F (stride 8) in eval mode, without gradients, on N
source images (``data.source``, with labels) and N target images from the target's *val*
split (``data.val``: its train split has no labels), each image at its section's resize
(no crop, rescale or mirror; ``data.source.resize: null`` means full-size GTA5 images, e.g.
override ``data.source.resize=[1280,720]`` for speed). Labels are brought to F's grid by
majority vote. The N images of each domain and the pixels sampled from them (the same
number from each image) are drawn with ``--seed`` and do not depend on the weights: every
checkpoint is shown on the same pixels.

Checkpoints load as in ``evaluate_cityscapes.py``: the config stored in the first one (for
the data and the device; each checkpoint's own for its model), ``--config`` instead, the
defaults for files from elsewhere, with ``--preset`` and ``key.sub=value`` overrides on top.

Written into ``--out`` (refused if it already holds one of these, unless ``--overwrite``):

    norm_hist.png            per-pixel feature norms, source against target, a panel per
                             checkpoint on shared axes
    norm_hist_per_class.png  the same per class (a row per class, a column per checkpoint)
    pca.png, tsne.png        the sampled pixels in 2-D (PCA, t-SNE), a row per
                             checkpoint, coloured by domain and by class
    analysis.json            mean norms per domain and class, the proxy A-distance and the
                             per-class MMD^2 of every checkpoint, the images and the sample

and the same numbers are printed as markdown tables. Definitions and formulas (majority vote,
PAD, unbiased MMD^2 with the median-heuristic Gaussian kernel): ``utils/analysis/features.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dataset.build import build_dataset
from dataset.datasets import SegmentationDataset
from dataset.labels import CLASS_NAMES
from model.build import preset_name
from model.contract import Segmenter
from utils.analysis import plots
from utils.analysis.features import (
    DOMAINS,
    MIN_CLASS_PIXELS,
    DomainFeatures,
    choose_images,
    class_mmd2,
    embed,
    extract_domain,
    mean_norms,
    proxy_a_distance,
)
from utils.config import PRESETS, DomainConfig, take_overrides, to_dict
from utils.errors import (
    OutputExistsError,
    UsageError,
    add_debug_flag,
    at_least,
    refuse_overwrite,
    run,
)
from utils.evaluation.metrics import SHORT_NAMES
from utils.evaluation.prepare import prepare_eval
from utils.evaluation.reports import short_names
from utils.logger import setup_logging
from utils.provenance import command_line, write_results

log = logging.getLogger("analyze")

FIGURES = ("norm_hist.png", "norm_hist_per_class.png", "pca.png", "tsne.png")
OUTPUTS = (*FIGURES, "analysis.json")
DEFINITIONS = {
    "features": "G's layer4 output F (stride 8), eval mode; norm = ||F||_2 per pixel",
    "labels": "majority label of the label pixels in each feature cell (ignored where 255 "
    "is the most frequent)",
    "pad": "2 (1 - 2 err), err = held-out error of LogisticRegression(C=1) on standardised "
    "features, fit on the sampled pixels of half of each domain's images, tested on the rest",
    "mmd2": "unbiased MMD^2 (Gretton et al. 2012), Gaussian kernel exp(-d^2 / (2 s^2)), s^2 = "
    f"median squared distance of the pooled sample; null for a class with fewer than "
    f"{MIN_CLASS_PIXELS} sampled pixels in a domain",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--restore",
        nargs="+",
        required=True,
        metavar="CKPT",
        help="weights of G (any layout); several: compared on the same pixels",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for figures and JSON")
    parser.add_argument("--config", help="YAML for the model and data (default: checkpoint's)")
    parser.add_argument(
        "--preset", choices=list(PRESETS), help="network layout (sets model.preset)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=20,
        metavar="N",
        help="images per domain (default 20; at least 2)",
    )
    parser.add_argument(
        "--pixels-per-domain",
        type=int,
        default=2000,
        metavar="P",
        help="sampled pixels per domain for PAD, MMD and the scatter plots, "
        "split evenly over the images (default 2000)",
    )
    parser.add_argument(
        "--seed", type=at_least(0), default=0, help="seed of the image and pixel draws"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files in --out")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    take_overrides(parser, args, "restore")
    if args.images < 2:
        parser.error(f"--images {args.images}: at least 2 (PAD holds out half of the images)")
    if args.pixels_per_domain < args.images:
        parser.error(
            f"--pixels-per-domain {args.pixels_per_domain}: at least one per image "
            f"(--images {args.images})"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    out = Path(args.out)
    check_outputs(out, args.overwrite)
    overrides = [*args.overrides, *([f"model.preset={args.preset}"] if args.preset else [])]
    ev = prepare_eval(args.restore, args.config, overrides, val=False)  # its own datasets below
    cfg, device = ev.cfg, ev.device
    datasets = {
        "source": analysis_dataset(cfg.data.source),
        "target": analysis_dataset(cfg.data.val),
    }
    indices = {d: choose(datasets[d], d, args.images, args.seed) for d in DOMAINS}
    log.info("%d checkpoints, %d images and %d sampled pixels per domain, on %s",
             len(args.restore), args.images, args.pixels_per_domain, device)  # fmt: skip

    names = short_names(args.restore)
    checkpoints, norms, pca, tsne = [], [], [], []
    for index, (path, name) in enumerate(zip(args.restore, names)):
        model, model_cfg, _ = ev.restore(index)
        feats = features(model.to(device), datasets, indices, args.pixels_per_domain, args.seed,
                         device, name)  # fmt: skip
        del model
        checkpoints.append({"restore": path, "name": name, "preset": preset_name(model_cfg),
                            **summarise(feats, args.seed)})  # fmt: skip
        norms.append({d: f.norms for d, f in feats.items()})
        pooled = np.concatenate([feats[d].features for d in DOMAINS])  # (P_s + P_t) x C
        coords = project(pooled, args.seed, name)
        pca.append(coords["pca"])
        tsne.append(coords["tsne"])
        shared = feats  # its labels and sample: the same for every checkpoint

    out.mkdir(parents=True, exist_ok=True)
    write_figures(out, names, shared, norms, pca, tsne)
    fields = {
        "checkpoints": checkpoints,
        "images": {d: [datasets[d].items[i][2] for i in indices[d]] for d in DOMAINS},
        "sampled_pixels": {d: sample_counts(shared[d]) for d in DOMAINS},
        "seed": args.seed,
        "definitions": DEFINITIONS,
    }
    command = command_line("analyze_features.py", argv)
    write_results(out / "analysis.json", fields, command, to_dict(cfg), device)
    print(format_tables(checkpoints))
    log.info("figures and analysis.json written to %s", out)
    return 0


def check_outputs(out: Path, overwrite: bool) -> None:
    """An error, before any work, when ``out`` is a file or already holds one of the outputs
    (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: a file, not a folder")
    if not overwrite:
        refuse_overwrite(out, "--out", [out / name for name in OUTPUTS])


def choose(dataset: SegmentationDataset, domain: str, count: int, seed: int) -> list[int]:
    """The ``count`` images of ``domain`` to analyse, drawn with ``seed``."""
    if len(dataset) < count:
        raise UsageError(
            f"--images {count}: the {domain} set has only {len(dataset)} images ({dataset.root})"
        )
    return choose_images(len(dataset), count, seed, stream=DOMAINS.index(domain))


def features(
    model: Segmenter,
    datasets: dict[str, SegmentationDataset],
    indices: dict[str, list[int]],
    pixels: int,
    seed: int,
    device: torch.device,
    name: str,
) -> dict[str, DomainFeatures]:
    """One checkpoint's features on both domains' images, with ``pixels`` sampled pixels per
    domain drawn with ``seed``."""
    return {
        domain: extract_domain(model, datasets[domain], indices[domain], pixels, device,
                               seed=seed, stream=DOMAINS.index(domain), desc=f"{name}: {domain}")
        for domain in DOMAINS
    }  # fmt: skip


def project(pooled: np.ndarray, seed: int, name: str) -> dict[str, np.ndarray]:
    """The sampled pixels' 2-D PCA and t-SNE embeddings, seeded, a step of a progress bar each
    (t-SNE takes tens of seconds on a few thousand pixels)."""
    bar = tqdm(("pca", "tsne"), desc=f"{name}: projections", unit="projection", leave=False)
    return {method: embed(pooled, method, seed) for method in bar}


def analysis_dataset(cfg: DomainConfig) -> SegmentationDataset:
    """A data section's images with labels, as evaluated: its resize only (no crop, rescale
    or mirror), labels at their full resolution."""
    whole = replace(cfg, crop=None, mirror=False, scale_range=(1.0, 1.0), image_rescale=())
    return build_dataset(whole, with_labels=True, evaluation=True)


def summarise(feats: dict[str, DomainFeatures], seed: int) -> dict[str, Any]:
    """One checkpoint's numbers: mean norms, PAD and MMD^2 (overall and per class)."""
    source, target = feats["source"], feats["target"]
    for domain, f in feats.items():
        holding = np.unique(f.sample.image).size
        if holding < 2:
            raise UsageError(f"only {holding} of the {domain} images hold labelled pixels (PAD "
                             f"needs 2 or more): raise --images")  # fmt: skip
    mean, per_class = {}, {}
    for domain, f in feats.items():
        mean[domain], per_class[domain] = mean_norms(f.norms, f.labels)
    pad, err = proxy_a_distance(
        source.features, target.features, source.sample.image, target.sample.image, seed
    )
    mmd_all, mmd_class = class_mmd2(
        source.features, target.features, source.sample.label, target.sample.label
    )
    return {
        "mean_norm": mean,
        "mean_norm_per_class": {
            name: {d: per_class[d][c] for d in DOMAINS} for c, name in enumerate(CLASS_NAMES)
        },
        "pad": pad,
        "domain_classifier_error": err,
        "mmd2": mmd_all,
        "mmd2_per_class": dict(zip(CLASS_NAMES, mmd_class)),
    }


def sample_counts(f: DomainFeatures) -> dict[str, Any]:
    counts = np.bincount(f.sample.label, minlength=len(CLASS_NAMES))
    return {"total": int(counts.sum()), "per_class": dict(zip(CLASS_NAMES, counts.tolist()))}


def write_figures(
    out: Path,
    names: list[str],
    shared: dict[str, DomainFeatures],
    norms: list[dict[str, np.ndarray]],
    pca: list[np.ndarray],
    tsne: list[np.ndarray],
) -> None:
    """The four figures, a step of a progress bar each; ``shared`` (any checkpoint's
    features) gives the pixels' labels and the sample, which every checkpoint shares."""
    labels = {d: f.labels for d, f in shared.items()}
    domains = np.concatenate([np.full(len(shared[d].sample.label), d) for d in DOMAINS])
    sampled = np.concatenate([shared[d].sample.label for d in DOMAINS])
    figures = [
        partial(plots.norm_histograms, out / "norm_hist.png", names, norms),
        partial(plots.norm_histograms_per_class, out / "norm_hist_per_class.png", names, norms,
                labels),
        partial(plots.embedding_scatter, out / "pca.png", names, pca, domains, sampled, "PCA"),
        partial(plots.embedding_scatter, out / "tsne.png", names, tsne, domains, sampled, "t-SNE"),
    ]  # fmt: skip
    for draw in tqdm(figures, desc="figures", unit="figure", leave=False):
        draw()


def format_tables(checkpoints: list[dict[str, Any]]) -> str:
    """Markdown: a summary row per checkpoint, then per class the mean norms and MMD^2."""
    summary = [["checkpoint", "norm source", "norm target", "target / source", "PAD", "MMD^2"]]
    for c in checkpoints:
        s, t = c["mean_norm"]["source"], c["mean_norm"]["target"]
        summary.append(
            [
                c["name"],
                f"{s:.3f}",
                f"{t:.3f}",
                f"{t / s:.3f}",
                f"{c['pad']:.3f}",
                f"{c['mmd2']:.4f}",
            ]
        )
    per_class = [["checkpoint", "quantity", *SHORT_NAMES]]
    for c in checkpoints:
        for domain in DOMAINS:
            values = [c["mean_norm_per_class"][n][domain] for n in CLASS_NAMES]
            per_class.append([c["name"], f"norm {domain}", *(_cell(v, 2) for v in values)])
        values = [c["mmd2_per_class"][n] for n in CLASS_NAMES]
        per_class.append([c["name"], "MMD^2", *(_cell(v, 3) for v in values)])
    return f"{_markdown(summary, 1)}\n\n{_markdown(per_class, 2)}"


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _markdown(rows: list[list[str]], labels: int) -> str:
    """A markdown table: the first ``labels`` columns left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        cells = [
            v.ljust(w) if i < labels else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:])])


if __name__ == "__main__":
    sys.exit(run(main))
