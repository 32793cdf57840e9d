#!/usr/bin/env bash
# Frames on the wire (BENCHMARKS.md, "Your own SNN"): the snnTorch example's golden samples sent as
# .npy bodies (application/x-npy) in each dtype the server accepts, over HTTP, closed loop, rounds
# interleaved. The samples are the same 0/1 frames; only the encoding on the wire differs.
#   scripts/bench_byo_wire.sh        ROUNDS=2 DURATION=10 C=16 MODEL=snntorch-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
C=${C:-16}
MODEL=${MODEL:-snntorch-fashion-mnist}
PORT=${PORT:-18390}
BIN=${BIN:-target/release/seenn}
OUT=${OUT:-bench-results}/byo-wire
mkdir -p "$OUT"
rm -f "$OUT"/*.json
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
# One folder of samples per dtype: golden.json and the frames re-encoded.
.venv/bin/python - "models/$MODEL" "$work" <<'PY'
import json, shutil, sys
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
    print(dtype, (d / golden["samples"][0]["file"]).stat().st_size, "bytes per request body")
PY
SEENN_LOG=warn $BIN serve --models models --http-port "$PORT" --grpc-port $((PORT + 1)) &
server=$!
for _ in $(seq 100); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.2; done
for round in $(seq "$ROUNDS"); do
  for dtype in ${DTYPES:-bool uint8 float32}; do
    $BIN bench --url "http://127.0.0.1:$PORT" --model "$MODEL" --data "$work/$dtype" --concurrency "$C" \
      --duration "$DURATION" --quiet --json >"$OUT/$dtype-r$round.json"
  done
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    d = json.loads(f.read_text())
    lat = d.get("latency_ms", {})
    print(f.stem, f"{d['throughput_rps']:.0f} req/s, errors {d['errors']}, p50 {lat.get('p50', float('nan')):.2f} ms, p99 {lat.get('p99', float('nan')):.2f} ms")
PY
