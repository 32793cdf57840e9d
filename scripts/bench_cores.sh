#!/usr/bin/env bash
# Cores in-process (BENCHMARKS.md, "In-process"): ROUNDS interleaved rounds of
#   seenn eval --concurrency 64 --engine-workers 1, the same with 2 workers,
#   scripts/ort_only.py --procs 1 and --procs 2 (ONNX Runtime alone, the same images and α),
# over the first LIMIT Fashion-MNIST test images; SEENN-I images/s per run (JSON under $OUT, default
# bench-results/cores/), then a table of medians (images/s, process CPU ms per image) and of the
# per-round ratios 2w/1w and 2w/ORT-only.
#   scripts/bench_cores.sh                 LIMIT=3000 ROUNDS=3
#   NICE=-10 scripts/bench_cores.sh        # as root on a shared machine: the runs take the CPU from
#     other work. Linux shares the CPU among sessions (autogroups) first, so at nice 0 a run gets
#     one session's share whatever its number of threads or processes; NICE sets this session's
#     autogroup nice value (and each command's) so that 2 workers or processes can get 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-3000}
ROUNDS=${ROUNDS:-3}
MODEL=${MODEL:-models/fashion-mnist}
OUT=${OUT:-bench-results}/cores
BIN=${BIN:-target/release/seenn}
PY=${PY:-.venv/bin/python}
# shellcheck source=scripts/nice_autogroup.sh
. scripts/nice_autogroup.sh
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/load.txt"

for round in $(seq "$ROUNDS"); do
  for w in 1 2; do
    echo "r$round eval-w$w load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
    SEENN_LOG=warn "${RUN[@]}" $BIN eval --model "$MODEL" --limit "$LIMIT" --concurrency 64 --engine-workers "$w" \
      --quiet --json >"$OUT/eval-w$w-r$round.json"
  done
  for p in 1 2; do
    echo "r$round ort-p$p load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
    "${RUN[@]}" $PY scripts/ort_only.py --model "$MODEL" --limit "$LIMIT" --procs "$p" --json >"$OUT/ort-p$p-r$round.json"
  done
  echo "round $round done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

$PY - "$OUT" "$ROUNDS" <<'EOF'
import json, pathlib, statistics, sys
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def rate(name, r):
    """(images/s, avg timesteps, CPU ms per image) of one run."""
    d = json.loads((out / f"{name}-r{r}.json").read_text())
    if "rules" in d:  # seenn eval: the SEENN-I (confidence) rule
        rule = next(x for x in d["rules"] if x["rule"] == "confidence")
        n = d["samples"]
        cpu = rule.get("cpu_seconds")
        return rule["throughput_rps"], rule["avg_timesteps"], 1e3 * cpu / n if cpu is not None else float("nan")
    return d["images_per_s"], d["avg_timesteps"], 1e3 * sum(d["cpu_seconds"]) / d["images"]
names = ["eval-w1", "eval-w2", "ort-p1", "ort-p2"]
runs = {n: [rate(n, r) for r in range(1, rounds + 1)] for n in names}
print(f"{'configuration':<13} {'median img/s':>12} {'CPU ms/img':>10} {'avg t':>6}  img/s per round")
for n in names:
    v = [x[0] for x in runs[n]]
    ts = sorted({round(x[1], 4) for x in runs[n]})
    cpu = statistics.median(x[2] for x in runs[n])
    print(f"{n:<13} {statistics.median(v):>12.0f} {cpu:>10.3f} {'/'.join(map(str, ts)):>6}  " + " ".join(f"{x:.0f}" for x in v))
def ratio(a, b):
    per = [x[0] / y[0] for x, y in zip(runs[a], runs[b])]
    return statistics.median(per), per
for label, a, b in [("2w / 1w", "eval-w2", "eval-w1"), ("2w / ORT-only 2 procs", "eval-w2", "ort-p2"),
                    ("1w / ORT-only 1 proc", "eval-w1", "ort-p1"), ("ORT-only 2 / 1 procs", "ort-p2", "ort-p1")]:
    med, per = ratio(a, b)
    print(f"{label:<22} median {med:.3f}  per round " + " ".join(f"{x:.3f}" for x in per))
print((out / "load.txt").read_text(), end="")
EOF
