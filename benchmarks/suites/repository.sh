#!/usr/bin/env bash
# Versions in and out of a serving model: SWAPS hot swaps of fashion-mnist under c=16 load against no
# swap (interleaved rounds: non-2xx answers, p99 ratio), CYCLES unload/load cycles (RSS and open file
# descriptors after against before), and three broken versions offered by a load (corrupt ONNX, bad
# manifest, failing golden check: the old version must keep serving). benchmarks/repository.py.
#   DURATION=20 ROUNDS=3 SWAPS=20 CYCLES=200 CONCURRENCY=16
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
fresh
progress "swaps under load, load/unload cycles, broken versions"
BIN="$BIN" OUT="$OUT" "${RUN[@]}" "$PY" benchmarks/repository.py
summarize
