"""Step time, peak memory and evaluation throughput of every setup, ours against the released
code's procedure, on whatever device this runs on.

    python -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 20          # a GPU
    python -m benchmarks.speed --crop 256 512 --amp off --steps 3 --device cpu  # this CPU

For each setup (Source only, Norm only, CLAN, CLAN + Norm) it times our ``train_step`` and a
reference step that follows the released code: a separate backward through the backbone for
the norm term (``retain_graph``), classifier heads on every pass, float32. Both run on the same
full-size DeepLab-v2/ResNet-101 (or ``model.*`` overrides) and the same random inputs,
interleaved, and the table gives the median step time, peak memory (CUDA), ours / reference,
and the norm loss's overhead (CLAN + Norm over CLAN, Norm only over Source only). Evaluation
throughput is measured on in-memory images of ``--eval-size`` (decoding excluded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

import train_clan_norm
import train_norm_only
from dataset.datasets import Batch
from utils.config import load_config
from utils.distributed import DistInfo, resolve_device
from utils.engine import TrainState, prepare
from utils.losses import (
    discrepancy_map,
    segmentation_loss,
    stepwise_norm_loss,
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
    cfg, model, dev = state.cfg, state.model, state.device
    lo, n = cfg.loss, cfg.optim.schedule_steps
    d, d_norm = damping(step, n), norm_damping(step, n, lo.clamp_norm_damping)
    disc = state.modules.get("D")
    for opt in state.optimizers.values():
        opt.zero_grad(set_to_none=True)
    if disc is not None:
        disc.requires_grad_(False)
    y_s = source.label.to(dev)
    out_s = model(source.image.to(dev))
    if lo.lambda_norm > 0:
        (lo.lambda_norm * d_norm * stepwise_norm_loss(out_s.features, lo.delta_r)).backward(
            retain_graph=True
        )
    p_s1, p_s2 = upsample_to(out_s.p1, y_s.shape[-2:]), upsample_to(out_s.p2, y_s.shape[-2:])
    segmentation_loss(p_s1, p_s2, y_s, lo.seg, lo.focal_gamma).backward()
    if target is not None:
        x_t = target.image.to(dev)
        out_t = model(x_t)  # heads on, also where only the features are used
        loss_norm = lo.lambda_norm * d_norm * stepwise_norm_loss(out_t.features, lo.delta_r)
        if disc is None:
            loss_norm.backward()
        else:
            loss_norm.backward(retain_graph=True)
            p_t1, p_t2 = (
                upsample_to(out_t.p1, x_t.shape[-2:]),
                upsample_to(out_t.p2, x_t.shape[-2:]),
            )
            weight_map = discrepancy_map(p_t1, p_t2)
            prob_t = F.softmax(p_t1 + p_t2, dim=1)
            d_out = upsample_to(disc(prob_t), x_t.shape[-2:])
            loss_adv = weighted_bce_with_logits(d_out, 0.0, weight_map, lo.lambda_local, lo.eps)
            loss_weight = weight_discrepancy_loss(*model.classifier_weights())
            (lo.lambda_adv * d * loss_adv + lo.lambda_weight * d * loss_weight).backward()
            disc.requires_grad_(True)
            prob_s = F.softmax(p_s1 + p_s2, dim=1).detach()
            loss_d = weighted_bce_with_logits(upsample_to(disc(prob_s), y_s.shape[-2:]), 0.0)
            loss_d = loss_d + weighted_bce_with_logits(
                upsample_to(disc(prob_t.detach()), x_t.shape[-2:]), 1.0,
                weight_map.detach(), lo.lambda_local, lo.eps,
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


def bench_training(args: argparse.Namespace, device: torch.device) -> list[dict]:
    h, w = args.crop
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (1, h, w), generator=gen)
    source = Batch(torch.randn(1, 3, h, w, generator=gen) * 50, label, ["s"])
    target = Batch(torch.randn(1, 3, h, w, generator=gen) * 50, None, ["t"])
    rows = []
    for name, (script, extra) in SETUPS.items():
        compile_flag = f"train.compile={str(args.compile).lower()}"
        overrides = [f"train.device={device}", f"train.amp={args.amp}", compile_flag,
                     *extra, *args.overrides]  # fmt: skip
        ours_cfg = load_config(None, overrides)
        ref_cfg = load_config(None, [*overrides, "train.amp=off"])
        torch.manual_seed(0)
        ours = script.build(ours_cfg, device)
        prepare(ours, DistInfo())
        torch.manual_seed(0)
        ref = script.build(ref_cfg, device)
        tgt = target if ours.uses_target else None
        times: dict[str, list[float]] = {"ours": [], "ref": []}
        peaks: dict[str, float] = {}
        for i in range(args.warmup + args.steps):  # interleaved, so drifts hit both alike
            runs = (("ours", ours, script.train_step), ("ref", ref, reference_step))
            for key, state, fn in runs:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t = _time(lambda s=state, f=fn, b=tgt, n=1000 + i: f(s, source, b, n), device)
                if i >= args.warmup:
                    times[key].append(t)
                if device.type == "cuda":
                    peaks[key] = max(peaks.get(key, 0.0), torch.cuda.max_memory_allocated(device))
        row = {"setup": name, **{k: statistics.median(v) for k, v in times.items()}}
        row.update({f"mem_{k}": v / 2**30 for k, v in peaks.items()})
        rows.append(row)
        print(f"{name}: ours {row['ours'] * 1e3:.1f} ms, reference {row['ref'] * 1e3:.1f} ms",
              flush=True)  # fmt: skip
        del ours, ref
    return rows


@torch.no_grad()
def bench_eval(args: argparse.Namespace, device: torch.device) -> float:
    """Images per second of the evaluation path (resize input, forward, upsample to the label,
    argmax, confusion matrix) on in-memory images of ``--eval-size``."""
    cfg = load_config(None, [f"train.device={device}", *args.overrides])
    model = train_norm_only.build(cfg, device).model.eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    lh, lw = args.eval_size
    ih, iw = cfg.data.val.resize[1], cfg.data.val.resize[0]
    image = torch.randn(args.eval_batch, 3, ih, iw, device=device)
    label = torch.randint(0, 19, (args.eval_batch, lh, lw), device=device)
    cm = ConfusionMatrix(19, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    def one() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = upsample_to(model.predict(model(image)).float(), (lh, lw))
        cm.update(logits.argmax(1), label)

    one()
    batches = max(1, args.eval_images // args.eval_batch)
    seconds = _time(lambda: [one() for _ in range(batches)], device)
    return batches * args.eval_batch / seconds


def markdown(rows: list[dict], eval_ips: float, args: argparse.Namespace, device_name: str) -> str:
    h, w = args.crop
    by = {r["setup"]: r for r in rows}
    lines = [
        f"Device: {device_name}; crop {h}x{w}, batch 1, AMP {args.amp} (reference: float32); "
        f"median of {args.steps} steps after {args.warmup} warm-up",
        "",
        "| setup | ours (ms) | reference (ms) | ours / reference | peak mem ours (GiB) "
        "| peak mem reference (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = [f"{r[k]:.2f}" if k in r else "n/a" for k in ("mem_ours", "mem_ref")]
        lines.append(f"| {r['setup']} | {r['ours'] * 1e3:.1f} | {r['ref'] * 1e3:.1f} | "
                     f"{r['ours'] / r['ref']:.2f} | {mem[0]} | {mem[1]} |")  # fmt: skip
    clan = by["CLAN + Norm"]["ours"] / by["CLAN"]["ours"]
    norm = by["Norm only"]["ours"] / by["Source only"]["ours"]
    lines += [
        "",
        f"Norm loss overhead (ours): CLAN + Norm / CLAN = {clan:.3f}; "
        f"Norm only / Source only = {norm:.3f} (the target pass included)",
        f"Evaluation: {eval_ips:.1f} images/s at {args.eval_size[1]}x{args.eval_size[0]} labels "
        f"(500 images: {500 / eval_ips:.1f} s)",
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
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--eval-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({torch.get_num_threads()} threads)")
    )
    rows = bench_training(args, device)
    eval_ips = bench_eval(args, device)
    table = markdown(rows, eval_ips, args, name)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
