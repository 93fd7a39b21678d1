#!/usr/bin/env bash
# Every GPU check of the repository in one run: the CUDA test suite, the README's main command
# on the GPU (eager and as a CUDA graph, timed), and the speed benchmark (step times, GPU busy
# fraction, launches, memory, loaders). Each part has its own time limit and log; summary.txt
# gets one line per part (exit status and seconds). The limits add up to
# 610 s; the device tool's calls stop at 600 s, and what is in $OUT by then still comes back.
#
#   OUT=gpu_check bash benchmarks/gpu_check.sh        # outputs in gpu_check/
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc in $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name())"
} >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
# Issue 12's figures first: eager / CUDA graph / reference for every setup (bf16), with the
# profiler's GPU busy fraction and launches, and the loaders at the real image sizes; then
# torch.compile (reduce-overhead) and float32 (TF32) for the setups the targets name.
part speed 100 "$PY" -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 8 --warmup 3 \
    --cuda-graph --eval-images 50 --eval-cache "$OUT/bench_eval" --out "$OUT/speed.md"
# Issue 32's: DAFormer's recipe on MiT-B5 at its 512x512 crops and batch (2 source and 2 target
# images) in bf16 against the float32 reference: the step time (40,000 of them are the
# schedule) and the peak memory with the feature distance (target: at most 11 GiB).
part speed_daformer 70 "$PY" -m benchmarks.speed --crop 512 512 --batch 2 --amp bf16 --steps 8 \
    --warmup 3 --setups DAFormer "DAFormer + Norm" --loader-configs --eval-images 8 \
    --eval-cache "$OUT/bench_eval" --out "$OUT/speed_daformer.md"
part speed_compile 80 "$PY" -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 8 \
    --warmup 3 --compile --compile-mode reduce-overhead --setups "CLAN + Norm" "Norm only" \
    --loader-configs --eval-images 8 --eval-cache "$OUT/bench_eval" --out "$OUT/speed_compile.md"
part speed_fp32 30 "$PY" -m benchmarks.speed --crop 512 1024 --amp off --steps 8 --warmup 3 \
    --cuda-graph --setups "CLAN + Norm" --loader-configs --eval-images 8 \
    --eval-cache "$OUT/bench_eval" --out "$OUT/speed_fp32.md"
rm -rf "$OUT/bench_eval"
part cuda_tests 170 "$PY" -m pytest tests/test_cuda.py -q -rs -x
part demo_data 30 "$PY" -c "from utils.config import load_config; from dataset.build import \
ensure_data; ensure_data(load_config('configs/demo/clan_norm.yaml').data)"
part demo_graph 50 "$PY" train_clan_norm.py --config configs/demo/clan_norm.yaml \
    train.device=cuda train.cuda_graph=true "train.out_dir=$OUT/runs" train.run_name=demo_graph
part demo 80 "$PY" train_clan_norm.py --config configs/demo/clan_norm.yaml train.device=cuda \
    "train.out_dir=$OUT/runs" train.run_name=demo
