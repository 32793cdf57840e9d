"""Markdown tables from the JSON reports scripts/bench.sh writes (bench-results/<model>/*.json)."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    print(f"### {model_dir.name}\n")
    ev = json.loads((model_dir / "eval.json").read_text())
    print(f"In-process `seenn eval` ({ev['samples']} images, concurrency {ev['concurrency']}):\n")
    print("| rule | setting | accuracy | avg timesteps | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|---|---|")
    for r in ev["rules"]:
        print(f"| {r['rule']} | {r['setting']} | {100 * r['accuracy']:.2f}% | {r['avg_timesteps']:.3f} | "
              f"{r['latency_p50_ms']:.3f} | {r['latency_p99_ms']:.3f} | {r['throughput_rps']:.0f} |")
    print("\nOver the network (`seenn bench`):\n")
    print("| run | req/s | p50 ms | p90 ms | p99 ms | max ms | avg timesteps | errors | server RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in sorted(model_dir.glob("*.json")):
        if f.name == "eval.json":
            continue
        r = json.loads(f.read_text())
        lat = r["latency_ms"]
        rss = r.get("server_rss_mb")
        print(f"| {f.stem} | {r['throughput_rps']:.0f} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
              f"{lat['max']:.2f} | {r['avg_timesteps']:.3f} | {r['errors']} | {'' if rss is None else f'{rss:.0f}'} |")
    print()
