#!/usr/bin/env bash
# Overload: measure the server's capacity (closed loop, concurrency 64), then offer ten times that
# rate open-loop for 60 s. Records what was accepted, how fast rejections came back (429 +
# Retry-After), whether accepted requests met their deadline, the server's peak memory, and that it
# still serves afterwards. JSON reports under $OUT (default bench-results/overload/).
#   scripts/overload.sh [MODELS_DIR] [MODEL_NAME]     FACTOR=10 DURATION=60 DEADLINE_S=2
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-models}
MODEL=${2:-fashion-mnist}
FACTOR=${FACTOR:-10}
DUR=${DURATION:-60}
DEADLINE_S=${DEADLINE_S:-2}
OUT=${OUT:-bench-results}/overload
BIN=target/release/seenn
PORT=${PORT:-18280}
mkdir -p "$OUT"
state=$(mktemp -d)
SEENN_LOG=warn $BIN serve --models "$MODELS" --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
  --state-dir "$state" --default-model "$MODEL" --request-timeout "$DEADLINE_S" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT"

echo "== capacity: closed loop, concurrency 64, 15 s" >&2
$BIN bench --url "$URL" --model "$MODEL" --concurrency 64 --duration 15 --json --quiet >"$OUT/capacity.json"
CAP=$(python3 -c "import json; print(json.load(open('$OUT/capacity.json'))['throughput_rps'])")
RATE=$(python3 -c "print(round($CAP * $FACTOR))")
echo "   capacity $CAP req/s -> offering $RATE req/s for $DUR s" >&2

echo "== overload: open loop at ${FACTOR}x capacity" >&2
$BIN bench --url "$URL" --model "$MODEL" --rate "$RATE" --duration "$DUR" --timeout 30 --json >"$OUT/overload.json"

echo "== after: health, and a normal closed-loop run" >&2
curl -fsS "$URL/healthz" >"$OUT/healthz.json"
curl -fsS "$URL/readyz" >"$OUT/readyz.json"
$BIN bench --url "$URL" --model "$MODEL" --concurrency 4 --duration 5 --json --quiet >"$OUT/after.json"
curl -fsS "$URL/metrics" | grep -E '^seenn_(requests_total|cancelled_total|queue_capacity)' >"$OUT/metrics.txt"
kill -TERM "$SERVER"; wait "$SERVER" || true
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
cap, ov, after = (json.loads((out / f).read_text()) for f in ("capacity.json", "overload.json", "after.json"))
print(f"capacity {cap['throughput_rps']:.0f} req/s (c64, p99 {cap['latency_ms']['p99']:.1f} ms, RSS {cap['server_rss_mb']:.0f} MB)")
print(f"offered {ov['mode']['open_loop_rate']} req/s, issued {ov['offered_rps']:.0f} req/s for {ov['duration_s']:.1f} s: "
      f"{ov['requests']} requests, by status {ov['by_status']}")
print(f"accepted {ov['successes']} ({ov['throughput_rps']:.0f} req/s), latency p50 {ov['latency_ms']['p50']:.1f} "
      f"p99 {ov['latency_ms']['p99']:.1f} max {ov['latency_ms']['max']:.1f} ms")
print(f"rejections: p50 {ov['error_latency_ms']['p50']:.2f} p99 {ov['error_latency_ms']['p99']:.2f} ms, "
      f"{ov['rejections_with_retry_after']} with Retry-After")
print(f"server RSS peak {ov['server_rss_peak_mb']:.0f} MB; after: {after['throughput_rps']:.0f} req/s, errors {after['errors']}")
PY
