#!/usr/bin/env bash
# Tails of long requests: the batch width chosen from the measured cost curve (this binary's
# default, `--batch-width auto`) against the previous engine and the Python baseline, and answers
# by the deadline under overload.
# Per round, in an order that alternates between rounds:
#  - seenn: this binary with its defaults, both image packages;
#  - base: BASE (another seenn binary, e.g. the previous commit's) with its defaults; without BASE,
#    this binary with `--batch-width 8`, the previous engine's behaviour (every step runs up to
#    --max-batch rows);
#  - python: the Python alternative with the same early exit, benchmarks/python_baseline.py
#    --exit confidence on the converted model (FastAPI + uvicorn, 2 workers, one request at a time
#    each, SEENN-I at the package's default alpha).
# Each: closed-loop `seenn bench` over the Fashion-MNIST test PNGs on the converted model (qcfs,
# T=32) at c=1, 16 and 64; seenn and base also on fashion-mnist (fm, T=4) at c=1, 16 and 64.
# Then deadlines on qcfs (seenn, and base): capacity X = the c=16 throughput; p99 at an open-loop
# half load (X/2); then 2X open loop with every request carrying that p99 as its deadline
# (`--deadline-ms`): the answers flagged deadline_exit (which the previous engine answered 504), and
# their accuracy on the labelled test images.
# The deadline is rounded up to whole milliseconds, which every version of the server accepts;
# DEADLINE_MS=N gives both binaries that deadline instead of each its own half-load p99.
#   DURATION=8 ROUNDS=3 BASE=<seenn binary> PAIR="fashion-mnist fashion-mnist-qcfs" PARTS="load deadlines"
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default DURATION 8 0.5
default ROUNDS 3 1
default PAIR "fashion-mnist fashion-mnist-qcfs"
default PARTS "load deadlines"
fresh
read -r FM QC <<<"$PAIR"
SERVED=$(models_dir "$FM" "$QC")
PKG_DIR=$MODELS

# start CONFIG: the server of one configuration, serving both packages (python: the converted one).
start() {
  case $1 in
    seenn) MODELS=$SERVED serve seenn --default-model "$FM" ;;
    base) if [ -n "${BASE:-}" ]; then SERVE_BIN=$BASE MODELS=$SERVED serve base --default-model "$FM"
          else MODELS=$SERVED serve base --default-model "$FM" --batch-width 8; fi ;;
    python) MODELS=$PKG_DIR python_serve "$QC" --exit confidence ;;
  esac
}

for round in $(seq "$ROUNDS"); do
  [[ " $PARTS " == *" load "* ]] || break
  for name in $(order "$round" seenn base python); do
    progress "round $round/$ROUNDS: $name"
    start "$name"
    bench /dev/null --model "$QC" --concurrency 16 --duration "$WARMUP_S"
    for c in 1 16 64; do
      bench "$OUT/$name-qcfs-c$c-r$round.json" --model "$QC" --concurrency "$c" --duration "$DURATION"
    done
    if [ "$name" != python ]; then
      for c in 1 16 64; do
        bench "$OUT/$name-fm-c$c-r$round.json" --model "$FM" --concurrency "$c" --duration "$DURATION"
      done
    fi
    stop
  done
done

# Deadlines at twice the capacity, with the half-load p99 as every request's deadline.
p99_of() { "$PY" -c "import json, math, sys; print(math.ceil(json.load(open(sys.argv[1]))['latency_ms']['p99']))" "$1"; }
rps_of() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['throughput_rps'])" "$1"; }
for round in $(seq "$ROUNDS"); do
  [[ " $PARTS " == *" deadlines "* ]] || break
  for name in $(order "$round" seenn base); do
    progress "deadlines round $round/$ROUNDS: $name"
    start "$name"
    bench /dev/null --model "$QC" --concurrency 16 --duration "$WARMUP_S"
    bench "$OUT/deadline-$name-capacity-r$round.json" --model "$QC" --concurrency 16 --duration "$DURATION"
    X=$(rps_of "$OUT/deadline-$name-capacity-r$round.json")
    HALF=$("$PY" -c "print(max(1.0, $X / 2))"); DOUBLE=$("$PY" -c "print(max(2.0, $X * 2))")
    bench "$OUT/deadline-$name-half-r$round.json" --model "$QC" --rate "$HALF" --duration "$DURATION"
    P99=${DEADLINE_MS:-$(p99_of "$OUT/deadline-$name-half-r$round.json")}
    bench "$OUT/deadline-$name-double-r$round.json" --model "$QC" --rate "$DOUBLE" --duration "$DURATION" \
      --deadline-ms "$P99"
    stop
  done
done
summarize
