#!/usr/bin/env bash
# Engine workers and hand-off over HTTP (BENCHMARKS.md, "Engine workers"): for each configuration a
# fresh server on loopback, then closed-loop `seenn bench` runs at c1, c16 (SEENN-I and rule=fixed,
# both packages) and c64 over the Fashion-MNIST test images; ROUNDS interleaved rounds; JSON under
# $OUT (default bench-results/workers/), one summary table (median over rounds) on stdout.
#   scripts/bench_workers.sh                   DURATION=10 ROUNDS=2
#   BASE=path/to/older/seenn scripts/bench_workers.sh    # adds that binary as configuration "base"
#   MODELS=dir                                           # the packages (default models; a binary that
#                                                          reads format 1 only needs a copy marked 1)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench-results}/workers
BIN=${BIN:-target/release/seenn}
PORT=${PORT:-18480}
MODELS=${MODELS:-models}
mkdir -p "$OUT"
rm -f "$OUT"/*-r*.json
# name|binary|extra environment|server flags
CONFIGS=()
[ -n "${BASE:-}" ] && CONFIGS+=("base|$BASE||")
CONFIGS+=("workers1|$BIN||--engine-workers 1"
          "workers1-nospin|$BIN|SEENN_ENGINE_SPIN_US=0 SEENN_REPLY_SPIN_US=0|--engine-workers 1"
          "workers2|$BIN||--engine-workers 2")
T_FM=$(python3 -c "import json; print(json.load(open('models/fashion-mnist/manifest.json'))['timesteps'])")
T_QC=$(python3 -c "import json; print(json.load(open('models/fashion-mnist-qcfs/manifest.json'))['timesteps'])")

bench() {  # bench FILE ARGS...
  local file=$1; shift
  $BIN bench --url "http://127.0.0.1:$PORT" --data fashion-mnist --json --quiet --duration "$DUR" "$@" >"$file"
}

for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r name bin envs args <<<"$c"
    state=$(mktemp -d)
    # shellcheck disable=SC2086
    env SEENN_LOG=warn $envs "$bin" serve --models "$MODELS" --host 127.0.0.1 --http-port "$PORT" \
      --grpc-port $((PORT + 1)) --state-dir "$state" --default-model fashion-mnist $args >"$OUT/server.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    $BIN bench --url "http://127.0.0.1:$PORT" --model fashion-mnist --data fashion-mnist --concurrency 16 --duration 2 --quiet >/dev/null
    bench "$OUT/$name-c1-r$round.json" --model fashion-mnist --concurrency 1
    if [ "$name" != workers1-nospin ]; then
      bench "$OUT/$name-c16-r$round.json" --model fashion-mnist --concurrency 16
      bench "$OUT/$name-c16-fixed-r$round.json" --model fashion-mnist --concurrency 16 --rule fixed --max-timesteps "$T_FM"
      bench "$OUT/$name-c64-r$round.json" --model fashion-mnist --concurrency 64
      bench "$OUT/$name-qcfs-c16-r$round.json" --model fashion-mnist-qcfs --concurrency 16
      bench "$OUT/$name-qcfs-c16-fixed-r$round.json" --model fashion-mnist-qcfs --concurrency 16 --rule fixed --max-timesteps "$T_QC"
    fi
    kill -TERM "$server"; wait "$server" || true
    rm -rf "$state"
    echo "round $round $name done" >&2
  done
done

python3 scripts/bench_summary.py "$OUT"
