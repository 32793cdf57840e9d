"""CPU time per request over HTTP, split by who spends it (BENCHMARKS.md, "Early exit realised
in-process"): the server's engine threads, its tokio (HTTP) threads, and the load generator.

    python3 experiments/http_cpu_split.py <server pid> confidence|fixed [port]

Runs `seenn bench --concurrency 16 --duration 8` against the server (fashion-mnist; `fixed` adds
`--rule fixed`), reads each server thread's CPU time from /proc before and after, and the bench
process's own CPU time, and prints microseconds of CPU per request.
"""

import collections
import json
import os
import subprocess
import sys

tck = os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = collections.Counter()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            cpu = (int(f[11]) + int(f[12])) / tck
        except OSError:
            continue
        key = "engine" if name.startswith("engine-fashion") else ("tokio" if "tokio" in name else "other")
        out[key] += cpu
    return out


srv = int(sys.argv[1])
rule = sys.argv[2]
port = sys.argv[3] if len(sys.argv) > 3 else "8080"
args = [
    "target/release/seenn",
    "bench",
    "--url",
    f"http://127.0.0.1:{port}",
    "--model",
    "fashion-mnist",
    "--concurrency",
    "16",
    "--duration",
    "8",
    "--json",
    "--quiet",
] + (["--rule", "fixed"] if rule == "fixed" else [])
before = threads(srv)
t0 = os.times()
p = subprocess.run(args, capture_output=True, text=True)
t1 = os.times()
after = threads(srv)
rep = json.loads(p.stdout)
n = rep["requests"]
client = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
split = {k: (after[k] - before[k]) / n * 1e6 for k in after}
split["client"] = client / n * 1e6
print(rule, f"{rep['throughput_rps']:.0f} req/s", {k: round(v, 1) for k, v in split.items()}, "µs CPU per request")
