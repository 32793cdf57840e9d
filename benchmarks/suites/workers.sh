#!/usr/bin/env bash
# Engine workers per model over HTTP: 1 worker, 1 without the spins, one per core, and BASE.
# Per round and configuration a fresh server with both image packages; closed-loop `seenn bench`
# over the Fashion-MNIST test PNGs: fashion-mnist (fm) at c=1, c=16 SEENN-I and rule=fixed at T,
# c=64; the converted model (qcfs) at c=16 SEENN-I and fixed T; then both models hot at once (c=32
# each, two load generators: how workers of two models share the cores). Early exit realised at
# c=16 per configuration; medians over interleaved rounds.
#   DURATION=10 ROUNDS=2 WORKER_COUNTS="1 <cores>"
#   BASE=<another seenn binary>   adds it as configuration "base" (its defaults); PAIR="fashion-mnist fashion-mnist-qcfs"
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default DURATION 10 0.5
default ROUNDS 2 1
default PAIR "fashion-mnist fashion-mnist-qcfs"
default WORKER_COUNTS "1 $(nproc)" 1
fresh
read -r FM QC <<<"$PAIR"
T_FM=$(timesteps "$MODELS/$FM"); T_QC=$(timesteps "$MODELS/$QC")
export T_FM T_QC
SERVED=$(models_dir "$FM" "$QC")
CONFIGS=()
[ -n "${BASE:-}" ] && CONFIGS+=(base)
for w in $WORKER_COUNTS; do CONFIGS+=("workers$w"); done
CONFIGS+=(workers1-nospin)

for round in $(seq "$ROUNDS"); do
  for name in $(order "$round" "${CONFIGS[@]}"); do
    progress "round $round/$ROUNDS: $name"
    case $name in
      base) SERVE_BIN=$BASE MODELS=$SERVED serve "$name" --default-model "$FM" ;;
      workers1-nospin) SERVE_ENV="SEENN_ENGINE_SPIN_US=0 SEENN_REPLY_SPIN_US=0" MODELS=$SERVED serve "$name" \
                         --default-model "$FM" --engine-workers 1 ;;
      *) MODELS=$SERVED serve "$name" --default-model "$FM" --engine-workers "${name#workers}" ;;
    esac
    run() { bench "$OUT/$name-$1-r$round.json" --duration "$DURATION" "${@:2}"; }
    bench /dev/null --model "$FM" --concurrency 16 --duration "$WARMUP_S"
    run fm-c1 --model "$FM" --concurrency 1
    if [ "$name" != workers1-nospin ]; then
      run fm-c16 --model "$FM" --concurrency 16
      run fm-c16-fixed --model "$FM" --concurrency 16 --rule fixed --max-timesteps "$T_FM"
      run fm-c64 --model "$FM" --concurrency 64
      run qcfs-c16 --model "$QC" --concurrency 16
      run qcfs-c16-fixed --model "$QC" --concurrency 16 --rule fixed --max-timesteps "$T_QC"
      run both-fm --model "$FM" --concurrency 32 &
      other=$!
      run both-qcfs --model "$QC" --concurrency 32
      wait "$other"
    fi
    stop
  done
done
summarize
