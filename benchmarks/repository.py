"""Versions in and out of a serving model, measured (`benchmarks/run.sh repository`).

1. Swaps under load: `seenn bench` at c=16 on fashion-mnist for DURATION seconds while its version is
   replaced SWAPS times (alternating between two versions on disk, each load a real swap: a new
   engine, warmed up and golden-checked), against the same run with no swap; rounds interleaved.
   Every request must be answered 2xx; the p99 with swaps is set against the p99 without.
2. Load/unload cycles: CYCLES unloads and loads of the model with no traffic; the server's resident
   memory and open file descriptors after them against before.
3. Broken versions offered by a load: corrupt ONNX, a bad manifest, a failing golden check; the
   answer, and which version serves after.

Writes benchmarks/results/repository.json (or $OUT/repository.json) and prints a summary.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("BIN", ROOT / "target" / "release" / "seenn"))
MODEL = "fashion-mnist"
PACKAGE = ROOT / "models" / MODEL
TOKEN = "repository-bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMOKE = bool(os.environ.get("SMOKE"))
DURATION = float(os.environ.get("DURATION", 2 if SMOKE else 20))
ROUNDS = int(os.environ.get("ROUNDS", 1 if SMOKE else 3))
SWAPS = int(os.environ.get("SWAPS", 3 if SMOKE else 20))
CYCLES = int(os.environ.get("CYCLES", 5 if SMOKE else 200))
CONCURRENCY = int(os.environ.get("CONCURRENCY", 16))
OUT = Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))


def progress(msg: str) -> None:
    print(f"[repository] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"content-type": "application/json", **AUTH})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def proc_stats(pid: int) -> dict:
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def bench(http: str) -> dict:
    out = subprocess.run([str(BIN), "bench", "--url", http, "--model", MODEL, "--concurrency", str(CONCURRENCY),
                          "--duration", str(DURATION), "--json", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    return {"requests": r["requests"], "non_2xx": r["requests"] - r["successes"], "by_status": r["by_status"],
            "throughput_rps": r["throughput_rps"], "p50_ms": r["latency_ms"]["p50"],
            "p99_ms": r["latency_ms"]["p99"]}


def swap_run(base: str, http: str) -> dict:
    """A bench run with SWAPS loads spread over it, alternating versions 1 and 2."""
    swaps: list[dict] = []

    def swapper():
        time.sleep(DURATION * 0.05)
        gap = DURATION * 0.9 / SWAPS
        for i in range(SWAPS):
            t0 = time.time()
            status, body = post(base, f"/v2/repository/models/{MODEL}/load",
                                {"parameters": {"version": "1" if i % 2 else "2"}})
            swaps.append({"status": status, "seconds": time.time() - t0, "version": body.get("version"),
                          "exit_policy": body.get("exit_policy"), "error": body.get("error")})
            time.sleep(max(0.0, gap - (time.time() - t0)))

    t = threading.Thread(target=swapper)
    t.start()
    result = bench(http)
    t.join()
    result["swaps"] = len(swaps)
    result["swaps_ok"] = sum(s["status"] == 200 for s in swaps)
    result["swap_seconds_median"] = sorted(s["seconds"] for s in swaps)[len(swaps) // 2]
    result["swap_errors"] = [s for s in swaps if s["status"] != 200]
    return result


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="seenn-repository-"))
    root = tmp / "models"
    for v in ("1", "2"):
        shutil.copytree(PACKAGE, root / MODEL / v)
    (tmp / "token").write_text(TOKEN)
    http_port = free_port()
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([str(BIN), "serve", "--models", str(root), "--host", "127.0.0.1",
                               "--http-port", str(http_port), "--grpc-port", str(free_port()),
                               "--state-dir", str(tmp / "state"), "--admin-token-file", str(tmp / "token")],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SEENN_LOG": "warn"})
    base, http = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        results: dict = {"model": MODEL, "concurrency": CONCURRENCY, "duration_s": DURATION, "rounds": ROUNDS,
                         "swaps_per_run": SWAPS, "without": [], "with": []}
        bench(http)  # warm-up
        for r in range(ROUNDS):
            progress(f"round {r + 1}/{ROUNDS}: no swap")
            results["without"].append(bench(http))
            progress(f"round {r + 1}/{ROUNDS}: {SWAPS} swaps")
            results["with"].append(swap_run(base, http))
        post(base, f"/v2/repository/models/{MODEL}/load", {"parameters": {"version": "latest"}})
        # Cycles: unload and load with no traffic; one cycle first so every lazily made thing exists.
        post(base, f"/v2/repository/models/{MODEL}/unload")
        post(base, f"/v2/repository/models/{MODEL}/load")
        time.sleep(1.0)
        before = proc_stats(server.pid)
        progress(f"{CYCLES} load/unload cycles")
        failures = 0
        for i in range(CYCLES):
            failures += post(base, f"/v2/repository/models/{MODEL}/unload")[0] != 200
            failures += post(base, f"/v2/repository/models/{MODEL}/load")[0] != 200
            if (i + 1) % 50 == 0:
                progress(f"  {i + 1} cycles: {proc_stats(server.pid)}")
        time.sleep(1.0)
        after = proc_stats(server.pid)
        results["cycles"] = {"cycles": CYCLES, "failed_calls": failures, "before": before, "after": after,
                             "rss_ratio": after["rss_mb"] / before["rss_mb"]}
        results["broken"] = broken_versions(base, root)
    finally:
        server.terminate()
        server.wait(timeout=60)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    summary = {
        "non_2xx_with_swaps": sum(r["non_2xx"] for r in results["with"]),
        "requests_with_swaps": sum(r["requests"] for r in results["with"]),
        "swaps_ok": sum(r["swaps_ok"] for r in results["with"]),
        "swaps": sum(r["swaps"] for r in results["with"]),
        "p99_without_ms": med([r["p99_ms"] for r in results["without"]]),
        "p99_with_ms": med([r["p99_ms"] for r in results["with"]]),
        "rps_without": med([r["throughput_rps"] for r in results["without"]]),
        "rps_with": med([r["throughput_rps"] for r in results["with"]]),
        "swap_seconds_median": med([r["swap_seconds_median"] for r in results["with"]]),
    }
    summary["p99_ratio"] = summary["p99_with_ms"] / summary["p99_without_ms"]
    results["summary"] = summary
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "repository.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({"summary": summary, "cycles": results["cycles"], "broken": results["broken"]}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    ok = (summary["non_2xx_with_swaps"] == 0 and summary["swaps_ok"] == summary["swaps"]
          and results["cycles"]["failed_calls"] == 0 and all(b["old_serves"] for b in results["broken"]))
    return 0 if ok else 1


def broken_versions(base: str, root: Path) -> list[dict]:
    def corrupt(d: Path):
        (d / "step.onnx").write_bytes(b"not an ONNX model")

    def manifest(d: Path):
        m = json.loads((d / "manifest.json").read_text())
        m["timesteps"] = 0
        (d / "manifest.json").write_text(json.dumps(m))

    def golden(d: Path):
        g = json.loads((d / "golden.json").read_text())
        g["samples"][0]["class_id"] = (g["samples"][0]["class_id"] + 1) % 10
        (d / "golden.json").write_text(json.dumps(g))

    out = []
    for what, mutate in (("corrupt step.onnx", corrupt), ("bad manifest", manifest), ("failing golden", golden)):
        d = root / MODEL / "3"
        shutil.copytree(PACKAGE, d)
        mutate(d)
        status, body = post(base, f"/v2/repository/models/{MODEL}/load")
        png = sorted((PACKAGE / "samples").glob("*.png"))[0].read_bytes()
        req = urllib.request.Request(f"{base}/v1/models/{MODEL}/classify", data=png,
                                     headers={"content-type": "image/png"})
        served = json.loads(urllib.request.urlopen(req).read())["version"]
        answer = (body.get("error") or "").replace(str(root), "<repository>")
        out.append({"broken": what, "status": status, "answer": answer, "serving_after": served,
                    "old_serves": status == 400 and served == "2"})
        shutil.rmtree(d)
    return out


if __name__ == "__main__":
    sys.exit(main())
