#!/usr/bin/env bash
# Adaptive α under overload (MODEL, both image packages served, --request-timeout DEADLINE_S).
# PARTS=phases (default), ab, or "phases ab":
#  - phases: one server: capacity (closed loop c=64, CAPACITY_S), the p99 at half of it (the
#    objective: the server's own p99 there, OBJECTIVE=client takes the load generator's), then
#    FACTOR × capacity open loop for OVER_S with α fixed, again with adaptive α (SETTLE_S reported
#    apart), then half load for RECOVER_S to see α return. The load replays the labelled test
#    images, so every phase reports the accuracy of what was answered; alpha_trace.txt has α and
#    the workers' batch limit per second (SEENN_LOG=info,seenn_serve::server=debug logs each tick).
#  - ab: arms a and b interleaved over ROUNDS, per round and arm a fresh server, WARM s of load at
#    RATE req/s, then DURATION s measured: arm a is A_BIN (default BIN) with α fixed (A_FIXED=1,
#    default) or adaptive (A_FIXED=0: compares two binaries' controllers), arm b is BIN adaptive;
#    objective OBJ_MS, budget DROP.
#   MODEL=fashion-mnist DROP=0.005 FACTOR=2 OBJECTIVE=server; ab: RATE=8300 OBJ_MS=4.7 WARM=12 DURATION=20 ROUNDS=3
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default MODEL fashion-mnist
default PARTS phases "phases ab"
default DROP 0.005
default FACTOR 2
default DEADLINE_S 2
default OBJECTIVE server
default CAPACITY_S 15 0.5
default HALF_S 15 0.5
default OVER_S 60 1
default SETTLE_S 10 0.5
default RECOVER_S 20 0.5
default RATE 8300 300
default OBJ_MS 4.7
default WARM 12 0.2
default DURATION 20 0.5
default ROUNDS 3 1
default PAIR "fashion-mnist fashion-mnist-qcfs"
case "$OBJECTIVE" in server | client) ;; *) echo "OBJECTIVE must be server or client, not $OBJECTIVE" >&2; exit 2 ;; esac
fresh
export ADMIN=1
# shellcheck disable=SC2086
SERVED=$(models_dir $PAIR)
load() { bench "$1" --model "$MODEL" --timeout 30 "${@:2}"; }
json() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
adaptive() { policy "$MODEL" "{\"adaptive\": {\"p99_ms\": $1, \"max_accuracy_drop\": $DROP}}"; }

if [[ " $PARTS " == *" phases "* ]]; then
  MODELS=$SERVED serve phases --default-model "$MODEL" --request-timeout "$DEADLINE_S"
  progress "capacity: closed loop, c=64, $CAPACITY_S s"
  load "$OUT/capacity.json" --concurrency 64 --duration "$CAPACITY_S"
  CAP=$(json "$OUT/capacity.json" "['throughput_rps']")
  HALF=$("$PY" -c "print(round($CAP / 2))"); OVER=$("$PY" -c "print(round($CAP * $FACTOR))")
  progress "half load: $HALF req/s, $HALF_S s (the objective is the p99 met there)"
  load "$OUT/half.json" --rate "$HALF" --duration "$HALF_S"
  case "$OBJECTIVE" in
    server) OBJ=$(json "$OUT/half.json" "['server_timings_ms']['total_p99']") ;;
    client) OBJ=$(json "$OUT/half.json" "['latency_ms']['p99']") ;;
  esac
  progress "objective p99 $OBJ ms ($OBJECTIVE side); fixed α at $OVER req/s for $OVER_S s"
  load "$OUT/fixed.json" --rate "$OVER" --duration "$OVER_S"
  MEASURED_S=$(awk -v a="$OVER_S" -v b="$SETTLE_S" 'BEGIN {print a - b}')
  progress "adaptive α at $OVER req/s: $SETTLE_S s settling, then $MEASURED_S s measured"
  adaptive "$OBJ" >"$OUT/policy.json"
  (start=$(date +%s.%N); while true; do
     a=$(curl -fs "$URL/metrics" | awk -v m="$MODEL" '$1 == "seenn_exit_alpha{model=\""m"\"}" {a=$2}
       $1 == "seenn_engine_batch_limit{model=\""m"\"}" {b=$2} END {print a, b}')
     echo "$("$PY" -c "print(round($(date +%s.%N) - $start, 1))") $a"; sleep 1; done) >"$OUT/alpha_trace.txt" &
  trace=$!
  on_exit "kill $trace 2>/dev/null"
  load "$OUT/adaptive_settle.json" --rate "$OVER" --duration "$SETTLE_S"
  load "$OUT/adaptive.json" --rate "$OVER" --duration "$MEASURED_S"
  progress "back to half load, $RECOVER_S s"
  load "$OUT/recover.json" --rate "$HALF" --duration "$RECOVER_S"
  kill "$trace" 2>/dev/null || true
  curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/admin/models/$MODEL/exit-policy" >"$OUT/final_policy.json"
  stop
fi

if [[ " $PARTS " == *" ab "* ]]; then
  for round in $(seq "$ROUNDS"); do
    for arm in $(order "$round" a b); do
      bin=$BIN; [ "$arm" = a ] && bin=${A_BIN:-$BIN}
      SERVE_BIN=$bin MODELS=$SERVED serve "ab-$arm" --default-model "$MODEL" --request-timeout "$DEADLINE_S"
      if [ "$arm" = b ] || [ "${A_FIXED:-1}" = 0 ]; then adaptive "$OBJ_MS" >/dev/null; fi
      load /dev/null --rate "$RATE" --duration "$WARM"
      load "$OUT/$arm-r$round.json" --rate "$RATE" --duration "$DURATION"
      stop
    done
  done
fi
summarize
