#!/usr/bin/env bash
# Continuous batching against per-request execution (--max-batch 1) and static batching, over HTTP.
# Per round and configuration a fresh server on MODEL alone, WARMUP s of load, then DURATION s
# closed loop at CONC; the configurations interleave (their order alternates between rounds).
# MODELS=models-bench MODEL=resnet19-bench measures the ResNet-19 speed model (its sample PNGs).
#   MODEL=fashion-mnist DURATION=15 ROUNDS=2 CONC=64 WARMUP=3
#   CONFIGS="name:server flags;..." (default: continuous at --max-batch 32 and 8, per request, static at 8 and 32)
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default MODEL fashion-mnist
default DURATION 15 0.5
default ROUNDS 2 1
default CONC 64
default WARMUP 3 0.2
default CONFIGS "continuous-mb32:--max-batch 32;continuous-mb8:--max-batch 8;per-request-mb1:--max-batch 1;static-mb8:--batching static --max-batch 8;static-mb32:--batching static --max-batch 32" \
  "continuous-mb8:--max-batch 8;static-mb8:--batching static --max-batch 8"
fresh
DATA=$(bench_data "$MODEL")
declare -A FLAGS
NAMES=()
IFS=';' read -ra configs <<<"$CONFIGS"
for c in "${configs[@]}"; do NAMES+=("${c%%:*}"); FLAGS[${c%%:*}]=${c#*:}; done
for round in $(seq "$ROUNDS"); do
  for name in $(order "$round" "${NAMES[@]}"); do
    # shellcheck disable=SC2086
    MODELS=$(models_dir "$MODEL") serve "$name" --default-model "$MODEL" ${FLAGS[$name]}
    bench /dev/null --model "$MODEL" --data "$DATA" --concurrency "$CONC" --duration "$WARMUP"
    bench "$OUT/$name-r$round.json" --model "$MODEL" --data "$DATA" --concurrency "$CONC" --duration "$DURATION"
    stop
  done
done
summarize
