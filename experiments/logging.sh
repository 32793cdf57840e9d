#!/usr/bin/env bash
# Throughput with and without per-request log lines: two servers, three interleaved 8 s rounds at c=16.
cd "$(dirname "$0")/.."
set -e
BIN=target/release/seenn
start() { SEENN_LOG=$2 $BIN serve --models models --host 127.0.0.1 --http-port $1 --grpc-port $(($1+1)) --state-dir $(mktemp -d) > ${TMPDIR:-/tmp}/logcost_$1.log 2>&1 & echo $!; }
A=$(start 18480 info); B=$(start 18490 "info,seenn_serve=debug")
for p in 18480 18490; do for _ in $(seq 300); do curl -fs http://127.0.0.1:$p/readyz >/dev/null 2>&1 && break; sleep 0.1; done; done
for r in 1 2 3; do for p in 18480 18490; do
  $BIN bench --url http://127.0.0.1:$p --concurrency 16 --duration 8 --json --quiet | python3 -c "import json,sys; d=json.load(sys.stdin); print($p, $r, round(d['throughput_rps']), round(d['latency_ms']['p50'],2))"
done; done
kill $A $B; wait 2>/dev/null || true
wc -l ${TMPDIR:-/tmp}/logcost_18480.log ${TMPDIR:-/tmp}/logcost_18490.log
