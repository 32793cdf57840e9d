#!/usr/bin/env bash
# The one benchmark driver: benchmarks/run.sh SUITE [VAR=value ...]
#   benchmarks/run.sh --list            the suites, one line each
#   benchmarks/run.sh SUITE --help      what SUITE measures and its variables
#   benchmarks/run.sh headline          re-measure the headline; rewrites BENCHMARKS.md's table
#   SMOKE=1 benchmarks/run.sh SUITE     tiny runs (the suite only has to work; tests/bench)
# VAR=value arguments are exported before the suite runs (the same as setting them in the
# environment). Every suite writes its raw reports and summary.json under $OUT (default
# bench-results/SUITE/, git-ignored scratch); the headline also writes benchmarks/results/.
# Common variables: BIN (seenn binary), MODELS, DURATION, ROUNDS, NICE, SMOKE; benchmarks/lib.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BENCH_COMMAND="benchmarks/run.sh $*"
cd "$here/.."
usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in
  -h | --help) usage; exit 0 ;;
  --list)
    for f in "$here"/suites/*.sh; do
      printf '%-12s %s\n' "$(basename "$f" .sh)" "$(sed -n '2s/^# //p' "$f")"
    done
    exit 0 ;;
esac
SUITE=$1; shift
file="$here/suites/$SUITE.sh"
[ -f "$file" ] || { echo "no suite $SUITE; benchmarks/run.sh --list names them" >&2; exit 2; }
for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$file" | sed '$d'; exit 0 ;;
    *=*) export "${arg?}" ;;
    *) echo "unknown argument $arg (VAR=value, or --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-bench-results}/$SUITE
export SUITE OUT BENCH_COMMAND
# shellcheck source=benchmarks/lib.sh
. "$here/lib.sh"
mkdir -p "$OUT"
progress "start (reports under $OUT)"
# shellcheck source=/dev/null
. "$file"
progress "done"
