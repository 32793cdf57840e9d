# The benchmark library, sourced by benchmarks/run.sh (and experiments/*.sh): servers on loopback,
# `seenn bench` / `seenn eval` runs, interleaved rounds, progress lines and JSON results.
# Every run writes its raw JSON report under $OUT as <run>-r<round>.json; benchmarks/report.py
# turns a suite's folder into summary.json (medians over rounds) and a table.
#
# Variables a suite reads (all optional): BIN (the seenn binary), MODELS (the packages served),
# DURATION (seconds per run), ROUNDS, NICE (e.g. -10: run at that niceness, the session's autogroup
# too, as root on a shared machine), SMOKE=1 (tiny runs: the suite only has to work).
# shellcheck shell=bash

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$BENCH_ROOT"
BIN=${BIN:-target/release/seenn}
MODELS=${MODELS:-models}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export SEENN_LOG=${SEENN_LOG:-warn}
BENCH_START=$(date +%s)
BENCH_SERVERS=()
BENCH_CLEANUP=()

[ -x "$BIN" ] || { echo "no $BIN: build it first (cargo build --release --locked)" >&2; exit 1; }

# default VAR VALUE [SMOKE_VALUE]: VAR keeps what the caller set, else VALUE (SMOKE_VALUE under SMOKE=1).
default() {
  local var=$1 value=$2
  if [ -n "${SMOKE:-}" ] && [ $# -ge 3 ]; then value=$3; fi
  if [ -z "${!var:-}" ]; then printf -v "$var" '%s' "$value"; fi
  export "${var?}"
}

# Seconds of load that warm a fresh server up before its measured runs.
default WARMUP_S 1 0.2

# progress MESSAGE: one line on stderr with the seconds since the suite started.
progress() { echo "[$(( $(date +%s) - BENCH_START ))s ${SUITE:-bench}] $*" >&2; }

# on_exit COMMAND: run COMMAND when the script exits (after every server is stopped).
on_exit() { BENCH_CLEANUP+=("$1"); }
_bench_exit() {
  local pid
  for pid in "${BENCH_SERVERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_SERVERS[@]}"; do wait "$pid" 2>/dev/null || true; done
  local c
  for c in "${BENCH_CLEANUP[@]}"; do eval "$c" || true; done
}
trap _bench_exit EXIT

# NICE: run every command at that niceness. Linux's autogroup scheduler shares the CPU among sessions
# first, so a process's own nice value does not outweigh other sessions' load; as root, this
# session's autogroup gets NICE too (restored on exit).
RUN=()
if [ -n "${NICE:-}" ]; then
  RUN=(nice -n "$NICE")
  if [ -w /proc/self/autogroup ]; then
    BENCH_AUTOGROUP_WAS=$(sed -n 's/.* nice //p' /proc/self/autogroup)
    echo "$NICE" >/proc/self/autogroup
    on_exit 'echo "$BENCH_AUTOGROUP_WAS" >/proc/self/autogroup'
  fi
fi

# timesteps PACKAGE_DIR: the package's T.
timesteps() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1] + '/manifest.json'))['timesteps'])" "$1"; }

