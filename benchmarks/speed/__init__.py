r"""Step time, GPU use, peak memory, loader and evaluation throughput of every setup, ours
against the released code's procedure, on whatever device this runs on.

    python -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 20 --cuda-graph --compile \
        --compile-mode reduce-overhead                                        # a GPU
    python -m benchmarks.speed --crop 256 512 --amp off --steps 6 --device cpu \
        --eval-images 4 --eval-distinct 2 --eval-batch 1 --eval-workers 2      # this CPU

For each setup (Source only, Norm only, CLAN, CLAN + Norm; with ``--setups`` also MaxSquare,
+ Norm, + IW and + IW + Norm, DACS and + Norm, DAFormer, + Norm and + Norm (decoder)) it
times our ``train_step`` eagerly, as one CUDA graph (``--cuda-graph``: ``train.cuda_graph``,
CUDA only) and compiled (``--compile``: ``train.compile`` with ``--compile-mode``), and a
reference step that follows the released code: a separate backward through the backbone for
the norm term (``retain_graph``), classifier heads on every pass, float32, eager; for
MaxSquare, its ``solve_gta5.py`` (the source backward, then the target's, IW's class histogram
on the host, the loss read back each step); for DACS, its ``trainUDA.py``; for DAFormer, its
``dacs.py`` (the source backward kept for the feature distance's own backward, the values
read back, ClassMix one image at a time, SegFormer's explicit attention). Every variant of a
setup runs on the same network (full-size DeepLab-v2/ResNet-101, DAFormer's MiT-B5, or
``model.*`` overrides such as ``model.backbone=mit_b0``) and the same random inputs
(``--batch`` source and target images of ``--crop``, 1 by default; DAFormer's recipe steps on 2),
interleaved within each round in a shuffled order, with the same memory layout (channels_last
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
source/target pairs per second. Evaluation is timed as ``evaluate_cityscapes.py`` runs it, with
the first timed setup's network, on the real Cityscapes val split (``--eval-root``) or on
synthetic images of its size and layout, end to end and for the model alone.
"""

from __future__ import annotations

# Every name is imported from here (``from benchmarks.speed import SETUPS``); each module holds
# one duty: ``references`` (the released code's steps), ``timing`` (step time, peak memory,
# the profiler), ``benchmarks`` (the setups timed and the four benchmarks), ``report`` (the
# markdown); the command line is ``main``, here, run by ``__main__``.
import argparse
from collections.abc import Sequence

import torch

from benchmarks.speed.benchmarks import (
    NORM_PAIRS,
    PAPER_SETUPS,
    REFERENCES,
    SETUPS,
    VARIANTS,
    bench_eval,
    bench_loader,
    bench_norm_term,
    bench_training,
    build_pair,
    build_state,
    eval_dataset,
    eval_overrides,
    layout,
    norm_features_shape,
)
from benchmarks.speed.references import (
    reference_dacs_step,
    reference_maxsquare_step,
    reference_step,
)
from benchmarks.speed.references_daformer import explicit_attention, reference_daformer_step
from benchmarks.speed.report import markdown
from benchmarks.speed.timing import (
    LAUNCH_CALLS,
    PeakMemory,
    _state_bytes,
    busy_time,
    profile_steps,
)
from utils.config import take_overrides
from utils.distributed import resolve_device
from utils.errors import UsageError, add_debug_flag, at_least
from utils.provenance import command_line, footer, provenance

__all__ = [  # what the tests use, and every name this module had before it became a package
    "LAUNCH_CALLS",
    "NORM_PAIRS",
    "PAPER_SETUPS",
    "REFERENCES",
    "SETUPS",
    "VARIANTS",
    "PeakMemory",
    "_state_bytes",
    "bench_eval",
    "bench_loader",
    "bench_norm_term",
    "bench_training",
    "build_pair",
    "build_state",
    "busy_time",
    "eval_dataset",
    "eval_overrides",
    "explicit_attention",
    "layout",
    "main",
    "markdown",
    "norm_features_shape",
    "profile_steps",
    "reference_dacs_step",
    "reference_daformer_step",
    "reference_maxsquare_step",
    "reference_step",
]


def _parser() -> argparse.ArgumentParser:
    """The command line: what to time, at which sizes, and the overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--crop", type=at_least(1), nargs=2, default=[512, 1024], metavar=("H", "W")
    )
    parser.add_argument(
        "--batch", type=at_least(1), default=1,
        help="images per source and target batch (data.batch_size for every setup)",
    )  # fmt: skip
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Time what the command line asks for, print the report (and write it to ``--out``)."""
    parser = _parser()
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
