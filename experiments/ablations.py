"""Before/after measurements of the engine's speed work, in-process (`seenn eval`, no network):
each optimisation is switched off in turn (`--ablate`), ONNX Runtime's intra-op threads varied, and
batching compared, on both models. Every run's JSON goes under bench-results/ablations/; a Markdown
table goes to stdout. Configurations run interleaved, ROUNDS times in a shuffled order; the table
gives each figure's median over the rounds, so that drift of the machine hits every configuration.

    .venv/bin/python experiments/ablations.py [--fashion-limit 3000] [--resnet-repeat 10] [--rounds 3]
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "target" / "release" / "seenn"

CONFIGS = [
    ("optimised", []),
    ("encoder every step", ["--ablate", "encoder-every-step"]),
    ("membranes copied", ["--ablate", "copy-membranes"]),
    ("both off", ["--ablate", "encoder-every-step", "--ablate", "copy-membranes"]),
    ("intra-threads 2", ["--intra-threads", "2"]),
    ("static batching", ["--batching", "static"]),
    ("max-batch 8", ["--max-batch", "8"]),
    ("max-batch 1", ["--max-batch", "1"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fashion-limit", type=int, default=3000)
    ap.add_argument("--resnet-repeat", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench-results" / "ablations")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = [
        ("fashion-mnist", ["--model", "models/fashion-mnist", "--limit", str(args.fashion_limit)]),
        ("resnet19-bench", ["--model", "models-bench/resnet19-bench", "--data", "samples",
                            "--repeat", str(args.resnet_repeat)]),
    ]
    runs = [(m, margs, name, cargs, c) for m, margs in models for name, cargs in CONFIGS for c in (1, 64)
            # Batching settings only matter with requests to batch.
            if not (c == 1 and name in ("static batching", "max-batch 8", "max-batch 1"))]
    order = [(r, run) for r in range(args.rounds) for run in random.Random(r).sample(runs, len(runs))]
    results: dict[tuple, list] = {}
    for rnd, (model, margs, name, cargs, c) in tqdm(order, desc="eval runs", unit="run"):
        # Every configuration but the max-batch ones runs at --max-batch 32 (the default when these
        # figures were first taken), so that rows differ in one setting only.
        base = [] if "--max-batch" in cargs else ["--max-batch", "32"]
        cmd = [str(BIN), "eval", *margs, *base, *cargs, "--concurrency", str(c), "--json", "--quiet"]
        out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True,
                             env={"SEENN_LOG": "warn", "PATH": "/usr/bin:/bin"}).stdout
        rep = json.loads(out)
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        (args.out / f"{model}__{slug}__c{c}__r{rnd}.json").write_text(out)
        by_rule = {r["rule"]: r for r in rep["rules"]}
        results.setdefault((model, name, c), []).append((by_rule["fixed"], by_rule["confidence"]))
    med = statistics.median
    print("| model | configuration | concurrency | fixed T req/s | fixed T p50 ms | SEENN-I req/s | "
          "SEENN-I p50 ms | SEENN-I p99 ms | SEENN-I avg t |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, _, name, _, c in runs:
        rs = results[(model, name, c)]
        fixed = {k: med(f[k] for f, _ in rs) for k in ("throughput_rps", "latency_p50_ms")}
        conf = {k: med(x[k] for _, x in rs) for k in ("throughput_rps", "latency_p50_ms", "latency_p99_ms",
                                                       "avg_timesteps")}
        print(f"| {model} | {name} | {c} | {fixed['throughput_rps']:.0f} | {fixed['latency_p50_ms']:.3f} | "
              f"{conf['throughput_rps']:.0f} | {conf['latency_p50_ms']:.3f} | {conf['latency_p99_ms']:.3f} | "
              f"{conf['avg_timesteps']:.3f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
