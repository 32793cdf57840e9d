#!/usr/bin/env bash
# Adaptive α under overload (one model, default fashion-mnist): capacity (closed loop, c=64), the
# p99 the server meets at half of it (the objective: by default the server's own p99 there, the
# latency the controller measures; OBJECTIVE=client takes the load generator's p99 instead), then
# 2x capacity open-loop for 60 s with a fixed α and again with adaptive α (10 s to settle + 50 s
# measured), then half load again to see α return. The bench replays the labelled test images, so
# each run reports the accuracy of what was answered. JSON reports and the α trace under $OUT
# (default bench-results/adaptive-$MODEL/); with SEENN_LOG=info,seenn_serve::server=debug the
# server log has every control tick. alpha_trace.txt: seconds, α, the workers' batch limit.
#   scripts/adaptive_overload.sh    MODEL=fashion-mnist FACTOR=2 DROP=0.005 DEADLINE_S=2 OBJECTIVE=server
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-fashion-mnist}
FACTOR=${FACTOR:-2}
DROP=${DROP:-0.005}
DEADLINE_S=${DEADLINE_S:-2}
OBJECTIVE=${OBJECTIVE:-server}
case "$OBJECTIVE" in server | client) ;; *) echo "OBJECTIVE must be server or client, not $OBJECTIVE" >&2; exit 2 ;; esac
TRACE=
OUT=${OUT:-bench-results}/adaptive-$MODEL
BIN=target/release/seenn
PORT=${PORT:-18380}
mkdir -p "$OUT"
state=$(mktemp -d)
TOKEN=$(python3 -c "import secrets; print(secrets.token_hex(24))")
printf '%s\n' "$TOKEN" >"$state/token"
SEENN_LOG=${SEENN_LOG:-info} $BIN serve --models models --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
  --state-dir "$state" --default-model "$MODEL" --request-timeout "$DEADLINE_S" \
  --admin-token-file "$state/token" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; kill "${TRACE:-}" 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT"
policy() { curl -fsS -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d "$1" "$URL/admin/models/$MODEL/exit-policy"; echo; }
bench() { $BIN bench --url "$URL" --model "$MODEL" --timeout 30 --json --quiet "$@"; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

echo "== capacity: closed loop, c=64, 15 s" >&2
bench --concurrency 64 --duration 15 >"$OUT/capacity.json"
CAP=$(json "$OUT/capacity.json" "['throughput_rps']")
HALF=$(python3 -c "print(round($CAP / 2))"); OVER=$(python3 -c "print(round($CAP * $FACTOR))")
echo "== half load ($HALF req/s, 15 s): the objective is the p99 met there" >&2
bench --rate "$HALF" --duration 15 >"$OUT/half.json"
case "$OBJECTIVE" in
  server) OBJ=$(json "$OUT/half.json" "['server_timings_ms']['total_p99']") ;;
  client) OBJ=$(json "$OUT/half.json" "['latency_ms']['p99']") ;;
esac
echo "   capacity $CAP req/s, objective p99 $OBJ ms ($OBJECTIVE side); overload at $OVER req/s" >&2

echo "== fixed alpha: ${FACTOR}x capacity, 60 s" >&2
bench --rate "$OVER" --duration 60 >"$OUT/fixed.json"

echo "== adaptive alpha: ${FACTOR}x capacity, 10 s settling + 50 s measured" >&2
policy "{\"adaptive\": {\"p99_ms\": $OBJ, \"max_accuracy_drop\": $DROP}}" >"$OUT/policy.json"
(start=$(date +%s.%N); while true; do
   a=$(curl -fs "$URL/metrics" | awk -v m="$MODEL" '$1 == "seenn_exit_alpha{model=\""m"\"}" {a=$2}
     $1 == "seenn_engine_batch_limit{model=\""m"\"}" {b=$2} END {print a, b}')
   echo "$(python3 -c "print(round($(date +%s.%N) - $start, 1))") $a"; sleep 1; done) >"$OUT/alpha_trace.txt" &
TRACE=$!
bench --rate "$OVER" --duration 10 >"$OUT/adaptive_settle.json"
bench --rate "$OVER" --duration 50 >"$OUT/adaptive.json"
echo "== back to half load, 20 s" >&2
bench --rate "$HALF" --duration 20 >"$OUT/recover.json"
kill "$TRACE" 2>/dev/null || true
curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/admin/models/$MODEL/exit-policy" >"$OUT/final_policy.json"
grep -c "adaptive alpha moved" "$OUT/server.log" >"$OUT/moves.txt" || true
grep -c "adaptive shed level moved" "$OUT/server.log" >"$OUT/shed_moves.txt" || true
kill -TERM "$SERVER"; wait "$SERVER" || true
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = {n: json.loads((out / f"{n}.json").read_text()) for n in ("capacity", "half", "fixed", "adaptive_settle", "adaptive", "recover", "policy", "final_policy")}
def line(name, x):
    st = x["by_status"]
    return (f"{name:16} offered {x['offered_rps']:6.0f} req/s  answered {x['throughput_rps']:6.0f} req/s  "
            f"p50 {x['latency_ms']['p50']:7.1f}  p99 {x['latency_ms']['p99']:7.1f} ms (server p99 {x['server_timings_ms']['total_p99']:6.1f})  429: {st.get('429', 0):6}  "
            f"504: {st.get('504', 0):5}  accuracy {x['accuracy'] * 100:.2f}%  avg t {x['avg_timesteps']:.3f}")
h = r["half"]
print(f"capacity {r['capacity']['throughput_rps']:.0f} req/s; p99 at half load: client {h['latency_ms']['p99']:.1f} ms, "
      f"server {h['server_timings_ms']['total_p99']:.1f} ms; objective {r['policy']['adaptive']['p99_ms']} ms")
for n in ("half", "fixed", "adaptive_settle", "adaptive", "recover"):
    print(line(n, r[n]))
a = r["policy"]["adaptive"]
print(f"adaptive: configured alpha {a['configured_alpha']}, floor {a['floor_alpha']} (max_accuracy_drop {a['max_accuracy_drop']})")
print(f"alpha after the return to half load: {r['final_policy']['alpha']}; alpha moves logged: {(out / 'moves.txt').read_text().strip()}, shed level moves: {(out / 'shed_moves.txt').read_text().strip()}")
print("alpha/batch limit per second:", " ".join("/".join(l.split()[1:]) or "?" for l in (out / "alpha_trace.txt").read_text().splitlines()))
PY
