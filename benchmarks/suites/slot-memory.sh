#!/usr/bin/env bash
# Where the engine keeps membranes between timesteps, on the CPU: `seenn eval` in-process with
# --slot-memory host (the CPU default) and device (ONNX Runtime's allocator and copy runs: the path
# --device cuda takes, here on the CPU allocator), interleaved per round, on both image packages,
# every rule. On the CPU the device path can only cost; the table says how much, and whether every
# answer stayed the same. The GPU comparison is the gpu suite.
#   ROUNDS=3 C=64 WORKERS=<cores> LIMIT_FM=5000 LIMIT_QCFS=1000
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default ROUNDS 3 1
default C 64
default WORKERS "$(nproc)"
default LIMIT_FM 5000 100
default LIMIT_QCFS 1000 20
fresh
for round in $(seq "$ROUNDS"); do
  for pkg in fashion-mnist:"$LIMIT_FM" fashion-mnist-qcfs:"$LIMIT_QCFS"; do
    name=${pkg%%:*}
    for mem in $(order "$round" host device); do
      eval_run "$OUT/$name-$mem-r$round.json" --model "$MODELS/$name" --limit "${pkg##*:}" --concurrency "$C" \
        --engine-workers "$WORKERS" --slot-memory "$mem"
    done
  done
done
summarize
