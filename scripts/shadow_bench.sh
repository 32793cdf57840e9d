#!/usr/bin/env bash
# Shadow runs on fashion-mnist, two measurements (results under $OUT, default bench-results/shadow/):
#  1. agreement: shadow_fraction 1.0 at the default α, the 10 000 Fashion-MNIST test images sent once
#     each over HTTP (closed loop, c=1, --max-shadow-rows 8 so that no shadow has to be dropped),
#     then seenn_shadow_total against the offline agreement that scripts/shadow_offline.py computes
#     with ONNX Runtime on the same images; both with their binomial standard errors.
#  2. cost: a server with the default settings, closed loop at each concurrency of $CONCS, $ROUNDS
#     rounds of $SECONDS_PER_RUN s without shadows and $SECONDS_PER_RUN s with shadow_fraction
#     $FRACTION, interleaved (the order alternates every round): throughput ratio per round and its
#     median. At c=4 the batch has spare rows and shadows run; at c=16 the queue is rarely empty
#     (2 models, 1 worker each, 8 rows) and shadows mostly do not start: both are reported.
#   scripts/shadow_bench.sh        CONCS="4 16" ROUNDS=5 SECONDS_PER_RUN=10 FRACTION=0.01
#   SKIP_AGREEMENT=1 runs part 2 only.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=fashion-mnist
CONCS=${CONCS:-4 16}
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
FRACTION=${FRACTION:-0.01}
OUT=${OUT:-bench-results}/shadow
BIN=target/release/seenn
PY=${PY:-.venv/bin/python}
PORT=${PORT:-18480}
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"
state=$(mktemp -d)
TOKEN=$(python3 -c "import secrets; print(secrets.token_hex(24))")
printf '%s\n' "$TOKEN" >"$state/token"
SERVER=
trap 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi; rm -rf "$state"' EXIT

serve() {
  rm -f "$state/exit-policies.json"
  $BIN serve --models models --host 127.0.0.1 --http-port "$PORT" --grpc-port $((PORT + 1)) \
    --state-dir "$state" --default-model "$MODEL" --admin-token-file "$state/token" "$@" \
    >>"$OUT/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 300); do curl -fs "$URL/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server not ready" >&2; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=; }
policy() { curl -fsS -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d "$1" "$URL/admin/models/$MODEL/exit-policy"; echo; }
bench() { $BIN bench --url "$URL" --model "$MODEL" --timeout 30 --json --quiet "$@"; }
# A snapshot of /metrics, read by the summary at the end.
metrics() { curl -fsS "$URL/metrics" >"$1"; }

if [ -z "${SKIP_AGREEMENT:-}" ]; then
echo "== 1. agreement: shadow_fraction 1.0, the 10 000 test images once (c=1)" >&2
serve --max-shadow-rows 8
policy '{"shadow_fraction": 1.0}' >"$OUT/agreement_policy.json"
bench --concurrency 1 --requests 10000 >"$OUT/agreement_bench.json"
for _ in $(seq 100); do
  curl -fsS "$URL/metrics" | grep -q "^seenn_shadow_rows{model=\"$MODEL\"} 0$" && break; sleep 0.1
done
metrics "$OUT/agreement_metrics.txt"
stop
echo "== offline reference (ONNX Runtime, same images, same alpha)" >&2
ALPHA=$(python3 -c "import json; print(json.load(open('$OUT/agreement_policy.json'))['alpha'])")
$PY scripts/shadow_offline.py --alpha "$ALPHA" --json "$OUT/offline.json" >/dev/null
fi

serve
bench --concurrency 16 --duration 5 >/dev/null   # warm-up
for c in $CONCS; do
  echo "== 2. cost: c=$c, $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s off / on ($FRACTION)" >&2
  metrics "$OUT/cost_c${c}_metrics_before.txt"
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
      if [ "$mode" = on ]; then policy "{\"shadow_fraction\": $FRACTION}" >/dev/null
      else policy '{"shadow_fraction": 0}' >/dev/null; fi
      bench --concurrency "$c" --duration "$SECONDS_PER_RUN" >"$OUT/cost_c${c}_${r}_$mode.json"
    done
  done
  metrics "$OUT/cost_c${c}_metrics_after.txt"
done
stop

$PY - "$OUT" "$MODEL" "$ROUNDS" "$CONCS" "$FRACTION" <<'PY'
import json, math, statistics, sys
from pathlib import Path
out, model, rounds, concs, fraction = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), sys.argv[5]

