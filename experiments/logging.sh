#!/usr/bin/env bash
# Throughput with and without per-request log lines: two servers side by side, one at
# SEENN_LOG=info (the default), one at info,seenn_serve=debug (a line per answer and its span),
# three interleaved 8 s rounds at c=16 against each, then the lines each wrote.
#   experiments/logging.sh         DURATION=8 ROUNDS=3
set -euo pipefail
SUITE=logging
# shellcheck source=benchmarks/lib.sh
. "$(dirname "$0")/../benchmarks/lib.sh"
OUT=${OUT:-bench-results}/logging
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
fresh
SEENN_LOG=info serve info
A_URL=$URL
SEENN_LOG=info,seenn_serve=debug serve debug
B_URL=$URL
for round in $(seq "$ROUNDS"); do
  for name in $(order "$round" info debug); do
    if [ "$name" = info ]; then URL=$A_URL; else URL=$B_URL; fi
    bench "$OUT/$name-r$round.json" --concurrency 16 --duration "$DURATION"
  done
done
wc -l "$OUT"/server-info.log "$OUT"/server-debug.log
"$PY" benchmarks/report.py logging "$OUT"
