#!/usr/bin/env bash
# Latency at c=1, and where it goes: per round `seenn eval --concurrency 1` (in-process: preprocessed
# tensors, no network), then a fresh server with `seenn bench --concurrency 1` over HTTP (the
# Fashion-MNIST test PNGs) and over gRPC, `GET /healthz` with the same client (the floor of client,
# connection and router), and an open-loop run at RATE req/s (latency from the intended send time).
# The table splits the HTTP p50 with the server's own x-*-time-ms headers (queue, inference, other)
# and the time outside the server. Target: HTTP p50 ≤ in-process p50 + 0.15 ms.
#   MODEL=fashion-mnist DURATION=8 ROUNDS=3 LIMIT=2000 RATE=200 WORKERS=<server default>
#   MODELS=models-bench PAIR=resnet19-bench MODEL=resnet19-bench   the ResNet-19 speed model (its samples)
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default MODEL fashion-mnist
default DURATION 8 0.5
default ROUNDS 3 1
default LIMIT 2000 100
default RATE 200 50
default PAIR "fashion-mnist fashion-mnist-qcfs"
fresh
# shellcheck disable=SC2086
SERVED=$(models_dir $PAIR)
DATA=$(bench_data "$MODEL")
eval_data=(--limit "$LIMIT")
[ "$DATA" = fashion-mnist ] || eval_data=(--data samples --repeat 20)
workers=()
[ -n "${WORKERS:-}" ] && workers=(--engine-workers "$WORKERS")
for round in $(seq "$ROUNDS"); do
  for part in $(order "$round" inproc http); do
    if [ "$part" = inproc ]; then
      eval_run "$OUT/eval-r$round.json" --model "$MODELS/$MODEL" "${eval_data[@]}" --concurrency 1 "${workers[@]}"
      continue
    fi
    MODELS=$SERVED serve "r$round" --default-model "$MODEL" "${workers[@]}"
    bench /dev/null --model "$MODEL" --data "$DATA" --concurrency 1 --duration "$WARMUP_S"
    bench "$OUT/http-r$round.json" --model "$MODEL" --data "$DATA" --concurrency 1 --duration "$DURATION"
    URL=$GRPC_URL bench "$OUT/grpc-r$round.json" --protocol grpc --model "$MODEL" --data "$DATA" --concurrency 1 \
      --duration "$DURATION"
    bench "$OUT/healthz-r$round.json" --get /healthz --concurrency 1 --duration "$DURATION"
    bench "$OUT/open-loop-r$round.json" --model "$MODEL" --data "$DATA" --rate "$RATE" --duration "$DURATION"
    stop
  done
done
summarize
