#!/usr/bin/env bash
# The headline: per model, seenn (SEENN-I and fixed T) against a Python server and ONNX Runtime alone.
# Per round and model, the three systems in an order that alternates between rounds:
#  - seenn: `seenn serve` with its defaults on that one package; `seenn bench` over the
#    Fashion-MNIST test PNGs, closed loop: c=1 (SEENN-I p50), c=16 SEENN-I and rule=fixed at T
#    (req/s; realised early exit = their ratio ÷ T/avg t), c=64 SEENN-I (req/s, p99);
#  - python: benchmarks/python_baseline.py (FastAPI + uvicorn, 2 workers, ONNX Runtime, fixed T)
#    on the same package, the same client at c=1, 16 and 64;
#  - in-process: `seenn eval --concurrency 64` (no HTTP) against benchmarks/ort_only.py with one
#    process per core (ONNX Runtime alone, the same images and exit rule), SEENN-I images/s.
# Medians over ROUNDS go to RESULTS/headline.json (default benchmarks/results/), the reports to
# RESULTS/headline/, and BENCHMARKS.md's headline table is rewritten (not with SMOKE=1 or WRITE=0).
#   DURATION=10 ROUNDS=3 LIMIT=2000 HEADLINE_MODELS="fashion-mnist fashion-mnist-qcfs" WRITE=1
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default DURATION 10 0.5
default ROUNDS 3 1
default LIMIT 2000 100
default HEADLINE_MODELS "fashion-mnist fashion-mnist-qcfs" "fashion-mnist"
default RESULTS benchmarks/results "$OUT"
default WRITE 1 0
fresh
CORES=$(nproc)

for round in $(seq "$ROUNDS"); do
  for model in $HEADLINE_MODELS; do
    T=$(timesteps "$MODELS/$model")
    for system in $(order "$round" seenn python inproc); do
      progress "round $round/$ROUNDS $model: $system"
      case $system in
        seenn)
          MODELS=$(models_dir "$model") serve "seenn-$model"
          bench /dev/null --model "$model" --concurrency 16 --duration "$WARMUP_S"
          bench "$OUT/$model-seenn-c1-r$round.json" --model "$model" --concurrency 1 --duration "$DURATION"
          bench "$OUT/$model-seenn-c16-r$round.json" --model "$model" --concurrency 16 --duration "$DURATION"
          bench "$OUT/$model-seenn-c16-fixed-r$round.json" --model "$model" --concurrency 16 --duration "$DURATION" \
            --rule fixed --max-timesteps "$T"
          bench "$OUT/$model-seenn-c64-r$round.json" --model "$model" --concurrency 64 --duration "$DURATION"
          stop ;;
        python)
          python_serve "$model"
          bench /dev/null --model "$model" --concurrency 16 --duration "$WARMUP_S"
          for c in 1 16 64; do
            bench "$OUT/$model-python-c$c-r$round.json" --model "$model" --concurrency "$c" --duration "$DURATION"
          done
          stop ;;
        inproc)
          eval_run "$OUT/$model-eval-r$round.json" --model "$MODELS/$model" --limit "$LIMIT" --concurrency 64
          "${RUN[@]}" "$PY" benchmarks/ort_only.py --model "$MODELS/$model" --limit "$LIMIT" --procs "$CORES" \
            --json >"$OUT/$model-ort-r$round.json"
          progress "$model-ort-r$round: $("$PY" benchmarks/report.py line "$OUT/$model-ort-r$round.json")" ;;
      esac
    done
  done
done
summarize --results "$RESULTS" --write "$WRITE"
