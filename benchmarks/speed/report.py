"""The markdown report: the step table (median, spread, ratio to the reference, GPU busy
fraction, kernels, launches, peak memory), the norm loss's overhead, the loaders' and
evaluation's throughput."""

from __future__ import annotations

import argparse
import statistics

from benchmarks.speed.benchmarks import NORM_PAIRS, VARIANTS, eval_overrides
from utils.config import Config, load_config


def _overhead(by: dict[str, dict], num: str, den: str) -> str:
    """Median of ``num / den`` over rounds (paired, so a drift cancels), and the ratios of the
    medians and of the minima (ours, eager)."""
    a, b = by[num]["all"], by[den]["all"]
    paired = statistics.median(x / y for x, y in zip(a, b))
    medians = by[num]["median"] / by[den]["median"]
    return (
        f"{num} / {den} = {paired:.3f} (median of per-round ratios; of medians {medians:.3f}, "
        f"of minima {min(a) / min(b):.3f})"
    )


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "n/a"


def _step_table(
    rows: list[dict], layouts: dict[str, str], args: argparse.Namespace, device_name: str
) -> list[str]:
    """The settings, the layouts and a row per setup and variant."""
    h, w = args.crop
    ref = {r["setup"]: r["median"] for r in rows if r["variant"] == "ref"}
    lines = [
        f"Device: {device_name}; crop {h}x{w}, batch {args.batch}, AMP {args.amp} "
        f"(reference: float32); median of {args.steps} steps after {args.warmup} warm-up, all "
        f"variants interleaved; peak memory after the warm-up; profiler over "
        f"{args.profile_steps} steps",
        "Layout: " + "; ".join(f"{VARIANTS[v]} {layouts[v]}" for v in layouts),
        "",
        "| setup | step | median (ms) | spread | / reference | GPU busy | kernels / step "
        "| launches / step | peak mem (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = (max(r["all"]) - min(r["all"])) / r["median"]
        busy = f"{100 * r['busy']:.0f}%" if "busy" in r else "n/a"
        lines.append(
            f"| {r['setup']} | {VARIANTS[r['variant']]} | {r['median'] * 1e3:.1f} | "
            f"{100 * spread:.0f}% | {r['median'] / ref[r['setup']]:.2f} | {busy} | "
            f"{_cell(r, 'kernels', '.0f')} | {_cell(r, 'launches', '.0f')} | "
            f"{_cell(r, 'mem', '.2f')} |"
        )
    return lines


def _norm_overhead(eager: dict[str, dict], norm_term: dict[str, float]) -> list[str]:
    """Each setup with the norm loss over the same setup without, and the norm term alone, as
    a share of the step without it (no lines where no such pair was timed). Setups whose norm
    features have one shape share one timing line."""
    lines: list[str] = []
    pairs = [(a, b) for a, b in NORM_PAIRS if a in eager and b in eager]
    if not pairs:
        return lines
    lines += ["", "Norm loss overhead (ours, eager; Norm only over Source only includes "
              "the target pass):"]  # fmt: skip
    lines += [f"- step times: {_overhead(eager, a, b)}" for a, b in pairs]
    by_time: dict[float, list[tuple[str, str]]] = {}
    for a, b in pairs:
        by_time.setdefault(norm_term[a], []).append((a, b))
    for seconds, group in by_time.items():
        shares = [f"{100 * seconds / eager[b]['median']:.2f}% of the {b} step"
                  for _, b in group if b != "Source only"]  # fmt: skip
        whose = "" if len(by_time) == 1 else f" of {', '.join(a for a, _ in group)}"
        shares_text = "".join(f" = {x}" if i == 0 else f", {x}" for i, x in enumerate(shares))
        lines.append(f"- the norm term{whose} timed alone (norm, loss, backward to the features, "
                     f"two feature maps): {seconds * 1e3:.2f} ms{shares_text}")  # fmt: skip
    return lines


def _loader_lines(loader: list[dict]) -> list[str]:
    """Source/target pairs per second of each config's training loaders (none: no lines)."""
    lines: list[str] = []
    if loader:
        lines += ["", "Training loaders (synthetic images at the real sizes: GTA5 1914x1052, "
                  "Cityscapes 2048x1024; PNG decoding and transforms in the workers):"]  # fmt: skip
        for x in loader:
            lines.append(
                f"- {x['config']}: {x['pairs_per_s']:.1f} source/target pairs per second "
                f"({x['workers']} workers per loader, batch {x['batch']}, source to "
                f"{'x'.join(map(str, x['source'] or ['native']))}, target to "
                f"{'x'.join(map(str, x['target'] or ['native']))}); a step of "
                f"{1e3 / x['pairs_per_s']:.0f} ms or more is not held up by them"
            )
    return lines


def _eval_lines(ev: dict, args: argparse.Namespace, cfg: Config) -> list[str]:
    """Evaluation's throughput, end to end and for the model alone, with the network ``cfg``
    names."""
    m, eval_input = cfg.model, cfg.data.val.resize
    network = f"{m.arch} {m.backbone}" if m.arch == "daformer" else m.arch
    return [
        "",
        f"Evaluation ({network}, float32, batch {args.eval_batch}, {args.eval_workers} loader "
        f"workers, "
        f"{args.eval_size[1]}x{args.eval_size[0]} labels, input resized to "
        f"{'x'.join(map(str, eval_input))}):",
        f"- end to end (PNG decoding, resizing, forward, upsampling, argmax, confusion matrix) "
        f"over {ev['images']} images: {ev['end_to_end']:.2f} images/s, so the 500 images of "
        f"Cityscapes val in {500 / ev['end_to_end']:.1f} s",
        f"- model alone (in-memory images): {ev['model']:.2f} images/s "
        f"(500 images: {500 / ev['model']:.1f} s)",
    ]


def markdown(
    rows: list[dict],
    layouts: dict[str, str],
    norm_term: dict[str, float],
    ev: dict,
    loader: list[dict],
    args: argparse.Namespace,
    device_name: str,
) -> str:
    """The report of the four benchmarks, in markdown."""
    eval_cfg = load_config(None, eval_overrides(args))
    eager = {r["setup"]: r for r in rows if r["variant"] == "eager"}
    lines = _step_table(rows, layouts, args, device_name)
    lines += _norm_overhead(eager, norm_term)
    lines += _loader_lines(loader)
    lines += _eval_lines(ev, args, eval_cfg)
    return "\n".join(lines)
