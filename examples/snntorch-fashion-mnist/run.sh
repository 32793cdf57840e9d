#!/usr/bin/env bash
# The example end to end: train both snnTorch networks (resumable), export them with snnTorch's own
# export_to_nir, import them, calibrate them on the validation frames, and hold the server's own
# evaluation on the 10 000 test images against snnTorch's evaluation of the same network and rule.
#   examples/snntorch-fashion-mnist/run.sh            # both networks
#   NETS=feedforward examples/snntorch-fashion-mnist/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
EX=examples/snntorch-fashion-mnist
RUNS=$EX/runs
PY=.venv/bin/python
SEENN=target/release/seenn
NETS=${NETS:-feedforward recurrent}
export PYTHONPATH=training
for net in $NETS; do
  $PY $EX/train.py --net "$net"
done
$PY $EX/evaluate.py   # runs/val.npz and runs/test.npz: the frames every step below reads
for net in $NETS; do
  name=snntorch-fashion-mnist
  [ "$net" = recurrent ] && name=snntorch-fashion-mnist-recurrent
  .venv/bin/seenn-train import-nir "$RUNS/$net.nir" --dialect snntorch --timesteps 16 --dtype bool \
    --labels $EX/labels.txt --name "$name" --out "models/$name" --force
  $SEENN calibrate "models/$name" --data "$RUNS/val.npz"
  $PY $EX/evaluate.py --net "$net" --package "models/$name"
  $SEENN eval --model "models/$name" --data "$RUNS/test.npz" --json --quiet >"$RUNS/$net-seenn-eval.json"
  $PY - "$RUNS/$net-snntorch-eval.json" "$RUNS/$net-seenn-eval.json" <<'PY'
import json, sys
ref, got = (json.load(open(p)) for p in sys.argv[1:])
conf = next(r for r in got["rules"] if r["rule"] == "confidence")
da = abs(conf["accuracy"] - ref["seenn1"]["accuracy"]) * 100
dt = abs(conf["avg_timesteps"] - ref["seenn1"]["avg_timesteps"])
print(f"snnTorch: {100 * ref['seenn1']['accuracy']:.2f}% at {ref['seenn1']['avg_timesteps']:.3f} frames; "
      f"server: {100 * conf['accuracy']:.2f}% at {conf['avg_timesteps']:.3f} frames "
      f"(|Δ| {da:.2f} pp, {dt:.4f} frames)")
sys.exit(0 if da <= 0.1 and dt <= 0.01 else 1)
PY
done
