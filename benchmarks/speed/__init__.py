r"""Step time, GPU use, peak memory, loader and evaluation throughput of every setup, ours
against the released code's procedure, on whatever device this runs on.

    python -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 20 --cuda-graph --compile \
        --compile-mode reduce-overhead                                        # a GPU
    python -m benchmarks.speed --crop 256 512 --amp off --steps 6 --device cpu \
        --eval-images 4 --eval-distinct 2 --eval-batch 1 --eval-workers 2      # this CPU

For each setup (Source only, Norm only, CLAN, CLAN + Norm; with ``--setups`` also MaxSquare,
+ Norm, + IW and + IW + Norm) it times our ``train_step`` eagerly, as one CUDA graph
(``--cuda-graph``: ``train.cuda_graph``, CUDA only) and compiled (``--compile``:
``train.compile`` with ``--compile-mode``), and a reference step that follows the released
code: a separate backward through the backbone for the norm term (``retain_graph``),
classifier heads on every pass, float32, eager; for MaxSquare, its ``solve_gta5.py`` (the
source backward, then the target's, IW's class histogram on the host, the loss read back each
step). Every variant runs on the same full-size DeepLab-v2/ResNet-101 (or ``model.*``
overrides) and the same random inputs, interleaved within each round in a shuffled order,
with the same memory layout (channels_last
on CUDA unless ``train.channels_last=false``). Per setup and variant the table gives the median
step time, its spread over the rounds ((max - min) / median), the ratio to the reference, and
on CUDA the step's peak memory (after the warm-up, which holds cudnn.benchmark's autotuning
workspaces) and, from ``torch.profiler`` over ``--profile-steps`` steps, the GPU busy fraction
(the union of kernel intervals over the wall time), the GPU kernels per step and the host's
launch calls per step (a graph replay is one). Then the norm loss's overhead: each setup with
it over the same setup without (CLAN + Norm over CLAN, ...; paired per round), and the norm
term timed alone.
The loaders are timed as training runs them (``--loader-configs``, the configured workers and
transforms) on synthetic images at the real sizes (GTA5 1914x1052, Cityscapes 2048x1024):
source/target pairs per second. Evaluation is timed as ``evaluate_cityscapes.py`` runs it, on
the real Cityscapes val split (``--eval-root``) or on synthetic images of its size and layout,
end to end and for the model alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import train_dacs_norm
import train_norm_only
from dataset.build import build_dataset
from dataset.datasets import Batch, eval_loader, infinite_loader
from dataset.synthetic import SyntheticSpec, generate
from dataset.transforms import IMG_MEAN_BGR
from utils import losses
from utils.config import load_config, take_overrides
from utils.distributed import DistInfo, resolve_device
from utils.errors import UsageError, add_debug_flag, at_least
from utils.evaluation.inference import evaluate, predict_logits
from utils.evaluation.metrics import ConfusionMatrix
from utils.provenance import command_line, footer, provenance
from utils.schedules import damping, norm_damping
from utils.self_training import blur_kernel_size, color_jitter, gaussian_blur
from utils.setups import SETUPS as TABLE
from utils.setups import script_module
from utils.training.graphs import CudaGraphBackend, GraphedStep
from utils.training.state import TrainState, prepare

# setup -> (script, overrides on the defaults), the table's variants that the benchmark times
SETUPS = {v.label: (script_module(s), list(v.speed))
          for s in TABLE for v in s.variants if v.speed is not None}  # fmt: skip
PAPER_SETUPS = ["Source only", "Norm only", "CLAN", "CLAN + Norm"]  # timed by default
# the norm loss's overhead: each setup with it over the same setup without
NORM_PAIRS = [(v.label, v.baseline) for s in TABLE for v in s.variants
              if v.label in SETUPS and v.baseline in SETUPS]  # fmt: skip


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
        (lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_s.features, lo.delta_r)).backward(
            retain_graph=True
        )
    p_s1, p_s2 = (
        losses.upsample_to(out_s.p1, y_s.shape[-2:]),
        losses.upsample_to(out_s.p2, y_s.shape[-2:]),
    )
    losses.segmentation_loss(p_s1, p_s2, y_s, lo.seg, lo.focal_gamma).backward()
    if target is not None:
        x_t = state.to_device(target.image)
        out_t = g(x_t)  # heads on, also where only the features are used
        if lo.lambda_norm > 0:  # CLAN's own code has no norm term and no such backward
            loss_norm = (
                lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_t.features, lo.delta_r)
            )
            loss_norm.backward(retain_graph=disc is not None)
        if disc is not None:
            p_t1, p_t2 = (
                losses.upsample_to(out_t.p1, x_t.shape[-2:]),
                losses.upsample_to(out_t.p2, x_t.shape[-2:]),
            )
            weight_map = losses.discrepancy_map(p_t1, p_t2)
            prob_t = F.softmax(p_t1 + p_t2, dim=1)
            d_out = losses.upsample_to(disc(prob_t), x_t.shape[-2:])
            map_g = weight_map if step > 0 else None  # train_clan_norm's schedule of M
            map_d = weight_map.detach() if step >= cfg.optim.warmup_steps else None
            loss_adv = losses.weighted_bce_with_logits(d_out, 0.0, map_g, lo.lambda_local, lo.eps)
            loss_weight = losses.weight_discrepancy_loss(*model.classifier_weights())
            (lo.lambda_adv * d * loss_adv + lo.lambda_weight * d * loss_weight).backward()
            disc.requires_grad_(True)
            d_run = state.run("D")
            prob_s = F.softmax(p_s1 + p_s2, dim=1).detach()
            loss_d = losses.weighted_bce_with_logits(
                losses.upsample_to(d_run(prob_s), y_s.shape[-2:]), 0.0
            )
            loss_d = loss_d + losses.weighted_bce_with_logits(
                losses.upsample_to(d_run(prob_t.detach()), x_t.shape[-2:]), 1.0,
                map_d, lo.lambda_local, lo.eps,
            )  # fmt: skip
            loss_d.backward()
    for opt in state.optimizers.values():
        opt.step()


def reference_maxsquare_step(
    state: TrainState, source: Batch, target: Batch | None, step: int
) -> None:
    """MaxSquare's released procedure (``tools/solve_gta5.py``): float32; the source CE's
    backward, then the target loss's; IW's class counts by ``torch.histc`` on the host, one
    image at a time (``utils/loss.py``); the source loss read back every step for its log; and
    the norm term, which their code lacks, with its own backward as the paper's code has it."""
    cfg, g = state.cfg, state.run("G")
    lo, ms = cfg.loss, cfg.loss.maxsquare
    d_norm = norm_damping(step, cfg.optim.schedule_steps, lo.clamp_norm_damping)
    optimizer = state.optimizers["G"]
    optimizer.zero_grad(set_to_none=True)
    y_s = state.to_device(source.label)
    out_s = g(state.to_device(source.image))
    if lo.lambda_norm > 0:
        norm_s = lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_s.features, lo.delta_r)
        norm_s.backward(retain_graph=True)
    loss = losses.cross_entropy(losses.upsample_to(out_s.p2, y_s.shape[-2:]), y_s)
    if ms.multi:
        aux = losses.cross_entropy(losses.upsample_to(out_s.p1, y_s.shape[-2:]), y_s)
        loss = loss + ms.lambda_aux * aux
    loss.backward()
    loss.item()  # their loss_seg_value += loss.cpu().item() / iter_num
    if target is not None:
        x_t = state.to_device(target.image)
        out_t = g(x_t)
        if lo.lambda_norm > 0:
            norm_t = lo.lambda_norm * d_norm * losses.stepwise_norm_loss(out_t.features, lo.delta_r)
            norm_t.backward(retain_graph=True)
        prob = F.softmax(losses.upsample_to(out_t.p2, x_t.shape[-2:]), dim=1)
        if ms.image_wise:
            b, c = prob.shape[:2]
            argmax = prob.detach().argmax(dim=1)
            weights = []
            for i in range(b):  # their histogram, on the host
                hist = torch.histc(argmax[i].cpu().float(), bins=c, min=0, max=c - 1)
                ratio = ms.iw_ratio
                w = 1 / torch.clamp(hist**ratio * hist.sum() ** (1 - ratio), min=1)
                weights.append(w.to(x_t.device)[argmax[i]])
            loss_t = -(prob**2 * torch.stack(weights).unsqueeze(1)).sum() / (b * c)
        else:
            loss_t = losses.max_square_loss(prob)
        loss_t = ms.lambda_target * loss_t
        if ms.multi:
            logits_aux = losses.upsample_to(out_t.p1, x_t.shape[-2:])
            label = losses.multi_level_pseudo_label(prob, F.softmax(logits_aux, dim=1),
                                                    ms.threshold)  # fmt: skip
            loss_t = loss_t + ms.lambda_aux * ms.lambda_target * losses.cross_entropy(
                logits_aux, label)  # fmt: skip
        loss_t.backward()
    optimizer.step()


