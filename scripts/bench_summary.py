"""Median table over rounds of `seenn bench --json` reports named `<run>-r<round>.json` in a folder.

    python3 scripts/bench_summary.py bench-results/workers
"""

import collections
import json
import pathlib
import statistics
import sys


def main(folder: str) -> None:
    runs = collections.defaultdict(list)
    for f in sorted(pathlib.Path(folder).glob("*-r*.json")):
        runs[f.name.rsplit("-r", 1)[0]].append(json.loads(f.read_text()))
    med = statistics.median
    print("| configuration / run | rounds | req/s (per round) | p50 ms | p99 ms | avg t | errors |")
    print("|---|---|---|---|---|---|---|")
    for key, rs in sorted(runs.items()):
        rps = " ".join("%.0f" % r["throughput_rps"] for r in rs)
        print(
            f"| {key} | {len(rs)} | {med([r['throughput_rps'] for r in rs]):.0f} ({rps}) | "
            f"{med([r['latency_ms']['p50'] for r in rs]):.3f} | {med([r['latency_ms']['p99'] for r in rs]):.2f} | "
            f"{med([r['avg_timesteps'] for r in rs]):.3f} | {sum(r['errors'] for r in rs)} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
