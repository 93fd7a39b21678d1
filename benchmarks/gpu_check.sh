#!/usr/bin/env bash
# Every GPU check of the repository in one run: the CUDA test suite, the README's main command
# on the GPU (timed), and a short speed benchmark. Each part has its own time limit and log;
# summary.txt gets one line per part (exit status and seconds).
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
part cuda_tests 330 "$PY" -m pytest tests/test_cuda.py -q -rs
part demo_data 120 "$PY" -c "from utils.config import load_config; from dataset.build import \
ensure_data; ensure_data(load_config('configs/demo/clan_norm.yaml').data)"
part demo 300 "$PY" train_clan_norm.py --config configs/demo/clan_norm.yaml train.device=cuda \
    "train.out_dir=$OUT/runs" train.run_name=demo
part speed 180 "$PY" -m benchmarks.speed --crop 512 1024 --amp bf16 --steps 5 --warmup 2 \
    --eval-images 50 --eval-cache "$OUT/bench_eval" --out "$OUT/speed.md"
rm -rf "$OUT/bench_eval"
