#!/usr/bin/env bash
# CPU against the CUDA execution provider, in-process (`seenn eval`, no network), at several
# --max-batch values, on the fashion-mnist packages; prints one Markdown table. Under CUDA both slot
# memories run: `device` (the default there: membranes stay on the GPU between timesteps, rows move
# by device copies) and `host` (membranes cross the bus at every step), so the table shows what
# device-resident slots buy.
#
#   scripts/gpu_bench.sh build    # here: release build with the `cuda` feature into target/
#   scripts/gpu_bench.sh run      # on the GPU machine (see below)
#
# scripts/gpu_pack.sh packs the binary, the libraries and the test split into parts that fit the
# device machine's per-call limit and prints the calls to make.
# On the GPU machine (see the project's GPU notes): the onnxruntime-gpu 1.31.1 libraries
# (libonnxruntime.so.1.31.1, libonnxruntime_providers_shared.so, libonnxruntime_providers_cuda.so)
# must sit in $ORT_GPU_DIR (default .gpu/), and the CUDA / cuDNN libraries come from the machine's
# PyTorch (its nvidia-* packages), found with python3. The CUDA provider is registered with
# error_on_failure, so a silent fall-back to the CPU fails the run instead of passing for a GPU run.
#   ENV: BIN (default target/release/seenn), LIMIT (images, default 5000), BATCHES ("1 8 32 128"),
#        CONCURRENCY (default 256), WORKERS (engine workers for the CPU rows, default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
BIN=${BIN:-target/release/seenn}

if [ "$mode" = build ]; then
  cargo build --release --features cuda
  ldd --version | head -1
  exit 0
fi

ORT_GPU_DIR=${ORT_GPU_DIR:-.gpu}
# The test split packed by scripts/gpu_pack.sh, when the machine has no Debian dataset package.
if [ -z "${DATA_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d "$ORT_GPU_DIR/fashion-mnist" ]; then
  DATA_DIR=$ORT_GPU_DIR/fashion-mnist
fi
LIMIT=${LIMIT:-5000}
BATCHES=${BATCHES:-"1 8 32 128"}
C=${CONCURRENCY:-256}
OUT=${OUT:-bench-results}/gpu
mkdir -p "$OUT"
ldd --version | head -1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
lib=$(ls "$ORT_GPU_DIR"/libonnxruntime.so.1.31.* 2>/dev/null | head -1 || true)
[ -n "$lib" ] || { echo "no libonnxruntime.so.1.31.* under $ORT_GPU_DIR" >&2; exit 1; }
ln -sf "$(basename "$lib")" "$ORT_GPU_DIR/libonnxruntime.so"
# CUDA and cuDNN from PyTorch's nvidia-* wheels.
nv=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + '/nvidia')" 2>/dev/null || true)
extra=""
if [ -n "$nv" ] && [ -d "$nv" ]; then
  extra=$(find "$nv" -maxdepth 3 -type d -name lib | tr '\n' ':')
fi
torchlib=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))" 2>/dev/null || true)
export LD_LIBRARY_PATH="$(realpath "$ORT_GPU_DIR"):${extra}${torchlib}:${LD_LIBRARY_PATH:-}"
export SEENN_LOG=warn

run() {  # run NAME ARGS...: one eval, JSON kept
  local name=$1; shift
  echo "== $name" >&2
  "$BIN" eval --ort-lib "$ORT_GPU_DIR/libonnxruntime.so" --json --quiet --limit "$LIMIT" \
    --concurrency "$C" ${DATA_DIR:+--data-dir "$DATA_DIR"} "$@" >"$OUT/$name.json"
}

for model in fashion-mnist fashion-mnist-qcfs; do
  for b in $BATCHES; do
    run "$model-cpu-mb$b" --model "models/$model" --max-batch "$b" ${WORKERS:+--engine-workers "$WORKERS"}
    run "$model-cuda-mb$b" --model "models/$model" --max-batch "$b" --device cuda --engine-workers 1 --slot-memory device
    run "$model-cudahost-mb$b" --model "models/$model" --max-batch "$b" --device cuda --engine-workers 1 --slot-memory host
  done
done

python3 - "$OUT" $BATCHES <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); batches = sys.argv[2:]
print("| model | device | slots | max-batch | fixed T req/s | SEENN-I req/s | SEENN-I p50 ms | SEENN-I p99 ms | avg t |")
print("|---|---|---|---|---|---|---|---|---|")
rows = (("cpu", "cpu", "host"), ("cuda", "cuda", "device"), ("cudahost", "cuda", "host"))
for model in ("fashion-mnist", "fashion-mnist-qcfs"):
    for key, dev, slots in rows:
        for b in batches:
            r = json.loads((out / f"{model}-{key}-mb{b}.json").read_text())
            fixed, conf = r["rules"][0], r["rules"][1]
            print(f"| {model} | {dev} | {slots} | {b} | {fixed['throughput_rps']:.0f} | {conf['throughput_rps']:.0f} | "
                  f"{conf['latency_p50_ms']:.3f} | {conf['latency_p99_ms']:.3f} | {conf['avg_timesteps']:.3f} |")
EOF
