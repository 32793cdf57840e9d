#!/usr/bin/env bash
# Shadow runs (MODEL, default fashion-mnist; both image packages served), two measurements:
#  1. agreement: shadow_fraction 1.0 at the default α, the first REQUESTS Fashion-MNIST test images
#     sent once each over HTTP (c=1, --max-shadow-rows 8 so that no shadow is dropped), then the
#     server's seenn_shadow_total against the offline agreement benchmarks/shadow_offline.py computes
#     with ONNX Runtime on the same images, both with their binomial standard errors;
#  2. cost: one server with the defaults, closed loop at each concurrency of CONCS, ROUNDS rounds of
#     DURATION s without shadows and DURATION s with shadow_fraction FRACTION (the order alternates
#     every round): throughput on ÷ off per round and its median, shadow steps ÷ live steps.
#   REQUESTS=10000 CONCS="4 16" ROUNDS=5 DURATION=10 FRACTION=0.01 SKIP_AGREEMENT=
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default MODEL fashion-mnist
default REQUESTS 10000 100
default CONCS "4 16" 4
default ROUNDS 5 1
default DURATION 10 0.5
default FRACTION 0.01
default PAIR "fashion-mnist fashion-mnist-qcfs"
fresh
export ADMIN=1
# shellcheck disable=SC2086
SERVED=$(models_dir $PAIR)
load() { bench "$1" --model "$MODEL" --timeout 30 "${@:2}"; }

if [ -z "${SKIP_AGREEMENT:-}" ]; then
  progress "1. agreement: shadow_fraction 1.0, the first $REQUESTS test images once each (c=1)"
  MODELS=$SERVED serve agreement --default-model "$MODEL" --max-shadow-rows 8
  policy "$MODEL" '{"shadow_fraction": 1.0}' >"$OUT/agreement_policy.json"
  load "$OUT/agreement_bench.json" --concurrency 1 --requests "$REQUESTS"
  for _ in $(seq 100); do
    curl -fsS "$URL/metrics" | grep -q "^seenn_shadow_rows{model=\"$MODEL\"} 0$" && break; sleep 0.1
  done
  curl -fsS "$URL/metrics" >"$OUT/agreement_metrics.txt"
  stop
  progress "offline reference (ONNX Runtime, the same images and α)"
  ALPHA=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['alpha'])" "$OUT/agreement_policy.json")
  "$PY" benchmarks/shadow_offline.py --model "$MODELS/$MODEL" --alpha "$ALPHA" --limit "$REQUESTS" \
    --json "$OUT/offline.json" >/dev/null
fi

MODELS=$SERVED serve cost --default-model "$MODEL"
load /dev/null --concurrency 16 --duration "$DURATION"
for c in $CONCS; do
  progress "2. cost at c=$c: $ROUNDS rounds of $DURATION s off / on ($FRACTION)"
  curl -fsS "$URL/metrics" >"$OUT/cost-c$c-metrics-before.txt"
  for round in $(seq "$ROUNDS"); do
    for mode in $(order "$round" off on); do
      if [ "$mode" = on ]; then policy "$MODEL" "{\"shadow_fraction\": $FRACTION}" >/dev/null
      else policy "$MODEL" '{"shadow_fraction": 0}' >/dev/null; fi
      load "$OUT/cost-c$c-$mode-r$round.json" --concurrency "$c" --duration "$DURATION"
    done
  done
  curl -fsS "$URL/metrics" >"$OUT/cost-c$c-metrics-after.txt"
done
stop
summarize
