#!/usr/bin/env bash
# In-process scaling with cores, against ONNX Runtime alone: per round `seenn eval --concurrency 64`
# with 1 engine worker and with one per core, then benchmarks/ort_only.py with 1 process and one
# per core (ONNX Runtime and nothing else: the same images, batch and exit rule), SEENN-I images/s
# and CPU ms per image; ratios within each round, medians over rounds.
#   MODEL=fashion-mnist LIMIT=3000 ROUNDS=3     (NICE=-10 as root on a shared host)
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default MODEL fashion-mnist
default LIMIT 3000 100
default ROUNDS 3 1
fresh
N=$(nproc)
for round in $(seq "$ROUNDS"); do
  for w in 1 "$N"; do
    eval_run "$OUT/eval-w$w-r$round.json" --model "$MODELS/$MODEL" --limit "$LIMIT" --concurrency 64 --engine-workers "$w"
  done
  for p in 1 "$N"; do
    "${RUN[@]}" "$PY" benchmarks/ort_only.py --model "$MODELS/$MODEL" --limit "$LIMIT" --procs "$p" --json >"$OUT/ort-p$p-r$round.json"
    progress "ort-p$p-r$round: $("$PY" benchmarks/report.py line "$OUT/ort-p$p-r$round.json")"
  done
done
summarize
