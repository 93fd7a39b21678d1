"""The four benchmarks: every setup's step against its reference (``bench_training``), the norm
term alone (``bench_norm_term``), the training loaders (``bench_loader``) and evaluation
(``bench_eval``), with the setups they time and the states they build."""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import benchmarks.speed.references as references
from benchmarks.speed.timing import PeakMemory, _time, profile_steps
from dataset.build import build_dataset
from dataset.datasets import Batch, eval_loader, infinite_loader
from dataset.synthetic import SyntheticSpec, generate
from model.build import build_model
from utils import losses
from utils.config import Config, load_config
from utils.distributed import DistInfo
from utils.errors import UsageError
from utils.evaluation.inference import evaluate, predict_logits
from utils.evaluation.metrics import ConfusionMatrix
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


# script -> its reference step, as the table names it
REFERENCES = {script_module(s): getattr(references, s.reference) for s in TABLE if s.reference}


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


def layout(state: TrainState) -> str:
    """How a state's step runs: memory layout of G's weights (its first convolution's: the stem
    of DeepLab-v2, MiT's first patch embedding), and compiled or eager."""
    weight = next(m.weight for m in state.model.modules() if isinstance(m, nn.Conv2d))
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


def _inputs(args: argparse.Namespace, device: torch.device) -> tuple[Batch, Batch]:
    """The random source and target batches (``--batch`` images of ``--crop``) every variant
    steps on, pinned on CUDA."""
    (h, w), b = args.crop, args.batch
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (b, h, w), generator=gen)
    source = Batch(torch.randn(b, 3, h, w, generator=gen) * 50, label, ["s"] * b)
    target = Batch(torch.randn(b, 3, h, w, generator=gen) * 50, None, ["t"] * b)
    if device.type == "cuda":  # as the loader delivers them
        source = Batch(source.image.pin_memory(), source.label.pin_memory(), source.names)
        target = Batch(target.image.pin_memory(), None, target.names)
    return source, target


def _runs(
    args: argparse.Namespace,
    device: torch.device,
    setups: Sequence[str],
    variants: Sequence[str],
    target: Batch,
) -> tuple[list[tuple], dict[str, str]]:
    """Each setup's variants as runs, their states from the same initial weights; and the
    layout each variant runs with (the last setup's)."""
    runs = []  # (setup, variant, state, step function, target batch or None)
    layouts = {}
    for name in setups:
        script, extra = SETUPS[name]
        overrides = [f"train.device={device}", f"train.amp={args.amp}",
                     f"data.batch_size={args.batch}", *extra, *args.overrides]  # fmt: skip
        ours, ref = build_pair(script, overrides, device)
        tgt = target if ours.uses_target else None
        states = {"eager": (ours, script.train_step),
                  "ref": (ref, REFERENCES.get(script, references.reference_step))}  # fmt: skip
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
    return runs, layouts


def _rounds(
    args: argparse.Namespace, device: torch.device, runs: list[tuple], source: Batch
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]:
    """The warm-up and timed rounds, every run once a round: the step times and the peak
    memory after the warm-up, by (setup, variant)."""
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
    return times, peaks


def _profiles(
    args: argparse.Namespace, device: torch.device, runs: list[tuple], source: Batch
) -> dict[tuple[str, str], dict[str, float]]:
    """Each run profiled over ``--profile-steps`` steps, on CUDA (none elsewhere)."""
    profiles = {}
    if device.type == "cuda" and args.profile_steps > 0:
        for name, key, state, fn, tgt in runs:
            steps = [lambda s=state, f=fn, b=tgt, n=2000 + i: f(s, source, b, n)
                     for i in range(args.profile_steps)]  # fmt: skip
            profiles[(name, key)] = profile_steps(steps, device)
            print(f"profiled {name} {key}: {profiles[(name, key)]}", flush=True)
    return profiles