def series(path, name, **labels):
    total = 0.0
    for line in path.read_text().splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if f'model="{model}"' in head and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total

def agreement():
    m = out / "agreement_metrics.txt"
    agree, disagree = series(m, "seenn_shadow_total", agree="true"), series(m, "seenn_shadow_total", agree="false")
    dropped = series(m, "seenn_shadow_dropped_total")
    n = agree + disagree
    early = sum(series(m, "seenn_exits_total", timestep=str(t)) for t in (1, 2, 3))
    answered = series(m, "seenn_timesteps_used_count")
    p = agree / n
    se = math.sqrt(p * (1 - p) / n)
    off = json.loads((out / "offline.json").read_text())
    expected = series(m, "seenn_shadow_expected_agreement")
    bench = json.loads((out / "agreement_bench.json").read_text())
    diff = p - off["early_agreement"]
    print(f"agreement at alpha {off['alpha']}: {int(answered)} answered ({bench['successes']} ok), "
          f"{int(early)} early exits, {int(n)} shadows ran, {int(dropped)} dropped")
    print(f"  server (shadows): {int(agree)}/{int(n)} = {p:.5f} +- {se:.5f} (binomial SE)")
    print(f"  offline (ORT):    {off['early_agree']}/{off['early_exits']} = {off['early_agreement']:.5f} +- {off['early_agreement_se']:.5f}")
    print(f"  difference {diff:+.5f} = {diff / se if se else 0:+.2f} binomial SE; "
          f"calibration (validation split) expects {expected:.5f}")
    print(f"  test accuracy of the answers {bench['accuracy'] * 100:.2f}% (offline {off['accuracy'] * 100:.2f}%), avg t {bench['avg_timesteps']:.4f} (offline {off['avg_timesteps']:.4f})")

if (out / "agreement_metrics.txt").exists():
    agreement()
for c in concs:
    ratios = []
    print(f"cost at c={c}, shadow_fraction {fraction}: throughput (req/s)")
    for r in range(1, rounds + 1):
        on = json.loads((out / f"cost_c{c}_{r}_on.json").read_text())
        offr = json.loads((out / f"cost_c{c}_{r}_off.json").read_text())
        ratios.append(on["throughput_rps"] / offr["throughput_rps"])
        print(f"  round {r}: off {offr['throughput_rps']:7.1f} (p99 {offr['latency_ms']['p99']:6.2f} ms)  "
              f"on {on['throughput_rps']:7.1f} (p99 {on['latency_ms']['p99']:6.2f} ms)  on/off {ratios[-1]:.3f}")
    med = statistics.median(ratios)
    b, a = out / f"cost_c{c}_metrics_before.txt", out / f"cost_c{c}_metrics_after.txt"
    ran = series(a, "seenn_shadow_total") - series(b, "seenn_shadow_total")
    dr = series(a, "seenn_shadow_dropped_total") - series(b, "seenn_shadow_dropped_total")
    ss = series(a, "seenn_shadow_steps_total") - series(b, "seenn_shadow_steps_total")
    ls = series(a, "seenn_request_steps_total") - series(b, "seenn_request_steps_total")
    print(f"  median on/off {med:.3f}: shadow work costs {(1 - med) * 100:.1f}% of throughput")
    print(f"  'on' runs: {int(ran)} shadows ran, {int(dr)} dropped; shadow steps {int(ss)} = "
          f"{ss / ls * 100:.2f}% of the live requests' {int(ls)} steps (on and off runs)")
PY
