"""Step time, peak memory and evaluation throughput of every setup, ours against the released
code's procedure, on whatever device this runs on.

    python -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 20          # a GPU
    python -m benchmarks.speed --crop 256 512 --amp off --steps 6 --device cpu \
        --eval-images 4 --eval-distinct 2 --eval-batch 1 --eval-workers 2      # this CPU

For each setup (Source only, Norm only, CLAN, CLAN + Norm) it times our ``train_step`` and a
reference step that follows the released code: a separate backward through the backbone for
the norm term (``retain_graph``), classifier heads on every pass, float32. All eight run on the
same full-size DeepLab-v2/ResNet-101 (or ``model.*`` overrides) and the same random inputs,
interleaved within each round in a shuffled order. Both columns go through ``prepare`` with the
same memory layout (channels_last on CUDA unless ``train.channels_last=false``) and the same
``--compile``; they differ in procedure and precision only (ours: ``--amp``; reference:
float32). The table gives the median step time, the step's peak memory (CUDA, measured after
the warm-up, which holds cudnn.benchmark's autotuning workspaces), ours / reference, and the
norm loss's overhead: CLAN + Norm over CLAN and Norm only over Source only (paired per round),
and the norm term timed alone.
Evaluation is timed as ``evaluate_cityscapes.py`` runs it, on the real Cityscapes val split
(``--eval-root``) or on synthetic images of its size and layout, end to end and for the model
alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import train_clan_norm
import train_norm_only
from dataset.build import build_dataset
from dataset.datasets import Batch, eval_loader
from dataset.synthetic import SyntheticSpec, generate
from utils.config import load_config
from utils.distributed import DistInfo, resolve_device
from utils.engine import TrainState, prepare
from utils.errors import add_debug_flag, run
from utils.evaluation import evaluate, predict_logits
from utils.losses import (
    discrepancy_map,
    feature_norm,
    segmentation_loss,
    stepwise_norm_loss,
    stepwise_norm_loss_from_norms,
    upsample_to,
    weight_discrepancy_loss,
    weighted_bce_with_logits,
)
from utils.metrics import ConfusionMatrix
from utils.schedules import damping, norm_damping

# setup -> (script, loss overrides)
SETUPS = {
    "Source only": (train_norm_only, ["loss.lambda_norm=0"]),
    "Norm only": (train_norm_only, []),
    "CLAN": (train_clan_norm, ["loss.lambda_norm=0"]),
    "CLAN + Norm": (train_clan_norm, []),
}


def reference_step(state: TrainState, source: Batch, target: Batch | None, step: int) -> None:
    """The released code's procedure: float32, heads on every pass, and the norm term's own
    backward through the backbone before the other terms' (same gradient, more compute)."""
    cfg, model, g = state.cfg, state.model, state.run("G")
    lo, n = cfg.loss, cfg.optim.schedule_steps
    d, d_norm = damping(step, n), norm_damping(step, n, lo.clamp_norm_damping)
    disc = state.modules.get("D")
    for opt in state.optimizers.values():
        opt.zero_grad(set_to_none=True)
    if disc is not None:
        disc.requires_grad_(False)
    y_s = state.to_device(source.label)
    out_s = g(state.to_device(source.image))
    if lo.lambda_norm > 0:
        (lo.lambda_norm * d_norm * stepwise_norm_loss(out_s.features, lo.delta_r)).backward(
            retain_graph=True
        )
    p_s1, p_s2 = upsample_to(out_s.p1, y_s.shape[-2:]), upsample_to(out_s.p2, y_s.shape[-2:])
    segmentation_loss(p_s1, p_s2, y_s, lo.seg, lo.focal_gamma).backward()
    if target is not None:
        x_t = state.to_device(target.image)
        out_t = g(x_t)  # heads on, also where only the features are used
        if lo.lambda_norm > 0:  # CLAN's own code has no norm term and no such backward
            loss_norm = lo.lambda_norm * d_norm * stepwise_norm_loss(out_t.features, lo.delta_r)
            loss_norm.backward(retain_graph=disc is not None)
        if disc is not None:
            p_t1, p_t2 = (
                upsample_to(out_t.p1, x_t.shape[-2:]),
                upsample_to(out_t.p2, x_t.shape[-2:]),
            )
            weight_map = discrepancy_map(p_t1, p_t2)
            prob_t = F.softmax(p_t1 + p_t2, dim=1)
            d_out = upsample_to(disc(prob_t), x_t.shape[-2:])
            map_g = weight_map if step > 0 else None  # train_clan_norm's schedule of M
            map_d = weight_map.detach() if step >= cfg.optim.warmup_steps else None
            loss_adv = weighted_bce_with_logits(d_out, 0.0, map_g, lo.lambda_local, lo.eps)
            loss_weight = weight_discrepancy_loss(*model.classifier_weights())
            (lo.lambda_adv * d * loss_adv + lo.lambda_weight * d * loss_weight).backward()
            disc.requires_grad_(True)
            d_run = state.run("D")
            prob_s = F.softmax(p_s1 + p_s2, dim=1).detach()
            loss_d = weighted_bce_with_logits(upsample_to(d_run(prob_s), y_s.shape[-2:]), 0.0)
            loss_d = loss_d + weighted_bce_with_logits(
                upsample_to(d_run(prob_t.detach()), x_t.shape[-2:]), 1.0,
                map_d, lo.lambda_local, lo.eps,
            )  # fmt: skip
            loss_d.backward()
    for opt in state.optimizers.values():
        opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _state_bytes(state: TrainState) -> int:
    """Device bytes this state owns now: parameters, buffers, gradients, optimizer state."""
    tensors = []
    for module in state.modules.values():
        tensors += [*module.parameters(), *module.buffers()]
        tensors += [p.grad for p in module.parameters() if p.grad is not None]
    for opt in state.optimizers.values():
        tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def build_pair(
    script: Any, overrides: Sequence[str], device: torch.device
) -> tuple[TrainState, TrainState]:
    """Our state and the reference's, from the same initial weights, both prepared alike
    (memory layout, compile); the reference in float32 whatever ``train.amp`` says."""
    states = []
    for extra in ([], ["train.amp=off"]):
        torch.manual_seed(0)
        state = script.build(load_config(None, [*overrides, *extra]), device)
        prepare(state, DistInfo())
        states.append(state)
    return states[0], states[1]


