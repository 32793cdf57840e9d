#!/usr/bin/env bash
# Early exit realised on the snnTorch example (BENCHMARKS.md, "Your own SNN"): per round and engine
# setting, `seenn eval --data` runs fixed T and SEENN-I over the same 10 000 rate-coded test frames
# (examples/snntorch-fashion-mnist/evaluate.py writes them) in-process; the ratio SEENN-I ÷ fixed-T
# throughput is set against T ÷ avg frames (what skipping frames could buy at most). Rounds and
# settings interleave.
#   scripts/bench_byo.sh            ROUNDS=3 REPEAT=3 MODELS="snntorch-fashion-mnist snntorch-fashion-mnist-recurrent"
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BIN=${BIN:-target/release/seenn}
DATA=${DATA:-examples/snntorch-fashion-mnist/runs/test.npz}
MODELS=${MODELS:-snntorch-fashion-mnist snntorch-fashion-mnist-recurrent}
OUT=${OUT:-bench-results}/byo
# concurrency:engine workers:max batch
SETTINGS=${SETTINGS:-16:2:8 32:1:32}
[ -f "$DATA" ] || PYTHONPATH=training .venv/bin/python examples/snntorch-fashion-mnist/evaluate.py
mkdir -p "$OUT"
rm -f "$OUT"/*.json
for round in $(seq "$ROUNDS"); do
  for name in $MODELS; do
    for s in $SETTINGS; do
      IFS=: read -r c w b <<<"$s"
      SEENN_LOG=warn $BIN eval --model "models/$name" --data "$DATA" --concurrency "$c" --engine-workers "$w" \
        --max-batch "$b" --repeat "${REPEAT:-3}" --quiet --json >"$OUT/$name-c$c-w$w-b$b-r$round.json"
    done
  done
done
python3 - "$OUT" <<'PY'
import json, sys
from collections import defaultdict
from pathlib import Path
rows = defaultdict(list)
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    d = json.loads(f.read_text())
    rule = {x["rule"]: x for x in d["rules"]}
    fixed, conf = rule["fixed"], rule["confidence"]
    ideal = d["timesteps"] / conf["avg_timesteps"]
    got = conf["throughput_rps"] / fixed["throughput_rps"]
    rows[f.name.rsplit("-r", 1)[0]].append((fixed["throughput_rps"], conf["throughput_rps"], got, ideal, conf))
print("| model, setting | fixed T req/s | SEENN-I req/s | SEENN-I ÷ fixed | T ÷ avg frames | realised | accuracy at avg frames |")
print("|---|---|---|---|---|---|---|")
for key, rs in rows.items():
    c = rs[0][4]
    print(f"| {key} | {' / '.join(f'{r[0]:.0f}' for r in rs)} | {' / '.join(f'{r[1]:.0f}' for r in rs)} | "
          f"{' / '.join(f'{r[2]:.2f}' for r in rs)} | {rs[0][3]:.2f} | {' / '.join(f'{r[2] / r[3]:.3f}' for r in rs)} | "
          f"{100 * c['accuracy']:.2f}% at {c['avg_timesteps']:.3f} |")
PY
