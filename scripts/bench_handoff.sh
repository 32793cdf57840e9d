#!/usr/bin/env bash
# Where the c=1 latency goes (BENCHMARKS.md, "Hand-off at c=1"): ROUNDS interleaved rounds of
#   seenn eval --concurrency 1 (in-process: preprocessed tensors, no network),
#   seenn bench --concurrency 1 against a fresh server (HTTP, the Fashion-MNIST test PNGs),
#   seenn bench --concurrency 1 --get /healthz (the same client and connection, no model),
# then a table of medians: client latency, and the server's own split (queue, inference, other)
# from the answers' x-*-time-ms headers. JSON under $OUT (default bench-results/handoff/).
#   scripts/bench_handoff.sh                DURATION=8 ROUNDS=3 LIMIT=2000 WORKERS=1
#   NICE=-10 scripts/bench_handoff.sh       # as root on a shared machine (see scripts/bench_cores.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
LIMIT=${LIMIT:-2000}
WORKERS=${WORKERS:-1}
OUT=${OUT:-bench-results}/handoff
BIN=${BIN:-target/release/seenn}
PORT=${PORT:-18580}
PY=${PY:-python3}
# shellcheck source=scripts/nice_autogroup.sh
. scripts/nice_autogroup.sh
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/load.txt"

for round in $(seq "$ROUNDS"); do
  echo "r$round load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
  SEENN_LOG=warn $BIN eval --model models/fashion-mnist --limit "$LIMIT" --concurrency 1 \
    --engine-workers "$WORKERS" --quiet --json >"$OUT/eval-r$round.json"
  state=$(mktemp -d)
  SEENN_LOG=warn $BIN serve --models models --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
    --state-dir "$state" --default-model fashion-mnist --engine-workers "$WORKERS" >"$OUT/server.log" 2>&1 &
  server=$!
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  $BIN bench --url "http://127.0.0.1:$PORT" --model fashion-mnist --concurrency 1 --duration 1 --quiet >/dev/null
  $BIN bench --url "http://127.0.0.1:$PORT" --model fashion-mnist --concurrency 1 --duration "$DUR" \
    --quiet --json >"$OUT/http-r$round.json"
  $BIN bench --url "http://127.0.0.1:$PORT" --get /healthz --concurrency 1 --duration "$DUR" \
    --quiet --json >"$OUT/healthz-r$round.json"
  kill -TERM "$server"; wait "$server" || true
  rm -rf "$state"
  echo "round $round done" >&2
done

$PY - "$OUT" "$ROUNDS" <<'EOF'
import json, pathlib, statistics, sys
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
load = lambda n, r: json.loads((out / f"{n}-r{r}.json").read_text())
rows = []
for r in range(1, rounds + 1):
    e = next(x for x in load("eval", r)["rules"] if x["rule"] == "confidence")
    h, z = load("http", r), load("healthz", r)
    st = h["server_timings_ms"]
    rows.append({
        "in-process p50": e["latency_p50_ms"],
        "  queue (worker wake-up)": e["queue_p50_ms"],
        "  inference": e["inference_p50_ms"],
        "  other (submit, reply)": e["other_p50_ms"],
        "HTTP p50": h["latency_ms"]["p50"],
        "  server total": st["total_p50"],
        "    queue (worker wake-up)": st["queue_p50"],
        "    inference": st["inference_p50"],
        "    other (decode, submit, reply)": st["other_p50"],
        "  outside the server": st["outside_p50"],
        "GET /healthz p50": z["latency_ms"]["p50"],
        "HTTP p50 - in-process p50": h["latency_ms"]["p50"] - e["latency_p50_ms"],
        "avg t in-process / HTTP": f'{e["avg_timesteps"]:.3f} / {h["avg_timesteps"]:.3f}',
    })
for k in rows[0]:
    vals = [row[k] for row in rows]
    if isinstance(vals[0], str):
        print(f"{k:<34} {' '.join(vals)}")
    else:
        print(f"{k:<34} {statistics.median(vals):8.3f}   per round " + " ".join(f"{v:.3f}" for v in vals))
print((out / "load.txt").read_text(), end="")
EOF
