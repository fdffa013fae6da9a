#!/usr/bin/env bash
# The CUDA checks of data-parallel training (issue 11), for a machine with at least one NVIDIA GPU:
#
#   bash benchmarks/distributed_cuda_check.sh [OUT_DIR]
#
# 1. a 1-GPU NCCL run (world size 1) of a smoke recipe through torchrun, and the same with synchronised
#    BatchNorm (so the NCCL path of the synchronised statistics runs too);
# 2. the one-epoch quickstart on the digits through torchrun on one GPU, and in one plain process: the
#    accuracies should agree closely (CUDA kernels are not bitwise reproducible between runs);
# 3. `pccore bench` under torchrun on one GPU: step time and the gradient all-reduce's share;
# 4. with two GPUs or more, the quickstart on two GPUs (the only multi-GPU check; a 2-GPU run is not a
#    scaling measurement).
#
# Every step has a time limit; the whole script takes a few minutes. Results go to OUT_DIR (default
# $OUT when set, else ./distributed-cuda-check), the summary to OUT_DIR/summary.txt.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-distributed-cuda-check}}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
status=0

say() { echo "$*" | tee -a "$summary"; }

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  say "$name: exit $rc in $((SECONDS - start)) s"
  if [ "$rc" -ne 0 ]; then
    status=1
    tail -n 20 "$out/$name.log" | sed 's/^/    /' | tee -a "$summary"
  fi
  return "$rc"
}

run_summary() {  # run_summary RUN_DIR: device, world size and accuracy from the run's summary.json
  python - "$1" <<'PY' | tee -a "$summary"
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
print(f"    {sys.argv[1]}: device {s['device']}, world_size {s['world_size']}, top1 {s['top1_mean']:.4f}, "
      f"top5 {s['top5_mean']:.4f}")
PY
}

say "$(python -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version()}, GPUs: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))')"
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -lt 1 ]; then
  say "no CUDA device: nothing to check"
  exit 1
fi
torchrun=(python -m torch.distributed.run --standalone)

# 1. NCCL, world size 1, smoke recipes (the second with synchronised BatchNorm statistics)
step smoke-nccl 300 "${torchrun[@]}" --nproc-per-node 1 -m pccore run recipes/vgg5_cifar10_sf_bf.toml --smoke \
  --out "$out/smoke-nccl" && run_summary "$out/smoke-nccl"
step smoke-nccl-sync 300 "${torchrun[@]}" --nproc-per-node 1 -m pccore run recipes/vgg5_cifar10_sf_bf.toml --smoke \
  --set normalization.sync=true --out "$out/smoke-nccl-sync" && run_summary "$out/smoke-nccl-sync"

# 2. one epoch of the digits quickstart: torchrun on one GPU against one plain process
step quickstart-torchrun 300 "${torchrun[@]}" --nproc-per-node 1 -m pccore run recipes/quickstart.toml \
  --set train.epochs=1 --out "$out/quickstart-torchrun" && run_summary "$out/quickstart-torchrun"
step quickstart-plain 300 python -m pccore run recipes/quickstart.toml --set train.epochs=1 \
  --out "$out/quickstart-plain" && run_summary "$out/quickstart-plain"

# 3. bench under torchrun, one GPU: the all-reduce's share at world size 1 (NCCL's fixed cost)
step bench-nccl 300 "${torchrun[@]}" --nproc-per-node 1 -m pccore bench recipes/vgg5_cifar10_sf_bf.toml \
  --steps 10 --warmup 3 && grep -E "all-reduce|s/step|pc \(|backprop" "$out/bench-nccl.log" | sed 's/^/    /' \
  | tee -a "$summary"

# 4. two GPUs, when there are two
if [ "$gpus" -ge 2 ]; then
  step quickstart-2gpu 300 "${torchrun[@]}" --nproc-per-node 2 -m pccore run recipes/quickstart.toml \
    --set train.epochs=1 --out "$out/quickstart-2gpu" && run_summary "$out/quickstart-2gpu"
else
  say "quickstart-2gpu: skipped (one GPU)"
fi

say "overall: $([ "$status" -eq 0 ] && echo passed || echo FAILED)"
exit "$status"
