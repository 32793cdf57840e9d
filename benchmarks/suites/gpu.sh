#!/usr/bin/env bash
# CPU against the CUDA execution provider, in-process (`seenn eval`), on both image packages at
# --max-batch 1, 8, 32 and 128: the CPU; --device cuda with device-resident slots (membranes stay
# on the GPU, rows move by device copies; the default there); --device cuda with host slots
# (membranes cross the bus every step). Without a CUDA device it records "skipped: no CUDA device"
# and exits 0.
# Needs a seenn built with --features cuda (GPU_BIN, default .gpu/seenn as scripts/gpu_pack.sh
# unpacks it, else BIN) and onnxruntime-gpu 1.31.1's libraries in ORT_GPU_DIR (default .gpu/); the
# CUDA and cuDNN libraries come from the machine's PyTorch (its nvidia-* packages).
#   LIMIT=5000 BATCHES="1 8 32 128" CONCURRENCY=256 WORKERS=<CPU rows' engine workers>
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default LIMIT 5000 100
default BATCHES "1 8 32 128" "8"
default CONCURRENCY 256 16
fresh
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "no CUDA device (nvidia-smi lists no GPU)" >"$OUT/skipped.txt"
  progress "skipped: no CUDA device"
  summarize
  exit 0
fi
ORT_GPU_DIR=${ORT_GPU_DIR:-.gpu}
GPU_BIN=${GPU_BIN:-$ORT_GPU_DIR/seenn}
[ -x "$GPU_BIN" ] || GPU_BIN=$BIN
data=()
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d "$ORT_GPU_DIR/fashion-mnist" ]; then
  data=(--data-dir "$ORT_GPU_DIR/fashion-mnist")
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$OUT/gpu.txt"
lib=$(ls "$ORT_GPU_DIR"/libonnxruntime.so.1.31.* 2>/dev/null | head -1 || true)
[ -n "$lib" ] || { echo "no libonnxruntime.so.1.31.* under $ORT_GPU_DIR (scripts/gpu_pack.sh)" >&2; exit 1; }
ln -sf "$(basename "$lib")" "$ORT_GPU_DIR/libonnxruntime.so"
nv=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + '/nvidia')" 2>/dev/null || true)
extra=""
[ -n "$nv" ] && [ -d "$nv" ] && extra=$(find "$nv" -maxdepth 3 -type d -name lib | tr '\n' ':')
torchlib=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))" 2>/dev/null || true)
export LD_LIBRARY_PATH="$(realpath "$ORT_GPU_DIR"):${extra}${torchlib}:${LD_LIBRARY_PATH:-}"
gpu_eval() {  # gpu_eval NAME ARGS...
  local name=$1; shift
  BIN=$GPU_BIN eval_run "$OUT/$name-r1.json" --ort-lib "$ORT_GPU_DIR/libonnxruntime.so" --limit "$LIMIT" \
    --concurrency "$CONCURRENCY" "${data[@]}" "$@"
}
for model in fashion-mnist fashion-mnist-qcfs; do
  for b in $BATCHES; do
    gpu_eval "$model-cpu-mb$b" --model "$MODELS/$model" --max-batch "$b" ${WORKERS:+--engine-workers "$WORKERS"}
    gpu_eval "$model-cuda-device-mb$b" --model "$MODELS/$model" --max-batch "$b" --device cuda --engine-workers 1 --slot-memory device
    gpu_eval "$model-cuda-host-mb$b" --model "$MODELS/$model" --max-batch "$b" --device cuda --engine-workers 1 --slot-memory host
  done
done
summarize