def reference_dacs_step(state: TrainState, source: Batch, target: Batch | None, step: int) -> None:
    """DACS's released procedure (``trainUDA.py``), from the same random draws as ours: float32;
    the teacher's forward; per image, the classes by ``torch.unique`` (a host sync) and the mask
    by comparing the label with each drawn class; the mix, jitter and blur one image at a time;
    the pixel weight read back (``.item()``); ``L_l + L_u`` (and the norm term with its own
    backward, as the paper's code has it) backward; the losses read back for the log; the
    teacher's update one parameter at a time."""
    cfg, g = state.cfg, state.run("G")
    lo, ds = cfg.loss, cfg.loss.dacs
    v = train_dacs_norm.step_values(cfg, step)
    optimizer = state.optimizers["G"]
    optimizer.zero_grad(set_to_none=True)
    teacher, student = state.modules["teacher"], state.modules["G"]
    x_s, y_s = state.to_device(source.image), state.to_device(source.label)
    x_t = state.to_device(target.image)
    size = y_s.shape[-2:]
    with torch.no_grad():
        logits_t = losses.upsample_to(teacher.predict(teacher(x_t)), size)
        max_probs, label_t = torch.max(torch.softmax(logits_t, dim=1), dim=1)
    weight = torch.sum(max_probs.ge(ds.threshold).long() == 1).item() / max_probs.numel()
    keys = v["mix_keys"]
    mixed, labels, weights = [], [], []
    mean = torch.tensor(IMG_MEAN_BGR, device=x_s.device).view(3, 1, 1)
    ky, kx = (blur_kernel_size(n, ds.blur_kernel) for n in x_s.shape[-2:])
    for i in range(x_s.shape[0]):
        classes = torch.unique(y_s[i])
        if not ds.mix_ignore:
            classes = classes[classes != losses.IGNORE_INDEX]
        drawn = classes[keys[i, classes.cpu()].argsort()[: (len(classes) + 1) // 2]]
        mask = y_s[i].unsqueeze(0).eq(drawn.view(-1, 1, 1)).sum(0).float()  # generate_class_mask
        image = mask * x_s[i] + (1 - mask) * x_t[i]
        if v["jitter_on"] > 0:
            rgb = ((image + mean) / 255).flip(0)
            rgb = color_jitter(rgb.unsqueeze(0), v["jitter"][i : i + 1])[0]
            image = rgb.flip(0) * 255 - mean
        if v["blur_on"] > 0:
            rgb = ((image + mean) / 255).flip(0)
            rgb = gaussian_blur(rgb.unsqueeze(0), float(v["blur_sigma"]), (ky, kx))[0]
            image = rgb.flip(0) * 255 - mean
        mixed.append(image)
        labels.append((mask * y_s[i] + (1 - mask) * label_t[i]).long())
        weights.append(mask + (1 - mask) * weight)
    if ds.student_passes == "two":  # images, then inputs_u_s
        out_s, out_m = g(x_s), g(torch.stack(mixed))
    else:  # the one-pass variant: both batches through one forward
        out = g(torch.cat([x_s, torch.stack(mixed)]))
        out_s, out_m = (type(out)(*(t.chunk(2)[i] for t in out)) for i in (0, 1))
    if lo.lambda_norm > 0:
        d_norm = norm_damping(step, cfg.optim.schedule_steps, lo.clamp_norm_damping)
        norm = losses.stepwise_norm_loss(out_s.features, lo.delta_r) + losses.stepwise_norm_loss(
            out_m.features, lo.delta_r)  # fmt: skip
        (lo.lambda_norm * d_norm * norm).backward(retain_graph=True)
    heads = ("p2",) if student.predict_with == "c2" else ("p1", "p2")
    loss_l = sum(losses.cross_entropy(losses.upsample_to(getattr(out_s, h), size), y_s)
                 for h in heads)  # fmt: skip
    y_mix, w_mix = torch.stack(labels), torch.stack(weights)
    ce = torch.nn.CrossEntropyLoss(ignore_index=losses.IGNORE_INDEX, reduction="none")
    loss_u = sum(torch.mean(ce(losses.upsample_to(getattr(out_m, h), size), y_mix) * w_mix)
                 for h in heads)  # fmt: skip
    (loss_l + ds.lambda_mix * loss_u).backward()
    loss_l.item(), loss_u.item()  # their loss_l_value, loss_u_value
    optimizer.step()
    alpha = min(1 - 1 / (step + 1), ds.ema_alpha)  # update_ema_variables
    with torch.no_grad():
        for ema_param, param in zip(teacher.parameters(), student.parameters(), strict=True):
            ema_param.data[:] = alpha * ema_param.data[:] + (1 - alpha) * param.data[:]


# script -> its reference step, as the table names it
REFERENCES = {script_module(s): globals()[s.reference] for s in TABLE if s.reference}


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


def build_state(script: Any, overrides: Sequence[str], device: torch.device) -> TrainState:
    """A setup's prepared state from the same initial weights (seed 0) every time."""
    torch.manual_seed(0)
    state = script.build(load_config(None, overrides), device)
    prepare(state, DistInfo())
    return state


def build_pair(
    script: Any, overrides: Sequence[str], device: torch.device
) -> tuple[TrainState, TrainState]:
    """Our state and the reference's, from the same initial weights, both prepared alike
    (memory layout, compile); the reference in float32 whatever ``train.amp`` says."""
    return build_state(script, overrides, device), build_state(
        script, [*overrides, "train.amp=off"], device
    )


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
    mode = f"compiled ({state.cfg.train.compile_mode})" if state.cfg.train.compile else "eager"
    return f"{'channels_last' if nhwc else 'NCHW'}, {mode}"


VARIANTS = {"eager": "ours, eager", "graph": "ours, CUDA graph", "compiled": "ours, compiled",
            "ref": "reference"}  # fmt: skip


def _variants(args: argparse.Namespace, device: torch.device) -> list[str]:
    if args.cuda_graph and device.type != "cuda":
        raise UsageError(f"--cuda-graph needs a CUDA device, this run is on {device}")
    return ["eager", *(["graph"] if args.cuda_graph else []),
            *(["compiled"] if args.compile else []), "ref"]  # fmt: skip


def bench_training(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    """Every setup's variants (ours eager, graphed, compiled; the reference), interleaved within
    each round (in a shuffled order), so a drift in the machine's speed hits them alike and the
    setups' ratios are paired; then each profiled on CUDA. Returns the rows and the layout each
    variant ran with."""
    h, w = args.crop
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (1, h, w), generator=gen)
    source = Batch(torch.randn(1, 3, h, w, generator=gen) * 50, label, ["s"])
    target = Batch(torch.randn(1, 3, h, w, generator=gen) * 50, None, ["t"])
    if device.type == "cuda":  # as the loader delivers them
        source = Batch(source.image.pin_memory(), source.label.pin_memory(), source.names)
        target = Batch(target.image.pin_memory(), None, target.names)
    variants = _variants(args, device)
    runs = []  # (setup, variant, state, step function, target batch or None)
    layouts = {}
    setups = getattr(args, "setups", None) or PAPER_SETUPS
    for name in setups:
        script, extra = SETUPS[name]
        overrides = [f"train.device={device}", f"train.amp={args.amp}", *extra, *args.overrides]
        ours, ref = build_pair(script, overrides, device)
        tgt = target if ours.uses_target else None
        states = {"eager": (ours, script.train_step),
                  "ref": (ref, REFERENCES.get(script, reference_step))}  # fmt: skip
        if "graph" in variants:
            graphed = build_state(script, overrides, device)
            backend = CudaGraphBackend(device)
            runner = GraphedStep(script.train_step, backend, warmup=args.warmup - 1)
            states["graph"] = (graphed, runner)  # captured in the last warm-up round
        if "compiled" in variants:
            mode = f"train.compile_mode={args.compile_mode}"
            compiled = build_state(script, [*overrides, "train.compile=true", mode], device)
            states["compiled"] = (compiled, script.train_step)
        layouts = {v: layout(states[v][0]) for v in variants}
        runs += [(name, v, *states[v], tgt) for v in variants]
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
    profiles = {}
    if device.type == "cuda" and args.profile_steps > 0:
        for name, key, state, fn, tgt in runs:
            steps = [lambda s=state, f=fn, b=tgt, n=2000 + i: f(s, source, b, n)
                     for i in range(args.profile_steps)]  # fmt: skip
            profiles[(name, key)] = profile_steps(steps, device)
            print(f"profiled {name} {key}: {profiles[(name, key)]}", flush=True)
    rows = []
    for name in setups:
        for key in variants:
            all_times = times[(name, key)]
            row = {"setup": name, "variant": key, "median": statistics.median(all_times),
                   "all": all_times, **profiles.get((name, key), {})}  # fmt: skip
            if (name, key) in peaks:
                row["mem"] = peaks[(name, key)] / 2**30
            rows.append(row)
    return rows, layouts


LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch",
                "cudaLaunchCooperativeKernel")  # fmt: skip


def busy_time(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time a device was busy, with
    overlapping kernels (several streams) counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def profile_steps(steps: Sequence[Callable[[], object]], device: torch.device) -> dict[str, float]:
    """``torch.profiler`` over ``steps``: GPU busy fraction (kernel intervals' union over the
    wall time), GPU kernels per step and the host's kernel/graph launch calls per step."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for step in steps:
            step()
        _sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e for e in prof.events() if e.name.startswith(LAUNCH_CALLS)]
    n = len(steps)
    busy = busy_time([(e.time_range.start, e.time_range.end) for e in kernels])
    return {"busy": busy / wall_us, "kernels": len(kernels) / n, "launches": len(launches) / n}


def bench_loader(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Source/target pairs per second of the training loaders of each ``--loader-configs``
    config (its transforms, batch size and ``data.num_workers``), on synthetic images at the
    real sizes (``--loader-distinct`` of each, drawn once under ``--eval-cache``)."""
    if not args.loader_configs:
        return []
    spec = SyntheticSpec(seed=0, num_source=args.loader_distinct, num_train=args.loader_distinct,
                         num_val=0, source_size=(1914, 1052), target_size=(2048, 1024))  # fmt: skip
    root = generate(Path(args.eval_cache) / f"loader_{args.loader_distinct}", spec)
    rows = []
    for config in args.loader_configs:
        cfg = load_config(config, [f"data.source.root={root / 'GTA5'}",
                                   f"data.target.root={root / 'Cityscapes'}",
                                   *args.loader_overrides])  # fmt: skip
        d = cfg.data
        pin = device.type == "cuda"
        loaders = [
            infinite_loader(build_dataset(section, with_labels=labels), d.batch_size, seed,
                            num_workers=d.num_workers, pin_memory=pin)
            for section, labels, seed in ((d.source, True, 0), (d.target, False, 1))
        ]  # fmt: skip
        for _ in range(2 * max(1, d.num_workers)):  # the workers' first batches
            [next(loader) for loader in loaders]
        start = time.perf_counter()
        for _ in range(args.loader_batches):
            [next(loader) for loader in loaders]
        seconds = time.perf_counter() - start
        source = d.source.crop or d.source.resize
        rows.append({"config": config, "workers": d.num_workers, "batch": d.batch_size,
                     "source": source, "target": d.target.crop or d.target.resize,
                     "pairs_per_s": args.loader_batches * d.batch_size / seconds})  # fmt: skip
        del loaders
    return rows


def feature_size(n: int) -> int:
    """G's feature-map size for an input size ``n``: the stem's stride-2 conv, its max-pool
    (stride 2, rounding up) and layer2's stride 2 (512 -> 65)."""
    conv = (n - 1) // 2 + 1
    pool = -(-(conv - 1) // 2) + 1
    return (pool - 1) // 2 + 1


def bench_norm_term(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds the norm term adds to a step, timed alone: norm, loss and backward to the
    features, and the logged mean norm, for the source and the target feature map of one crop
    (backbone output, stride 8).
    The backbone backward it feeds into runs anyway in CLAN, so this is its whole cost there."""
    h, w = args.crop
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)
    shape = (1, 2048, feature_size(h), feature_size(w))
    feats = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "st"]

    def both() -> None:
        for f in feats:
            (1.5e-4 * losses.stepwise_norm_loss(f, 1.0)).backward()
            losses.feature_norm(f.detach()).mean()

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
            raise UsageError(f"--eval-root {root}: no leftImg8bit/val/<city>/*.png images")
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


def markdown(
    rows: list[dict],
    layouts: dict[str, str],
    norm_term: float,
    ev: dict,
    loader: list[dict],
    args: argparse.Namespace,
    device_name: str,
) -> str:
    h, w = args.crop
    eval_input = load_config(None, args.overrides).data.val.resize
    ref = {r["setup"]: r["median"] for r in rows if r["variant"] == "ref"}
    eager = {r["setup"]: r for r in rows if r["variant"] == "eager"}
    lines = [
        f"Device: {device_name}; crop {h}x{w}, batch 1, AMP {args.amp} (reference: float32); "
        f"median of {args.steps} steps after {args.warmup} warm-up, all variants interleaved; "
        f"peak memory after the warm-up; profiler over {args.profile_steps} steps",
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
    pairs = [(a, b) for a, b in NORM_PAIRS if a in eager and b in eager]
    if pairs:
        lines += ["", "Norm loss overhead (ours, eager; Norm only over Source only includes "
                  "the target pass):"]  # fmt: skip
        lines += [f"- step times: {_overhead(eager, a, b)}" for a, b in pairs]
        shares = [f"{100 * norm_term / eager[b]['median']:.2f}% of the {b} step"
                  for _, b in pairs if b != "Source only"]  # fmt: skip
        lines.append(f"- the norm term timed alone (norm, loss, backward to the features, source "
                     f"and target): {norm_term * 1e3:.2f} ms" + "".join(f" = {x}" if i == 0 else
                     f", {x}" for i, x in enumerate(shares)))  # fmt: skip
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
    lines += [
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
        prog="python -m benchmarks.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--crop", type=at_least(1), nargs=2, default=[512, 1024], metavar=("H", "W")
    )
    parser.add_argument("--amp", default="bf16", choices=["off", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="also time ours compiled")
    parser.add_argument("--compile-mode", default="default", help="train.compile_mode")
    parser.add_argument("--cuda-graph", action="store_true", help="also time ours as a CUDA graph")
    parser.add_argument(
        "--profile-steps", type=at_least(0), default=3, help="profiled steps (CUDA)"
    )
    parser.add_argument(
        "--loader-configs", nargs="*", metavar="CONFIG",
        default=["configs/gta5_to_cityscapes/clan_norm.yaml",
                 "configs/gta5_to_cityscapes/released/clan_norm.yaml"],
        help="time the training loaders of these configs (none: skip)",
    )  # fmt: skip
    parser.add_argument("--loader-batches", type=at_least(1), default=100, help="batches timed")
    parser.add_argument(
        "--loader-distinct", type=at_least(1), default=8, help="synthetic images each"
    )
    parser.add_argument("--loader-overrides", nargs="*", default=[], metavar="key.sub=value",
                        help="e.g. data.num_workers=8")  # fmt: skip
    parser.add_argument("--setups", nargs="+", metavar="SETUP",
                        help=f"time these (default: {', '.join(PAPER_SETUPS)}; all: "
                        f"{', '.join(SETUPS)})")  # fmt: skip
    parser.add_argument("--steps", type=at_least(1), default=20)
    parser.add_argument("--warmup", type=at_least(0), default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-images", type=at_least(1), default=500, help="images evaluated")
    parser.add_argument("--eval-batch", type=at_least(1), default=4)
    parser.add_argument(
        "--eval-workers", type=at_least(0), default=8, help="loader worker processes"
    )
    parser.add_argument(
        "--eval-size", type=at_least(32), nargs=2, default=[1024, 2048], metavar=("H", "W")
    )
    parser.add_argument("--eval-root", help="a Cityscapes root: time its val split instead")
    parser.add_argument(
        "--eval-distinct", type=at_least(1), default=25,
        help="synthetic images drawn when --eval-root is not given (listed repeatedly)",
    )  # fmt: skip
    parser.add_argument("--eval-cache", default="data/bench_eval", help="synthetic images here")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    take_overrides(parser, args, "loader_configs", at_least_one=False)
    take_overrides(parser, args, "setups", choices=list(SETUPS))
    device = resolve_device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({torch.get_num_threads()} threads)")
    )
    if args.cuda_graph and args.warmup < 2:
        raise UsageError("--cuda-graph needs --warmup 2 or more (its capture is a warm-up step)")
    rows, layouts = bench_training(args, device)
    norm_term = bench_norm_term(args, device)
    loader = bench_loader(args, device)
    ev = bench_eval(args, device)
    table = markdown(rows, layouts, norm_term, ev, loader, args, name)
    command = command_line(["-m", "benchmarks.speed"], argv)
    table += "\n\n" + footer(provenance(command, None, device))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0