# free_ports N: N free TCP ports on 127.0.0.1, one per line.
free_ports() {
  "$PY" - "$1" <<'PY'
import socket
import sys

socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_ready URL PID LOG: wait for URL/readyz (60 s at most) while PID lives; else print LOG and fail.
wait_ready() {
  local url=$1 pid=$2 log=$3
  for _ in $(seq 600); do
    curl -fs "$url/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "server at $url did not become ready; its log ($log):" >&2
  tail -n 30 "$log" >&2
  exit 1
}

# serve NAME [SERVER ARGS...]: start `seenn serve` on loopback (free ports, a fresh state directory,
# $MODELS) and wait for /readyz. Sets SERVER (pid), URL, GRPC_URL, STATE, TOKEN (with ADMIN=1: an
# admin token file is made and passed). SERVE_BIN overrides the binary, SERVE_ENV ("K=V ...") adds
# environment. The log goes to $OUT/server-NAME.log.
serve() {
  local name=$1; shift
  local ports http grpc
  ports=$(free_ports 2)
  http=$(echo "$ports" | sed -n 1p); grpc=$(echo "$ports" | sed -n 2p)
  STATE=$(mktemp -d)
  local admin=()
  if [ -n "${ADMIN:-}" ]; then
    TOKEN=$("$PY" -c "import secrets; print(secrets.token_hex(24))")
    printf '%s\n' "$TOKEN" >"$STATE/token"
    admin=(--admin-token-file "$STATE/token")
  fi
  local log="$OUT/server-$name.log"
  # shellcheck disable=SC2086
  env ${SERVE_ENV:-} "${RUN[@]}" "${SERVE_BIN:-$BIN}" serve --models "$MODELS" --host 127.0.0.1 --http-port "$http" \
    --grpc-port "$grpc" --state-dir "$STATE" "${admin[@]}" "$@" >"$log" 2>&1 &
  SERVER=$!
  BENCH_SERVERS+=("$SERVER")
  URL="http://127.0.0.1:$http"
  GRPC_URL="http://127.0.0.1:$grpc"
  wait_ready "$URL" "$SERVER" "$log"
}

# python_serve MODEL [ARGS...]: the Python baseline (benchmarks/python_baseline.py: FastAPI + uvicorn,
# two workers, ONNX Runtime; fixed T unless ARGS say --exit confidence) on $MODELS/MODEL on a free
# port; sets SERVER and URL.
python_serve() {
  local port log="$OUT/server-python-$1.log"
  port=$(free_ports 1)
  "${RUN[@]}" "$PY" benchmarks/python_baseline.py --model "$MODELS/$1" --port "$port" --workers 2 "${@:2}" >"$log" 2>&1 &
  SERVER=$!
  BENCH_SERVERS+=("$SERVER")
  URL="http://127.0.0.1:$port"
  STATE=$(mktemp -d)
  wait_ready "$URL" "$SERVER" "$log"
}

# stop [PID]: SIGTERM the server (default $SERVER), wait for it, remove its state directory.
stop() {
  local pid=${1:-$SERVER}
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=()
  local p
  for p in "${BENCH_SERVERS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  BENCH_SERVERS=("${keep[@]}")
  [ "$pid" = "${SERVER:-}" ] && rm -rf "$STATE"
  return 0
}

# policy MODEL JSON: PUT the model's exit policy (the server was started with ADMIN=1).
policy() {
  curl -fsS -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "$2" "$URL/admin/models/$1/exit-policy"
}

# bench FILE [seenn bench ARGS...]: one load-generator run against $URL, its JSON report in FILE
# (/dev/null: a warm-up), and a progress line.
bench() {
  local file=$1; shift
  "${RUN[@]}" "$BIN" bench --url "$URL" --json --quiet "$@" >"$file"
  [ "$file" = /dev/null ] || progress "$(basename "$file" .json): $("$PY" benchmarks/report.py line "$file")"
}

# eval_run FILE [seenn eval ARGS...]: one in-process run (`seenn eval --json`) and a progress line.
eval_run() {
  local file=$1; shift
  "${RUN[@]}" "$BIN" eval --json --quiet "$@" >"$file"
  progress "$(basename "$file" .json): $("$PY" benchmarks/report.py line "$file")"
}

# order ROUND A B...: the configurations in the order of this round: as given in odd rounds,
# reversed in even ones (A B, B A, ...), so that drift of the host hits every configuration alike.
order() {
  local round=$1; shift
  if [ $((round % 2)) -eq 1 ]; then echo "$@"; else
    local out=() i
    for ((i = $#; i >= 1; i--)); do out+=("${!i}"); done
    echo "${out[@]}"
  fi
}

# fresh: empty $OUT of a previous run's reports.
fresh() { mkdir -p "$OUT"; rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log; }

# summarize [ARGS...]: benchmarks/report.py SUITE $OUT: summary.json and a table on stdout.
summarize() { "$PY" benchmarks/report.py "$SUITE" "$OUT" "$@"; }

# models_dir PACKAGE...: a folder under $OUT holding only these packages of $MODELS (links), for
# `MODELS=$(models_dir ...) serve ...`: the server's defaults (engine workers per model) are then
# those of these packages alone, whatever else $MODELS holds.
models_dir() {
  local dir="$OUT/models-$(echo "$@" | tr ' ' '+')"
  mkdir -p "$dir"
  local p
  for p in "$@"; do ln -sfn "$(cd "$MODELS/$p" && pwd)" "$dir/$p"; done
  echo "$dir"
}

# bench_data PACKAGE: what `seenn bench --data` sends to it: the Fashion-MNIST test images for the
# 28×28 grayscale image packages, else the package's own golden samples.
bench_data() {
  "$PY" - "$MODELS/$1" <<'PY'
import json
import sys

i = json.load(open(sys.argv[1] + "/manifest.json"))["input"]
fm = i.get("kind", "image") == "image" and (i.get("channels"), i.get("height"), i.get("width")) == (1, 28, 28)
print("fashion-mnist" if fm else sys.argv[1])
PY
}