class PeakMemory:
    """Peak device memory of one step, with the resident memory of the other states (not the
    one stepped) subtracted; ``None`` off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.others = device, 0

    def start(self, state: TrainState) -> None:
        if self.device.type == "cuda":
            self.others = torch.cuda.memory_allocated(self.device) - _state_bytes(state)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) - self.others


def layout(state: TrainState) -> str:
    """How a state's step runs: memory layout of G's weights, and compiled or eager."""
    weight = state.model.conv1.weight
    nhwc = weight.is_contiguous(memory_format=torch.channels_last) and weight.shape[-1] > 1
    mode = "compiled" if state.cfg.train.compile else "eager"
    return f"{'channels_last' if nhwc else 'NCHW'}, {mode}"


def bench_training(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    """Every setup's ours and reference step, interleaved within each round (in a shuffled
    order), so a drift in the machine's speed hits all eight alike and the setups' ratios are
    paired. Returns the rows and the layout each column ran with."""
    h, w = args.crop
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (1, h, w), generator=gen)
    source = Batch(torch.randn(1, 3, h, w, generator=gen) * 50, label, ["s"])
    target = Batch(torch.randn(1, 3, h, w, generator=gen) * 50, None, ["t"])
    runs = []  # (setup, "ours" | "ref", state, step function, target batch or None)
    layouts = {}
    for name, (script, extra) in SETUPS.items():
        compile_flag = f"train.compile={str(args.compile).lower()}"
        overrides = [f"train.device={device}", f"train.amp={args.amp}", compile_flag,
                     *extra, *args.overrides]  # fmt: skip
        ours, ref = build_pair(script, overrides, device)
        layouts = {"ours": layout(ours), "ref": layout(ref)}
        tgt = target if ours.uses_target else None
        runs += [
            (name, "ours", ours, script.train_step, tgt),
            (name, "ref", ref, reference_step, tgt),
        ]
    times: dict[tuple[str, str], list[float]] = {(r[0], r[1]): [] for r in runs}
    peaks: dict[tuple[str, str], float] = {}
    order = random.Random(0)
    memory = PeakMemory(device)
    for i in range(args.warmup + args.steps):
        # A fresh order each round: no run always follows the same one (on a CPU, the memory
        # the previous step freed or kept changes the next step's time by several percent).
        for name, key, state, fn, tgt in order.sample(runs, len(runs)):
            memory.start(state)
            t = _time(lambda s=state, f=fn, b=tgt, n=1000 + i: f(s, source, b, n), device)
            peak = memory.stop()
            if i < args.warmup:  # cudnn.benchmark autotunes here: neither time nor memory
                continue
            times[(name, key)].append(t)
            if peak is not None:
                peaks[(name, key)] = max(peaks.get((name, key), 0.0), peak)
        done = "warm-up" if i < args.warmup else f"step {i - args.warmup + 1}/{args.steps}"
        print(f"round {i + 1} ({done}): " + ", ".join(
            f"{n} {k} {times[(n, k)][-1] * 1e3:.0f} ms" for n, k, *_ in runs if times[(n, k)]
        ), flush=True)  # fmt: skip
    rows = []
    for name in SETUPS:
        row = {"setup": name}
        for key in ("ours", "ref"):
            row[key] = statistics.median(times[(name, key)])
            row[f"{key}_all"] = times[(name, key)]
            if (name, key) in peaks:
                row[f"mem_{key}"] = peaks[(name, key)] / 2**30
        rows.append(row)
    return rows, layouts


def bench_norm_term(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds the norm term adds to a step, timed alone: norm, loss and backward to the
    features, for the source and the target feature map of one crop (backbone output, stride 8).
    The backbone backward it feeds into runs anyway in CLAN, so this is its whole cost there."""
    h, w = args.crop
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)
    shape = (1, 2048, (h - 1) // 8 + 1, (w - 1) // 8 + 1)
    feats = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "st"]

    def both() -> None:
        for f in feats:
            (1.5e-4 * stepwise_norm_loss_from_norms(feature_norm(f), 1.0)).backward()

    both()
    return statistics.median(_time(both, device) for _ in range(max(10, args.steps)))


