#!/usr/bin/env bash
# Slot memory on the CPU (BENCHMARKS.md, "Device-resident slots"): `seenn eval` in-process with
# --slot-memory host (the CPU default) and device (ONNX Runtime's allocator and copies, the path
# --device cuda takes; here on the CPU allocator), interleaved per round, on both packages. On the
# CPU the device path can only cost (every newcomer's write and every row move is an ONNX Runtime
# run); the table says how much. The GPU comparison is scripts/gpu_bench.sh.
#   scripts/bench_slot_memory.sh     ROUNDS=3 C=64 WORKERS=2 LIMIT_FM=5000 LIMIT_QCFS=1000
#   NICE=-10 scripts/bench_slot_memory.sh   # as root on a shared machine (see scripts/bench_cores.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
C=${C:-64}
WORKERS=${WORKERS:-2}
BIN=${BIN:-target/release/seenn}
OUT=${OUT:-bench-results}/slot-memory
# shellcheck source=scripts/nice_autogroup.sh
. scripts/nice_autogroup.sh
mkdir -p "$OUT"
rm -f "$OUT"/*.json
for round in $(seq "$ROUNDS"); do
  for pkg in fashion-mnist:"${LIMIT_FM:-5000}" fashion-mnist-qcfs:"${LIMIT_QCFS:-1000}"; do
    name=${pkg%%:*}
    # Alternate which memory goes first.
    order="host device"; [ $((round % 2)) -eq 0 ] && order="device host"
    for mem in $order; do
      SEENN_LOG=warn $BIN eval --model "models/$name" --limit "${pkg##*:}" --concurrency "$C" \
        --engine-workers "$WORKERS" --slot-memory "$mem" --quiet --json >"$OUT/$name-$mem-r$round.json"
    done
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
print("| model | rule | host req/s | device req/s | device ÷ host (median of rounds) | same accuracy and steps |")
print("|---|---|---|---|---|---|")
for name in ("fashion-mnist", "fashion-mnist-qcfs"):
    runs = {m: [json.loads((out / f"{name}-{m}-r{r}.json").read_text()) for r in range(1, rounds + 1)]
            for m in ("host", "device")}
    for i, rule in enumerate(x["rule"] for x in runs["host"][0]["rules"]):
        h = [d["rules"][i] for d in runs["host"]]
        v = [d["rules"][i] for d in runs["device"]]
        ratio = statistics.median(b["throughput_rps"] / a["throughput_rps"] for a, b in zip(h, v))
        same = all(a["accuracy"] == b["accuracy"] and a["avg_timesteps"] == b["avg_timesteps"]
                   for a, b in zip(h, v))
        print(f"| {name} | {rule} | {statistics.median(a['throughput_rps'] for a in h):.0f} | "
              f"{statistics.median(b['throughput_rps'] for b in v):.0f} | {ratio:.3f} | {'yes' if same else 'NO'} |")
PY
