#!/usr/bin/env bash
# How many engine workers per model by default when a server has several models: each model gets
# cores ÷ models (`split`) or every core (`all`). Per configuration a fresh server with both
# packages; closed-loop `seenn bench` at c=64 with one model hot (each model in turn), then both
# models hot at once (c=32 each, two load generators); ROUNDS interleaved rounds; median req/s.
#   scripts/bench_default_workers.sh          DURATION=8 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DURATION:-8}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench-results}/default-workers
BIN=${BIN:-target/release/seenn}
PORT=${PORT:-18580}
CORES=$(nproc)
mkdir -p "$OUT"
SPLIT=$(( CORES / 2 > 0 ? CORES / 2 : 1 ))
CONFIGS=("split|$SPLIT" "all|$CORES")
bench() {  # bench FILE MODEL CONCURRENCY
  $BIN bench --url "http://127.0.0.1:$PORT" --data fashion-mnist --json --quiet --duration "$DUR" \
    --model "$2" --concurrency "$3" >"$1"
}
server=
trap 'kill "$server" 2>/dev/null || true' EXIT
for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r name workers <<<"$c"
    state=$(mktemp -d)
    SEENN_LOG=warn $BIN serve --models models --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
      --state-dir "$state" --engine-workers "$workers" >"$OUT/server.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "server not ready; see $OUT/server.log" >&2; exit 1; }
    bench /dev/null fashion-mnist 16
    bench "$OUT/$name-fm-r$round.json" fashion-mnist 64
    bench "$OUT/$name-qcfs-r$round.json" fashion-mnist-qcfs 64
    bench "$OUT/$name-both-fm-r$round.json" fashion-mnist 32 &
    other=$!
    bench "$OUT/$name-both-qcfs-r$round.json" fashion-mnist-qcfs 32
    wait "$other"
    kill -TERM "$server"; wait "$server" || true
    rm -rf "$state"
    echo "round $round $name ($workers workers per model) done" >&2
  done
done
python3 scripts/bench_summary.py "$OUT"