def eval_dataset(args: argparse.Namespace, list_dir: Path) -> tuple[str, str]:
    """(root, list file written to ``list_dir``) of the evaluation set: ``--eval-root`` (a
    Cityscapes root; its val split, ``--eval-images`` of them), else synthetic
    Cityscapes-val-layout images of ``--eval-size`` (``--eval-distinct`` drawn once under
    ``--eval-cache``, listed repeatedly up to ``--eval-images``)."""
    lh, lw = args.eval_size
    if args.eval_root:
        root = Path(args.eval_root)
        images = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
        if not images:
            raise SystemExit(f"--eval-root {root}: no leftImg8bit/val/<city>/*.png images")
        names = [p.relative_to(root / "leftImg8bit" / "val").as_posix() for p in images]
    else:
        spec = SyntheticSpec(seed=0, num_source=0, num_train=0, num_val=args.eval_distinct,
                             target_size=(lw, lh))  # fmt: skip
        root = generate(Path(args.eval_cache) / f"{lw}x{lh}_{args.eval_distinct}", spec)
        root = root / "Cityscapes"
        names = sorted(
            p.relative_to(root / "leftImg8bit" / "val").as_posix()
            for p in (root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")
        )
    names = [names[i % len(names)] for i in range(args.eval_images)]
    list_file = list_dir / "val.txt"
    list_file.write_text("\n".join(names) + "\n")
    return str(root), str(list_file)


def bench_eval(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images per second of the evaluation path, as evaluate_cityscapes.py runs it (float32):
    ``model`` on in-memory images (forward, upsample to the label, argmax, confusion
    matrix), and ``end_to_end`` with PNG decoding and resizing in the loader's workers."""
    lh, lw = args.eval_size
    cfg = load_config(None, [f"train.device={device}", *args.overrides])
    model = train_norm_only.build(cfg, device).model.eval()
    iw, ih = cfg.data.val.resize
    image = torch.randn(args.eval_batch, 3, ih, iw, device=device)
    label = torch.randint(0, 19, (args.eval_batch, lh, lw), device=device)
    cm = ConfusionMatrix(19, device=device)

    def one() -> None:
        cm.update(predict_logits(model, image, (lh, lw)).argmax(1), label)

    one()
    batches = max(1, args.eval_images // args.eval_batch)
    model_ips = batches * args.eval_batch / _time(lambda: [one() for _ in range(batches)], device)

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as list_dir:
        root, list_file = eval_dataset(args, Path(list_dir))
        val_cfg = dataclasses.replace(cfg.data.val, root=root, list_file=list_file)
        val = build_dataset(val_cfg, with_labels=True, evaluation=True)
    pin = device.type == "cuda"
    loader = eval_loader(val, args.eval_batch, args.eval_workers, pin_memory=pin)
    seconds = _time(lambda: evaluate(model, loader, device, progress=False), device)
    return {"model": model_ips, "end_to_end": len(val) / seconds, "images": len(val)}


def _overhead(by: dict[str, dict], num: str, den: str) -> str:
    """Median of ``num / den`` over rounds (paired, so a drift cancels), and the ratios of the
    medians and of the minima."""
    paired = statistics.median(a / b for a, b in zip(by[num]["ours_all"], by[den]["ours_all"]))
    medians = by[num]["ours"] / by[den]["ours"]
    minima = min(by[num]["ours_all"]) / min(by[den]["ours_all"])
    return (
        f"{num} / {den} = {paired:.3f} (median of per-round ratios; of medians {medians:.3f}, "
        f"of minima {minima:.3f})"
    )


def markdown(
    rows: list[dict],
    layouts: dict[str, str],
    norm_term: float,
    ev: dict,
    args: argparse.Namespace,
    device_name: str,
) -> str:
    h, w = args.crop
    eval_input = load_config(None, args.overrides).data.val.resize
    by = {r["setup"]: r for r in rows}
    lines = [
        f"Device: {device_name}; crop {h}x{w}, batch 1, AMP {args.amp} (reference: float32); "
        f"median of {args.steps} steps after {args.warmup} warm-up, all eight interleaved; "
        f"peak memory after the warm-up",
        f"Layout: ours {layouts['ours']}; reference {layouts['ref']}",
        "",
        "| setup | ours (ms) | reference (ms) | ours / reference | peak mem ours (GiB) "
        "| peak mem reference (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = [f"{r[k]:.2f}" if k in r else "n/a" for k in ("mem_ours", "mem_ref")]
        lines.append(f"| {r['setup']} | {r['ours'] * 1e3:.1f} | {r['ref'] * 1e3:.1f} | "
                     f"{r['ours'] / r['ref']:.2f} | {mem[0]} | {mem[1]} |")  # fmt: skip
    clan = by["CLAN"]["ours"]
    lines += [
        "",
        "Norm loss overhead (ours):",
        f"- step times: {_overhead(by, 'CLAN + Norm', 'CLAN')}; "
        f"{_overhead(by, 'Norm only', 'Source only')} (the target pass included)",
        f"- the norm term timed alone (norm, loss, backward to the features, source and target): "
        f"{norm_term * 1e3:.2f} ms = {100 * norm_term / clan:.2f}% of the CLAN step",
        "",
        f"Evaluation (float32, batch {args.eval_batch}, {args.eval_workers} loader workers, "
        f"{args.eval_size[1]}x{args.eval_size[0]} labels, input resized to "
        f"{'x'.join(map(str, eval_input))}):",
        f"- end to end (PNG decoding, resizing, forward, upsampling, argmax, confusion matrix) "
        f"over {ev['images']} images: {ev['end_to_end']:.2f} images/s, so the 500 images of "
        f"Cityscapes val in {500 / ev['end_to_end']:.1f} s",
        f"- model alone (in-memory images): {ev['model']:.2f} images/s "
        f"(500 images: {500 / ev['model']:.1f} s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--amp", default="bf16", choices=["off", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D (ours)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-images", type=int, default=500, help="images evaluated")
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--eval-workers", type=int, default=8, help="loader worker processes")
    parser.add_argument("--eval-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--eval-root", help="a Cityscapes root: time its val split instead")
    parser.add_argument(
        "--eval-distinct", type=int, default=25,
        help="synthetic images drawn when --eval-root is not given (listed repeatedly)",
    )  # fmt: skip
    parser.add_argument("--eval-cache", default="data/bench_eval", help="synthetic images here")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({torch.get_num_threads()} threads)")
    )
    rows, layouts = bench_training(args, device)
    norm_term = bench_norm_term(args, device)
    ev = bench_eval(args, device)
    table = markdown(rows, layouts, norm_term, ev, args, name)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
