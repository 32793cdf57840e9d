#!/usr/bin/env bash
# Early exit realised over HTTP with `wrk` as the load generator (docs/benchmarks/log/early-exit.md, "Early exit
# over HTTP with wrk"): one server with WORKERS engine workers; per round, closed-loop c=16 runs of
# SEENN-I (the default rule) and rule=fixed at T on both packages, over the first 1 000 Fashion-MNIST
# test images as PNGs; the average timesteps of the SEENN-I runs from the server's own
# seenn_timesteps_used; prints SEENN-I ÷ fixed-T throughput against T ÷ avg t per round.
#   experiments/wrk_early_exit.sh        ROUNDS=3 DURATION=8 WORKERS=2 (needs wrk: apt-get install wrk)
#   NICE=-10 experiments/wrk_early_exit.sh   # as root on a shared machine (see benchmarks/lib.sh)
set -euo pipefail
SUITE=wrk-early-exit
# shellcheck source=benchmarks/lib.sh
. "$(dirname "$0")/../benchmarks/lib.sh"
ROUNDS=${ROUNDS:-3}
DUR=${DURATION:-8}
WORKERS=${WORKERS:-2}
OUT=${OUT:-bench-results}/wrk-early-exit
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT/png"
PYTHONPATH=training "$PY" - "$OUT/png" <<'PY'
import sys
import numpy as np
from PIL import Image
from seenn_train import data
test = data.load_idx_dataset(data.DEFAULT_FASHION_DIR, False)
for i in range(1000):
    Image.fromarray(np.asarray(test.images[i])[0]).save(f"{sys.argv[1]}/{i:04d}.png")
PY
MODELS=$(models_dir fashion-mnist fashion-mnist-qcfs) serve wrk --engine-workers "$WORKERS"
PNG_FILES="$(echo "$OUT"/png/*.png)"
export PNG_FILES
rps() {  # rps MODEL QUERY: requests/s of one c=16 run
  WRK_PATH="/v1/models/$1/classify$2" wrk -t1 -c16 -d"${DUR}s" -s experiments/wrk_classify.lua "$URL" | awk '/Requests\/sec/ {print $2}'
}
rps fashion-mnist "" >/dev/null  # warm-up
: >"$OUT/runs.txt"
for round in $(seq "$ROUNDS"); do
  for m in fashion-mnist fashion-mnist-qcfs; do
    t=$(python3 -c "import json; print(json.load(open('models/$m/manifest.json'))['timesteps'])")
    echo "$round $m $(rps "$m" "") $(rps "$m" "?rule=fixed&max_timesteps=$t") $t" >>"$OUT/runs.txt"
  done
done
curl -fs "$URL/metrics" >"$OUT/metrics.txt"
python3 - "$OUT" <<'PY'
import re, sys
from pathlib import Path
out = Path(sys.argv[1])
metrics = (out / "metrics.txt").read_text()
def used(model, what):
    pat = rf'^seenn_timesteps_used_{what}{{model="{model}",policy="default",rule="confidence"}} (\S+)'
    return float(re.search(pat, metrics, re.M).group(1))
for line in (out / "runs.txt").read_text().splitlines():
    r, m, conf, fixed, t = line.split()
    avg = used(m, "sum") / used(m, "count")
    got, ideal = float(conf) / float(fixed), int(t) / avg
    print(f"round {r} {m}: SEENN-I {float(conf):.0f} req/s, fixed T={t} {float(fixed):.0f} req/s: "
          f"{got:.2f}x of T/avg t = {ideal:.2f} (avg t {avg:.3f}) -> {got / ideal:.3f}")
PY
