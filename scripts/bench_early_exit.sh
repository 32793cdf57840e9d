#!/usr/bin/env bash
# Early exit realised in-process (BENCHMARKS.md, "Early exit realised"): per round and package,
# `seenn eval --concurrency C --engine-workers W` runs every rule over the same test images; the
# ratio SEENN-I ÷ fixed-T throughput is set against T ÷ avg t (what skipping timesteps could buy
# at most). No HTTP and no load generator: the engine's own share of the early-exit win.
#   scripts/bench_early_exit.sh     ROUNDS=3 C=16 WORKERS=2 LIMIT_FM=10000 LIMIT_QCFS=2000
#   NICE=-10 scripts/bench_early_exit.sh   # as root on a shared machine (see scripts/bench_cores.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
C=${C:-16}
WORKERS=${WORKERS:-2}
BIN=${BIN:-target/release/seenn}
OUT=${OUT:-bench-results}/early-exit
# shellcheck source=scripts/nice_autogroup.sh
. scripts/nice_autogroup.sh
mkdir -p "$OUT"
rm -f "$OUT"/*.json
for round in $(seq "$ROUNDS"); do
  for pkg in fashion-mnist:"${LIMIT_FM:-10000}" fashion-mnist-qcfs:"${LIMIT_QCFS:-2000}"; do
    name=${pkg%%:*}
    SEENN_LOG=warn $BIN eval --model "models/$name" --limit "${pkg##*:}" --concurrency "$C" \
      --engine-workers "$WORKERS" --quiet --json >"$OUT/$name-r$round.json"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
for name in ("fashion-mnist", "fashion-mnist-qcfs"):
    ratios = []
    for r in range(1, rounds + 1):
        d = json.loads((out / f"{name}-r{r}.json").read_text())
        rule = {x["rule"]: x for x in d["rules"]}
        fixed, conf = rule["fixed"], rule["confidence"]
        ideal = d["timesteps"] / conf["avg_timesteps"]
        got = conf["throughput_rps"] / fixed["throughput_rps"]
        ratios.append(got / ideal)
        print(f"{name} r{r}: SEENN-I {conf['throughput_rps']:7.0f} req/s, fixed T={d['timesteps']} "
              f"{fixed['throughput_rps']:7.0f} req/s: {got:.2f}x of T/avg t = {ideal:.2f} -> {got / ideal:.3f}")
    print(f"{name}: median {statistics.median(ratios):.3f} of the ideal (target >= 0.9)")
PY
