#!/usr/bin/env bash
# Target 3 of BENCHMARKS.md: continuous batching against per-request execution (--max-batch 1) and
# static batching, over HTTP at concurrency 64, for several --max-batch values. Each configuration
# gets its own server; ROUNDS interleaved rounds; JSON under $OUT (default bench-results/batching/).
#   scripts/bench_batching.sh [MODELS_DIR] [MODEL_NAME]     DURATION=15 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-models}
MODEL=${2:-fashion-mnist}
DUR=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench-results}/batching/$MODEL
BIN=target/release/seenn
PORT=${PORT:-18380}
DATA=fashion-mnist
[ "$MODEL" = fashion-mnist ] || DATA="$MODELS/$MODEL"
mkdir -p "$OUT"
CONFIGS=("continuous-mb32:--max-batch 32" "continuous-mb8:--max-batch 8" "per-request-mb1:--max-batch 1"
         "static-mb8:--batching static --max-batch 8" "static-mb32:--batching static --max-batch 32")
for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    name=${c%%:*}; args=${c#*:}
    state=$(mktemp -d)
    # shellcheck disable=SC2086
    SEENN_LOG=warn $BIN serve --models "$MODELS" --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
      --state-dir "$state" --default-model "$MODEL" $args >"$OUT/server.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    $BIN bench --url "http://127.0.0.1:$PORT" --model "$MODEL" --data "$DATA" --concurrency 64 --duration 3 --quiet >/dev/null
    $BIN bench --url "http://127.0.0.1:$PORT" --model "$MODEL" --data "$DATA" --concurrency 64 --duration "$DUR" \
      --json --quiet >"$OUT/$name-r$round.json"
    kill -TERM "$server"; wait "$server" || true
    python3 -c "import json; r=json.load(open('$OUT/$name-r$round.json')); print(f\"round $round $name: {r['throughput_rps']:.0f} req/s, p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, avg t {r['avg_timesteps']:.3f}, errors {r['errors']}\")"
  done
done
