"""Offline reference for shadow runs: ONNX Runtime on a package's graphs over the Fashion-MNIST test
set, the confidence rule at α, and how often an early exit's class equals the full-T class.

    .venv/bin/python benchmarks/shadow_offline.py [--model models/fashion-mnist] [--alpha A] [--limit N] [--json OUT]

Prints (and writes with --json) the number of images, early exits (before T), their agreement with
the full-T class and its binomial standard error, the agreement over all images (calibration.json's
`agreement_with_full_t` definition), and the accuracy. Needs numpy and onnxruntime only; the images
are read with the trainer's IDX reader, preprocessed as the manifest says (`pixel × scale`, then
`(x − mean) / std`), and the running sum of logits is accumulated in float64 as the server does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training"))
from seenn_train.data import DEFAULT_FASHION_DIR, load_idx_dataset  # noqa: E402


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logits(pkg: Path, manifest: dict, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Per-step logits [N, T, K]."""
    g = manifest["graphs"]
    enc = session(pkg / g["encoder"]["file"]) if g.get("encoder") else None
    step = session(pkg / g["step"]["file"])
    states = g["step"]["states"]
    names = [g["step"]["logits"]] + [s["output"] for s in states]
    t_max = manifest["timesteps"]
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        feats = enc.run([g["encoder"]["output"]], {g["encoder"]["input"]: xb})[0] if enc else xb
        mem = [np.full((len(xb), *s["shape"]), s["initial_value"], np.float32) for s in states]
        zs = []
        for _ in range(t_max):
            feed = {g["step"]["input"]: feats}
            feed.update({s["input"]: m for s, m in zip(states, mem)})
            res = step.run(names, feed)
            zs.append(res[0])
            mem = res[1:]
        out.append(np.stack(zs, 1))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "fashion-mnist"))
    ap.add_argument("--data-dir", default=DEFAULT_FASHION_DIR)
    ap.add_argument("--alpha", type=float, help="default: the manifest's default_alpha")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--limit", type=int, help="only the first N test images")
    args = ap.parse_args()
    pkg = Path(args.model)
    manifest = json.loads((pkg / "manifest.json").read_text())
    alpha = args.alpha if args.alpha is not None else manifest["exit"]["default_alpha"]
    temperature = manifest["exit"]["temperature"]
    spec = manifest["input"]
    test = load_idx_dataset(args.data_dir, train=False)
    images, labels = test.images[: args.limit], test.labels[: args.limit]
    x = images.astype(np.float32) * np.float32(spec["scale"])
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    x = ((x - mean) / std).astype(np.float32)
    z = logits(pkg, manifest, x)
    n, t_max, _ = z.shape
    cum = np.cumsum(z.astype(np.float64), axis=1)
    if manifest["exit"].get("aggregation", "sum") == "mean":
        cum = cum / np.arange(1, t_max + 1)[None, :, None]
    s = cum / temperature
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    score = (p / p.sum(-1, keepdims=True)).max(-1)
    fire = score > alpha
    fire[:, -1] = True
    exit_t = fire.argmax(1) + 1
    pred = cum[np.arange(n), exit_t - 1].argmax(-1)
    full = cum[:, -1].argmax(-1)
    early = exit_t < t_max
    k = int(early.sum())
    agree = int((pred[early] == full[early]).sum())
    rate = agree / k if k else float("nan")
    se = math.sqrt(rate * (1 - rate) / k) if k else float("nan")
    summary = {
        "model": manifest["name"],
        "alpha": alpha,
        "images": n,
        "early_exits": k,
        "early_agree": agree,
        "early_agreement": rate,
        "early_agreement_se": se,
        "agreement_all": float((pred == full).mean()),
        "accuracy": float((pred == labels).mean()),
        "avg_timesteps": float(exit_t.mean()),
        "exits_per_t": np.bincount(exit_t, minlength=t_max + 1)[1:].tolist(),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
