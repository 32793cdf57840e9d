#!/usr/bin/env bash
# The engine's and the reply's spins: SPINS (values of the environment variable VAR:
# SEENN_ENGINE_SPIN_US, the default, or SEENN_REPLY_SPIN_US; 0 = no spin) compared on one binary,
# ROUNDS interleaved rounds. Per round and value: `seenn eval --concurrency 1` in-process, then a
# fresh server (both image packages, default workers) with `seenn bench` over the Fashion-MNIST test
# PNGs at each of CONCS, `wrk` at c=1 over the package's 64 sample PNGs (when wrk is installed:
# apt-get install wrk), then an open-loop run at IDLE_RATE req/s during which the server's CPU time
# is read from /proc (the spin's cost at sparse traffic). Prints one line per run and a table of
# medians; JSON under $OUT (default bench-results/spin/).
#   NICE=-10 experiments/spin.sh          SPINS="0 500" CONCS="1 2 4 16 64" DURATION=5 ROUNDS=3
#   NICE=-10 VAR=SEENN_REPLY_SPIN_US SPINS="0 1000" experiments/spin.sh
set -euo pipefail
SUITE=spin
# shellcheck source=benchmarks/lib.sh
. "$(dirname "$0")/../benchmarks/lib.sh"
VAR=${VAR:-SEENN_ENGINE_SPIN_US}
SPINS=${SPINS:-0 500}
CONCS=${CONCS:-1 2 4 16 64}
DUR=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
IDLE_RATE=${IDLE_RATE:-100}
OUT=${OUT:-bench-results}/spin
fresh
WRK=$(command -v wrk || true)
PNGS=$(echo models/fashion-mnist/samples/*.png)
SERVED=$(models_dir fashion-mnist fashion-mnist-qcfs)
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

for round in $(seq "$ROUNDS"); do
  for spin in $SPINS; do
    export "$VAR=$spin"  # for the in-process run
    eval_run "$OUT/eval-s$spin-r$round.json" --model models/fashion-mnist --limit 2000 --concurrency 1
    MODELS=$SERVED SERVE_ENV="$VAR=$spin" serve "s$spin" --default-model fashion-mnist
    bench /dev/null --model fashion-mnist --concurrency 1 --duration 1
    for c in $CONCS; do
      bench "$OUT/http-s$spin-c$c-r$round.json" --model fashion-mnist --concurrency "$c" --duration "$DUR"
    done
    if [ -n "$WRK" ]; then
      PNG_FILES=$PNGS $WRK -t1 -c1 -d"${DUR}s" --latency -s experiments/wrk_classify.lua "$URL" \
        >"$OUT/wrk-s$spin-r$round.txt"
    fi
    before=$(cpu_s "$SERVER")
    bench "$OUT/idle-s$spin-r$round.json" --model fashion-mnist --rate "$IDLE_RATE" --duration "$DUR"
    echo "$spin $round $before $(cpu_s "$SERVER")" >>"$OUT/cpu.txt"
    stop
  done
done
unset "$VAR"

"$PY" - "$OUT" "$ROUNDS" "$SPINS" "$CONCS" "$DUR" <<'EOF'
import json, pathlib, statistics, sys
out, rounds, spins, concs, dur = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), float(sys.argv[5])
load = lambda name: json.loads((out / name).read_text())
cpu = {}
for line in (out / "cpu.txt").read_text().splitlines():
    s, r, a, b = line.split()
    cpu.setdefault(s, []).append(100 * (float(b) - float(a)) / dur)
med = lambda xs: statistics.median(xs)
def wrk_p50(path):
    # wrk --latency: "     50%  342.00us" (us, ms or s)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "50%":
            v = parts[1]
            for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
                if v.endswith(unit):
                    return float(v[: -len(unit)]) * scale
    return None
print(f"{'spin µs':>8} {'run':<24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   per round (req/s | p50)")
summary = {}
for s in spins:
    rows = []
    ev = [next(x for x in load(f"eval-s{s}-r{r}.json")["rules"] if x["rule"] == "confidence") for r in range(1, rounds + 1)]
    p50 = [e["latency_p50_ms"] for e in ev]
    print(f"{s:>8} {'in-process c1':<24} {'':>8} {med(p50):8.3f} {'':>8}   {' '.join(f'{x:.3f}' for x in p50)}")
    summary[s] = {"in_process_c1_p50": med(p50), "server_cpu_pct_at_idle_rate": med(cpu[s])}
    for c in concs:
        hs = [load(f"http-s{s}-c{c}-r{r}.json") for r in range(1, rounds + 1)]
        rps = [h["throughput_rps"] for h in hs]
        p50 = [h["latency_ms"]["p50"] for h in hs]
        p99 = [h["latency_ms"]["p99"] for h in hs]
        print(f"{s:>8} {'HTTP c' + c:<24} {med(rps):8.0f} {med(p50):8.3f} {med(p99):8.3f}   "
              f"{' '.join(f'{x:.0f}' for x in rps)} | {' '.join(f'{x:.3f}' for x in p50)}")
        summary[s][f"c{c}"] = {"rps": med(rps), "p50": med(p50), "p99": med(p99)}
    wrk = [wrk_p50(p) for p in sorted(out.glob(f"wrk-s{s}-r*.txt"))]
    wrk = [x for x in wrk if x is not None]
    if wrk:
        print(f"{s:>8} {'wrk c1':<24} {'':>8} {med(wrk):8.3f} {'':>8}   {' '.join(f'{x:.3f}' for x in wrk)}")
        summary[s]["wrk_c1_p50"] = med(wrk)
    print(f"{s:>8} {'server CPU % at idle rate':<24} {med(cpu[s]):8.1f}   {' '.join(f'{x:.1f}' for x in cpu[s])}")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
EOF
