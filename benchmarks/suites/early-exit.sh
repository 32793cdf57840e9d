#!/usr/bin/env bash
# Early exit realised: SEENN-I ÷ fixed-T throughput set against T ÷ avg t (the most that skipping
# timesteps can buy), per image package, in-process and over HTTP.
#  - in-process: `seenn eval --concurrency C --engine-workers W` runs every rule over the same test
#    images (no HTTP, no load generator: the engine's own share of the win);
#  - HTTP: per engine-worker count in HTTP_WORKERS a server with both packages, `seenn bench` at
#    c=16 with SEENN-I and with rule=fixed at T, back to back.
# Rounds interleave; medians per round.
#   ROUNDS=3 C=16 WORKERS=<cores> LIMIT_FM=10000 LIMIT_QCFS=2000 DURATION=8 HTTP_WORKERS="1 <cores>"
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default ROUNDS 3 1
default C 16
default WORKERS "$(nproc)"
default LIMIT_FM 10000 100
default LIMIT_QCFS 2000 20
default DURATION 8 0.5
default HTTP_WORKERS "1 $(nproc)" 1
default PAIR "fashion-mnist fashion-mnist-qcfs"
fresh
read -r FM QC <<<"$PAIR"
declare -A LIMITS=([$FM]=$LIMIT_FM [$QC]=$LIMIT_QCFS)
SERVED=$(models_dir "$FM" "$QC")
for round in $(seq "$ROUNDS"); do
  for part in $(order "$round" inproc http); do
    if [ "$part" = inproc ]; then
      for pkg in "$FM" "$QC"; do
        eval_run "$OUT/$pkg-w$WORKERS-inproc-r$round.json" --model "$MODELS/$pkg" --limit "${LIMITS[$pkg]}" \
          --concurrency "$C" --engine-workers "$WORKERS"
      done
      continue
    fi
    for w in $HTTP_WORKERS; do
      MODELS=$SERVED serve "http-w$w" --engine-workers "$w"
      bench /dev/null --model "$FM" --concurrency 16 --duration "$WARMUP_S"
      for pkg in "$FM" "$QC"; do
        T=$(timesteps "$MODELS/$pkg")
        bench "$OUT/$pkg-T$T-w$w-http-r$round.json" --model "$pkg" --concurrency 16 --duration "$DURATION"
        bench "$OUT/$pkg-T$T-w$w-http-fixed-r$round.json" --model "$pkg" --concurrency 16 --duration "$DURATION" \
          --rule fixed --max-timesteps "$T"
      done
      stop
    done
  done
done
summarize
