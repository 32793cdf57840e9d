#!/usr/bin/env bash
# The measurements behind BENCHMARKS.md. Starts its own servers on loopback, one configuration at a
# time, and writes every JSON report under $OUT (default bench-results/).
#   scripts/bench.sh [MODELS_DIR] [MODEL_NAME]        DURATION=20 (seconds per run)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-models}
MODEL=${2:-fashion-mnist}
DUR=${DURATION:-20}
OUT=${OUT:-bench-results}/$MODEL
BIN=target/release/seenn
mkdir -p "$OUT"
PORT=${PORT:-18180}
GRPC=$((PORT + 1))
T=$(python3 -c "import json,sys; print(json.load(open('$MODELS/$MODEL/manifest.json'))['timesteps'])")
DATA=fashion-mnist
[ "$MODEL" = fashion-mnist ] || [ "$MODEL" = fashion-mnist-qcfs ] || DATA="$MODELS/$MODEL"

serve() {  # serve NAME ARGS...: start a server, wait until ready
  local state; state=$(mktemp -d)
  SEENN_LOG=warn $BIN serve --models "$MODELS" --host 127.0.0.1 --http-port $PORT --grpc-port $GRPC \
    --state-dir "$state" --default-model "$MODEL" "$@" >"$OUT/server.log" 2>&1 &
  SERVER=$!
  if curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then echo "port $PORT is taken" >&2; exit 1; fi
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "server did not start" >&2; cat "$OUT/server.log" >&2; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=; }
trap '[ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null' EXIT
bench() {  # bench NAME ARGS...
  local name=$1; shift
  echo "== $MODEL $name" >&2
  $BIN bench --url "${URL:-http://127.0.0.1:$PORT}" --model "$MODEL" --data "$DATA" --json --quiet "$@" >"$OUT/$name.json"
  python3 -c "import json; r=json.load(open('$OUT/$name.json')); print(f\"   {r['throughput_rps']:.1f} req/s, p50 {r['latency_ms']['p50']:.3f} ms, p99 {r['latency_ms']['p99']:.3f} ms, avg t {r['avg_timesteps']:.3f}, errors {r['errors']}, rss {r['server_rss_mb']}\")" >&2
}

# In-process reference (no network), concurrency 1.
SEENN_LOG=warn $BIN eval --model "$MODELS/$MODEL" --data "$DATA" --json --quiet --limit 2000 >"$OUT/eval.json" 2>/dev/null \
  || SEENN_LOG=warn $BIN eval --model "$MODELS/$MODEL" --data samples --json --quiet >"$OUT/eval.json"

serve
bench http-c1-confidence --concurrency 1 --duration "$DUR"
URL="http://127.0.0.1:$GRPC" bench grpc-c1-confidence --concurrency 1 --duration "$DUR" --protocol grpc
bench c16-confidence --concurrency 16 --duration "$DUR"
bench c16-fixedT --concurrency 16 --duration "$DUR" --rule fixed --max-timesteps "$T"
bench c64-continuous --concurrency 64 --duration "$DUR"
bench open-loop --rate 200 --duration "$DUR"
stop

serve --max-batch 1
bench c64-maxbatch1 --concurrency 64 --duration "$DUR"
stop

serve --batching static
bench c64-static --concurrency 64 --duration "$DUR"
stop

if [ -n "${SOAK:-}" ]; then
  serve
  bench soak-c64-60s --concurrency 64 --duration 60
  stop
fi
echo "reports in $OUT" >&2