def _rows(
    setups: Sequence[str],
    variants: Sequence[str],
    times: dict[tuple[str, str], list[float]],
    peaks: dict[tuple[str, str], float],
    profiles: dict[tuple[str, str], dict[str, float]],
) -> list[dict]:
    """A row per setup and variant: the median step time, all times, the profile and the peak
    memory (GiB) where measured."""
    rows = []
    for name in setups:
        for key in variants:
            all_times = times[(name, key)]
            row = {"setup": name, "variant": key, "median": statistics.median(all_times),
                   "all": all_times, **profiles.get((name, key), {})}  # fmt: skip
            if (name, key) in peaks:
                row["mem"] = peaks[(name, key)] / 2**30
            rows.append(row)
    return rows


def bench_training(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    """Every setup's variants (ours eager, graphed, compiled; the reference), interleaved within
    each round (in a shuffled order), so a drift in the machine's speed hits them alike and the
    setups' ratios are paired; then each profiled on CUDA. Returns the rows and the layout each
    variant ran with."""
    source, target = _inputs(args, device)
    variants = _variants(args, device)
    setups = getattr(args, "setups", None) or PAPER_SETUPS
    runs, layouts = _runs(args, device, setups, variants, target)
    times, peaks = _rounds(args, device, runs, source)
    profiles = _profiles(args, device, runs, source)
    return _rows(setups, variants, times, peaks, profiles), layouts


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


def norm_features_shape(cfg: Config, h: int, w: int, batch: int = 1) -> tuple[int, ...]:
    """The shape of the features the norm loss reads for ``batch`` ``h x w`` images: G built and run
    on the meta device (shapes, no data), so any family and size gives its own
    (DeepLab-v2's layer4 at stride 8, MiT's last stage at stride 32, DAFormer's fused head
    features at stride 4)."""
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.loss.norm_features)
        return tuple(model(torch.empty(batch, 3, h, w)).features.shape)


def bench_norm_term(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds the norm term adds to a step, timed alone, for each timed setup with the norm
    loss whose baseline is timed too (by its label): norm, loss and backward to the features,
    and the logged mean norm, for two feature maps of ``--batch`` crops (source and target, or
    source and mixed) of that setup's network. The backward it feeds into runs anyway, so this
    is its whole cost there."""
    h, w = args.crop
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)
    timed = getattr(args, "setups", None) or PAPER_SETUPS
    seconds: dict[tuple[int, ...], float] = {}
    out = {}
    for name, _ in [(a, b) for a, b in NORM_PAIRS if a in timed and b in timed]:
        cfg = load_config(None, [*SETUPS[name][1], *args.overrides])
        shape = norm_features_shape(cfg, h, w, args.batch)
        if shape not in seconds:
            seconds[shape] = _time_norm_term(shape, dtype, device, max(10, args.steps))
        out[name] = seconds[shape]
    return out


def _time_norm_term(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                    repeats: int) -> float:  # fmt: skip
    """The median seconds of the norm term on two random feature maps of ``shape``."""
    feats = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "st"]

    def both() -> None:
        for f in feats:
            (1.5e-4 * losses.stepwise_norm_loss(f, 1.0)).backward()
            losses.feature_norm(f.detach()).mean()

    both()
    return statistics.median(_time(both, device) for _ in range(repeats))


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


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of the network that evaluation is timed with: the first timed setup's
    ``model.*`` keys (DAFormer's family and size, a preset), then the command line's."""
    first = (getattr(args, "setups", None) or PAPER_SETUPS)[0]
    own = [o for o in SETUPS[first][1] if o.startswith(("model.", "loss.norm_features="))]
    return [*own, *args.overrides]


def bench_eval(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images per second of the evaluation path, as evaluate_cityscapes.py runs it (float32),
    with the first timed setup's network (``eval_overrides``): ``model`` on in-memory images
    (forward, upsample to the label, argmax, confusion matrix), and ``end_to_end`` with PNG
    decoding and resizing in the loader's workers."""
    lh, lw = args.eval_size
    cfg = load_config(None, [f"train.device={device}", *eval_overrides(args)])
    model = build_model(cfg.model, cfg.loss.norm_features).to(device).eval()
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
