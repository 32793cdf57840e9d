#!/usr/bin/env bash
# Your own SNN: the snnTorch example's packages (package format 3, per-step frames).
# PARTS="inproc wire" (default both):
#  - inproc: early exit realised in-process: `seenn eval --data DATA` runs fixed T and SEENN-I over
#    the rate-coded test frames (examples/snntorch-fashion-mnist/evaluate.py writes them; SMOKE=1
#    uses the package's samples), per package and engine setting (concurrency:workers:max batch),
#    realised = (SEENN-I ÷ fixed req/s) ÷ (T ÷ avg frames); rounds interleave.
#  - wire: frames on the wire: the package's golden samples sent as .npy bodies in each dtype the
#    server accepts (bool, uint8, float32: the same 0/1 frames), closed loop at c=C, interleaved.
#   ROUNDS=3 REPEAT=3 SETTINGS="16:2:8 32:1:32" BYO_MODELS="snntorch-fashion-mnist snntorch-fashion-mnist-recurrent"
#   wire: DURATION=8 C=16 WIRE_MODEL=snntorch-fashion-mnist DTYPES="bool uint8 float32"
set -euo pipefail
# Run directly, a suite goes through the driver (which sources benchmarks/lib.sh first).
[ -n "${BENCH_ROOT:-}" ] || exec "$(dirname "$0")/../run.sh" "$(basename "$0" .sh)" "$@"
default PARTS "inproc wire"
default ROUNDS 3 1
default REPEAT 3 1
default SETTINGS "16:2:8 32:1:32" "16:2:8"
default BYO_MODELS "snntorch-fashion-mnist snntorch-fashion-mnist-recurrent"
default DATA examples/snntorch-fashion-mnist/runs/test.npz samples
default DURATION 8 0.5
default C 16
default WIRE_MODEL snntorch-fashion-mnist
default DTYPES "bool uint8 float32"
fresh

if [[ " $PARTS " == *" inproc "* ]]; then
  if [ "$DATA" != samples ] && [ ! -f "$DATA" ]; then
    progress "writing $DATA (examples/snntorch-fashion-mnist/evaluate.py)"
    PYTHONPATH=training "$PY" examples/snntorch-fashion-mnist/evaluate.py
  fi
  for round in $(seq "$ROUNDS"); do
    for name in $BYO_MODELS; do
      # shellcheck disable=SC2086
      for s in $(order "$round" $SETTINGS); do
        IFS=: read -r c w b <<<"$s"
        eval_run "$OUT/$name-c$c-w$w-b$b-r$round.json" --model "$MODELS/$name" --data "$DATA" --concurrency "$c" \
          --engine-workers "$w" --max-batch "$b" --repeat "$REPEAT"
      done
    done
  done
fi

if [[ " $PARTS " == *" wire "* ]]; then
  work=$(mktemp -d)
  on_exit "rm -rf $work"
  # One folder of samples per dtype: golden.json and the frames re-encoded.
  "$PY" - "$MODELS/$WIRE_MODEL" "$work" <<'PY'
import json
import shutil
import sys
from pathlib import Path

import numpy as np

src, work = Path(sys.argv[1]), Path(sys.argv[2])
golden = json.loads((src / "golden.json").read_text())
for dtype in ("bool", "uint8", "float32"):
    d = work / dtype
    (d / "samples").mkdir(parents=True)
    shutil.copy(src / "manifest.json", d / "manifest.json")
    (d / "golden.json").write_text(json.dumps(golden))
    for s in golden["samples"]:
        np.save(d / s["file"], np.load(src / s["file"]).astype(dtype))
    print(dtype, (d / golden["samples"][0]["file"]).stat().st_size, "bytes per request body", file=sys.stderr)
PY
  MODELS=$(models_dir "$WIRE_MODEL") serve wire --default-model "$WIRE_MODEL"
  for round in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    for dtype in $(order "$round" $DTYPES); do
      bench "$OUT/wire-$dtype-r$round.json" --model "$WIRE_MODEL" --data "$work/$dtype" --concurrency "$C" --duration "$DURATION"
    done
  done
  stop
fi
summarize
