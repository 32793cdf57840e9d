"""Encode the validation and test frames, and evaluate the trained snnTorch network itself.

    .venv/bin/python examples/snntorch-fashion-mnist/evaluate.py --net feedforward \
        [--package models/snntorch-fashion-mnist]

Writes ``<runs>/val.npz`` and ``<runs>/test.npz`` (``x``: uint8 frames [N, T, 1, 28, 28], 0/1;
``y``: labels), the data ``seenn calibrate`` and ``seenn eval`` read. With ``--package``, runs the
original snnTorch module (not the imported graph) step by step over the 10 000 test images and
applies the package's exit rule (SEENN-I with its α, temperature and aggregation) to its output
spikes: ``<runs>/<net>-snntorch-eval.json``, which the server's own evaluation must match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import snn as ex  # noqa: E402
from seenn_train.seenn import aggregate, confidence_exit  # noqa: E402

VAL_SEED, TEST_SEED = 1, 2


def frames_npz(path: Path, images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    if not path.exists():
        frames = ex.encode(images, seed=seed).astype(np.uint8)
        np.savez(path, x=frames, y=labels)
    return np.load(path)["x"]


def snntorch_outputs(net: torch.nn.Module, frames: np.ndarray, batch: int = 500) -> np.ndarray:
    """The module's output spikes [N, T, K], stepped as trained."""
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(frames), batch), desc="snnTorch on the test frames", unit="batch"):
            spikes, _ = ex.run(net, torch.from_numpy(frames[i:i + batch].astype(np.float32)))
            out.append(spikes.transpose(0, 1).numpy())
    return np.concatenate(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=sorted(ex.NETS), default="feedforward")
    p.add_argument("--runs", type=Path, default=Path(__file__).resolve().parent / "runs")
    p.add_argument("--package", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    x, y = ex.load_fashion(train=True)
    _, _, vx, vy = ex.train_val_split(x, y)
    tx, ty = ex.load_fashion(train=False)
    args.runs.mkdir(parents=True, exist_ok=True)
    frames_npz(args.runs / "val.npz", vx, vy, VAL_SEED)
    test = frames_npz(args.runs / "test.npz", tx, ty, TEST_SEED)
    print(f"frames: {args.runs / 'val.npz'}, {args.runs / 'test.npz'}")
    if args.package is None:
        return 0
    manifest = json.loads((args.package / "manifest.json").read_text())
    ex_rule = manifest["exit"]
    net = ex.NETS[args.net]()
    net.load_state_dict(torch.load(args.runs / f"{args.net}.pt", map_location="cpu")["model"])
    z = snntorch_outputs(net.eval(), test)
    agg = aggregate(z, ex_rule["aggregation"])
    exit_t, pred = confidence_exit(z, ex_rule["default_alpha"], ex_rule["temperature"],
                                   aggregation=ex_rule["aggregation"])
    report = {
        "net": args.net,
        "reference": "the original snnTorch module, stepped one frame at a time",
        "samples": int(len(ty)),
        "accuracy_per_t": [float(v) for v in (agg.argmax(-1) == ty[:, None]).mean(0)],
        "alpha": ex_rule["default_alpha"], "temperature": ex_rule["temperature"], "aggregation": ex_rule["aggregation"],
        "seenn1": {"accuracy": float((pred == ty).mean()), "avg_timesteps": float(exit_t.mean())},
    }
    out = args.runs / f"{args.net}-snntorch-eval.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["seenn1"]), "->", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
