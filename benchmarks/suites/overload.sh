#!/usr/bin/env bash
# Overload and soak on one server (the image packages, the defaults, --request-timeout DEADLINE_S):
#  1. soak: SOAK_S s closed loop at c=64 (target: no errors, server RSS < 500 MB);
#  2. capacity: CAPACITY_S s closed loop at c=64;
#  3. overload: FACTOR × capacity open loop for DURATION s: what was accepted, how fast the
#     rejections came back (429 + Retry-After), whether accepted requests met their deadline, the
#     server's peak memory;
#  4. after: /healthz, /readyz and a normal closed-loop run (the server still serves).
#   MODEL=fashion-mnist FACTOR=10 DURATION=60 SOAK_S=60 CAPACITY_S=15 DEADLINE_S=2
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default MODEL fashion-mnist
default FACTOR 10 2
default DURATION 60 0.5
default SOAK_S 60 1
default CAPACITY_S 15 1
default DEADLINE_S 2
default PAIR "fashion-mnist fashion-mnist-qcfs"
fresh
# shellcheck disable=SC2086
MODELS=$(models_dir $PAIR) serve overload --default-model "$MODEL" --request-timeout "$DEADLINE_S"
progress "soak: c=64 for $SOAK_S s"
bench "$OUT/soak.json" --model "$MODEL" --concurrency 64 --duration "$SOAK_S"
progress "capacity: c=64 for $CAPACITY_S s"
bench "$OUT/capacity.json" --model "$MODEL" --concurrency 64 --duration "$CAPACITY_S"
RATE=$("$PY" -c "import json, sys; print(round(json.load(open(sys.argv[1]))['throughput_rps'] * float(sys.argv[2])))" \
  "$OUT/capacity.json" "$FACTOR")
progress "overload: open loop at $RATE req/s ($FACTOR× capacity) for $DURATION s"
bench "$OUT/overload.json" --model "$MODEL" --rate "$RATE" --duration "$DURATION" --timeout 30
curl -fsS "$URL/healthz" >"$OUT/healthz.txt"
curl -fsS "$URL/readyz" >"$OUT/readyz.txt"
bench "$OUT/after.json" --model "$MODEL" --concurrency 4 --duration "$CAPACITY_S"
curl -fsS "$URL/metrics" | grep -E '^seenn_(requests_total|cancelled_total|queue_capacity)' >"$OUT/metrics.txt" || true
stop
summarize
