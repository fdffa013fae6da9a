#!/usr/bin/env bash
# Every check in this round that needs a CUDA device, in one go, for the device session of a GPU machine:
#
#   bash benchmarks/cuda_checks.sh [OUT_DIR]
#
# 1. the CUDA tests: captured against eager steps and no host synchronisation on replay (issue 12),
#    bf16/channels_last gradients against fp32 (issue 13), the sparse engine on the device (issue 14);
# 2. benchmarks/gpu.py: the paper's Table 6 rows, eager and captured first, compiled last, under one
#    time budget (GPU_BUDGET seconds, default 300);
# 3. benchmarks/distributed_cuda_check.sh: the 1-GPU NCCL run of issue 11.
#
# Results go to OUT_DIR (default $OUT when set, else ./cuda-checks); the summary to OUT_DIR/summary.txt.
# About 8 minutes in all with the default budget.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-cuda-checks}}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
status=0
say() { echo "$*" | tee -a "$summary"; }

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || { say "no NVIDIA GPU here (nvidia-smi failed)"; exit 1; }
say "device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"

timeout 180 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_graphs.py tests/test_sparse.py \
    > "$out/tests.log" 2>&1
code=$?
say "CUDA tests: exit $code ($(tail -1 "$out/tests.log"))"
[ "$code" -eq 0 ] || status=1

python benchmarks/gpu.py --out "$out" --budget "${GPU_BUDGET:-300}" > "$out/gpu.log" 2>&1
code=$?
say "benchmarks/gpu.py: exit $code (table in $out/gpu.md)"
[ "$code" -eq 0 ] || status=1

bash benchmarks/distributed_cuda_check.sh "$out/distributed" > "$out/distributed.log" 2>&1
code=$?
say "distributed_cuda_check.sh: exit $code (see $out/distributed/summary.txt)"
[ "$code" -eq 0 ] || status=1
exit $status
