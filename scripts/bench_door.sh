#!/usr/bin/env bash
# Shedding at the door against shedding in the queue, under adaptive α at 2x overload
# (BENCHMARKS.md, "Adaptive α under overload"): BASE (a binary that sheds only after the wait) and
# BIN, ROUNDS interleaved rounds; per round and binary a fresh server with both packages,
# adaptive α on MODEL with objective OBJ_MS and DROP, WARM seconds of load to let α reach its
# floor, then DURATION seconds measured, open loop at RATE req/s. Prints one line per run and
# the medians; JSON under $OUT (default bench-results/door/). BASE_FIXED=1 leaves the base arm at
# the fixed configured α (no adaptive policy): BASE=target/release/seenn BASE_FIXED=1 compares
# fixed against adaptive α on one binary.
#   BASE=<old seenn> RATE=8800 OBJ_MS=5.8 scripts/bench_door.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASE:?BASE=<binary to compare against>}"
BIN=${BIN:-target/release/seenn}
MODEL=${MODEL:-fashion-mnist}
RATE=${RATE:-8800}
OBJ_MS=${OBJ_MS:-5.8}
DROP=${DROP:-0.005}
WARM=${WARM:-5}
DUR=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench-results}/door
PORT=${PORT:-18480}
# shellcheck source=scripts/nice_autogroup.sh
. scripts/nice_autogroup.sh
mkdir -p "$OUT"
rm -f "$OUT"/*.json
server=
# nice_autogroup.sh's EXIT trap (if any) is kept: this one runs it too.
prev=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "${state:-}"; '"$prev" EXIT
for round in $(seq "$ROUNDS"); do
  for name in base new; do
    bin=$BIN; [ "$name" = base ] && bin=$BASE
    state=$(mktemp -d)
    TOKEN=$(python3 -c "import secrets; print(secrets.token_hex(24))")
    printf '%s\n' "$TOKEN" >"$state/token"
    SEENN_LOG=warn $bin serve --models models --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
      --state-dir "$state" --default-model "$MODEL" --request-timeout 2 \
      --admin-token-file "$state/token" >"$OUT/server-$name.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    [ "$name" = base ] && [ "${BASE_FIXED:-0}" = 1 ] || curl -fsS -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
      -d "{\"adaptive\": {\"p99_ms\": $OBJ_MS, \"max_accuracy_drop\": $DROP}}" \
      "http://127.0.0.1:$PORT/admin/models/$MODEL/exit-policy" >/dev/null
    # The client is always BIN (its report has the server-side p99).
    $BIN bench --url "http://127.0.0.1:$PORT" --model "$MODEL" --rate "$RATE" --duration "$WARM" --quiet >/dev/null
    $BIN bench --url "http://127.0.0.1:$PORT" --model "$MODEL" --rate "$RATE" --duration "$DUR" \
      --timeout 30 --quiet --json >"$OUT/$name-r$round.json"
    kill -TERM "$server"; wait "$server" || true
    rm -rf "$state"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
cols = {}
for name in ("base", "new"):
    for r in range(1, rounds + 1):
        x = json.loads((out / f"{name}-r{r}.json").read_text())
        st = x["by_status"]
        row = (x["throughput_rps"], st.get("429", 0) / x["duration_s"], x["latency_ms"]["p99"],
               x["server_timings_ms"]["total_p99"], x["accuracy"] * 100, x["avg_timesteps"])
        cols.setdefault(name, []).append(row)
        print(f"{name} r{r}: answered {row[0]:6.0f} req/s  429 {row[1]:6.0f}/s  p99 {row[2]:6.1f} ms "
              f"(server {row[3]:5.1f})  accuracy {row[4]:.2f}%  avg t {row[5]:.3f}")
for name, rows in cols.items():
    m = [statistics.median(c) for c in zip(*rows)]
    print(f"{name} median: answered {m[0]:6.0f} req/s  429 {m[1]:6.0f}/s  p99 {m[2]:6.1f} ms (server {m[3]:5.1f})")
PY
