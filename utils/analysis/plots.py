"""Figures of the feature-space analysis (``analyze_features.py``) and of per-class IoU
comparisons (``python -m utils.analysis.compare_iou``).

Each function builds a ``matplotlib.figure.Figure`` (no pyplot, so no global figure state or
interactive backend) and writes it to ``path``; PNGs render through Agg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from dataset.labels import CLASS_NAMES, PALETTE
from utils.evaluation.metrics import SHORT_NAMES, nanmean
from utils.files import atomic_write

DOMAIN_COLOURS = {"source": "tab:orange", "target": "tab:blue"}
DOMAIN_MARKERS = {"source": "o", "target": "x"}


def _figure(rows: int, cols: int, panel: tuple[float, float], **kwargs):
    # Imported on first use: matplotlib takes a second to import, which every command (and
    # every error) would pay otherwise.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs)


def _save(fig, path: str | Path) -> None:
    """``fig`` at ``path`` atomically, in the format its suffix names (as ``savefig(path)``
    infers it; the default, PNG, without one)."""
    path = Path(path)
    atomic_write(path, partial(fig.savefig, dpi=100, format=path.suffix[1:] or None))


def _log_bins(values: Sequence[np.ndarray], count: int = 60) -> np.ndarray:
    """Log-spaced histogram edges shared by all arrays: from their smallest positive value
    (at least 1e-3 of the largest) to their largest."""
    positive = [v[v > 0] for v in values]
    top = max((float(v.max()) for v in positive if v.size), default=1.0)
    low = min((float(v.min()) for v in positive if v.size), default=top)
    low = min(max(low, top * 1e-3), top / 2)
    return np.geomspace(low, top, count + 1)


def _norm_hist(ax, values: np.ndarray, bins: np.ndarray, domain: str, label: str) -> None:
    """The share of ``values`` in each bin (log x axis); values outside the bins are counted
    in the first or last one."""
    if values.size:
        clipped = np.clip(values, bins[0], bins[-1])
        ax.hist(
            clipped,
            bins=bins,
            weights=np.full(values.size, 1 / values.size),
            histtype="step",
            linewidth=1.2,
            color=DOMAIN_COLOURS[domain],
            label=label,
        )
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def norm_histograms(
    path: str | Path, names: Sequence[str], norms: Sequence[dict[str, np.ndarray]]
) -> None:
    """One panel per checkpoint (shared axes): the share of pixels at each feature norm (log
    scale), source against target. ``norms[i]`` maps a domain to checkpoint i's per-pixel
    norms."""
    bins = _log_bins([v for n in norms for v in n.values()])
    fig, axes = _figure(1, len(names), (4.0, 3.0), sharex=True, sharey=True)
    for ax, name, by_domain in zip(axes[0], names, norms):
        for domain, values in by_domain.items():
            _norm_hist(ax, values, bins, domain, f"{domain} (mean {values.mean():.2f})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("per-pixel feature norm ||F||")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of pixels")
    _save(fig, path)


def norm_histograms_per_class(
    path: str | Path,
    names: Sequence[str],
    norms: Sequence[dict[str, np.ndarray]],
    labels: dict[str, np.ndarray],
) -> None:
    """A row per class present in either domain, a column per checkpoint, shared x axes:
    the norms of the pixels of that class, source against target (as ``norm_histograms``).
    ``labels`` maps a domain to every pixel's majority label (the same for every
    checkpoint)."""
    classes = [c for c in range(len(CLASS_NAMES)) if any((v == c).any() for v in labels.values())]
    bins = _log_bins([v for n in norms for v in n.values()])
    fig, axes = _figure(max(len(classes), 1), len(names), (3.0, 1.3), sharex=True)
    for col, (name, by_domain) in enumerate(zip(names, norms)):
        axes[0][col].set_title(name, fontsize=9)
        for row, c in enumerate(classes):
            ax = axes[row][col]
            for domain, values in by_domain.items():
                _norm_hist(ax, values[labels[domain] == c], bins, domain, domain)
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(CLASS_NAMES[c], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("feature norm ||F||")
    axes[0][-1].legend(fontsize=7)
    _save(fig, path)


def embedding_scatter(
    path: str | Path,
    names: Sequence[str],
    coords: Sequence[np.ndarray],
    domains: np.ndarray,
    labels: np.ndarray,
    method: str,
) -> None:
    """A row per checkpoint: the sampled pixels' 2-D embedding coloured by domain, and the
    same points coloured by class (Cityscapes colours; source dots, target crosses).
    ``coords[i]`` is (P, 2) for checkpoint i; ``domains`` (P,) holds "source"/"target" and
    ``labels`` (P,) trainIds, the same pixels in the same order for every checkpoint."""
    fig, axes = _figure(len(names), 2, (4.5, 4.0))
    palette = np.asarray(PALETTE, dtype=float) / 255
    for row, (name, xy) in enumerate(zip(names, coords)):
        by_domain, by_class = axes[row]
        for domain, colour in DOMAIN_COLOURS.items():
            own = domains == domain
            by_domain.scatter(
                xy[own, 0], xy[own, 1], s=4, color=colour, alpha=0.5, label=domain, linewidths=0
            )
            marker = DOMAIN_MARKERS[domain]
            by_class.scatter(
                xy[own, 0],
                xy[own, 1],
                s=6,
                c=palette[labels[own]],
                marker=marker,
                linewidths=0.6 if marker == "x" else 0,
            )
        by_domain.set_ylabel(name, fontsize=9)
        by_domain.legend(fontsize=7, markerscale=3)
    axes[0][0].set_title(f"{method}, by domain", fontsize=10)
    axes[0][1].set_title(f"{method}, by class (dots: source, crosses: target)", fontsize=10)
    _class_legend(fig, sorted(set(labels.tolist())), palette)
    _save(fig, path)


def _class_legend(fig, classes: Sequence[int], palette: np.ndarray) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="s", linestyle="", color=palette[c], label=CLASS_NAMES[c])
        for c in classes
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), fontsize=7)


def iou_comparison(
    path: str | Path, rows: dict[str, list[float]], baseline: str, note: str = ""
) -> None:
    """Two panels over the 19 classes and the mIoU: each row's IoU (percent) as grouped bars,
    and each other row minus ``baseline`` in points, its title followed by ``note`` when given.
    ``rows`` holds fractions (NaN: absent)."""
    columns = [*SHORT_NAMES, "mIoU"]
    values = {k: [*v, nanmean(list(v))] for k, v in rows.items()}
    others = [k for k in values if k != baseline]
    fig, axes = _figure(2, 1, (14.0, 3.2), sharex=True)
    top, bottom = axes[0][0], axes[1][0]
    colours = {k: f"C{i}" for i, k in enumerate(values)}  # a row keeps its colour below
    _bars(
        top, columns, {k: [100 * x for x in v] for k, v in values.items()}, list(colours.values())
    )
    top.set_ylabel("IoU (%)")
    top.set_title("per-class IoU", fontsize=10)
    diff = {
        f"{k} - {baseline}": [100 * (a - b) for a, b in zip(values[k], values[baseline])]
        for k in others
    }
    _bars(bottom, columns, diff, [colours[k] for k in others])
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("difference (points)")
    bottom.set_title(f"against {baseline}" + (f" ({note})" if note else ""), fontsize=10)
    _save(fig, path)


def _bars(
    ax, columns: Sequence[str], series: dict[str, list[float]], colours: Sequence[str]
) -> None:
    """Grouped bars: one group per column, one bar per series (NaN bars left out)."""
    x = np.arange(len(columns))
    width = 0.8 / max(len(series), 1)
    for i, ((label, vals), colour) in enumerate(zip(series.items(), colours)):
        heights = [0.0 if math.isnan(v) else v for v in vals]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=label, color=colour)
    ax.set_xticks(x, columns, rotation=45, fontsize=8)
    ax.legend(fontsize=7, ncols=min(len(series), 3))
