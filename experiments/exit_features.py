"""Does the learned exit head lack information, or capacity? Trains exit heads with several feature
sets on the committed direct SNN's outputs and compares them at SEENN-I's default accuracy:

- ``logits``: the shipped head's features of the running sum of logits and t (exit_head.exit_features);
- ``+step``: those plus the current step's own softmax and whether its class, and the previous running
  class, agree with the running class (the running sum alone hides how the prediction moved);
- ``+spikes``: those plus the running mean of the last spiking layer's spike rates (4c channels,
  spatially averaged), i.e. what the SNN computed before its final linear layer;
- ``+step+spikes``: both;
- ``+ahead``: the shipped features plus a look-ahead: the logits the next step would add if the last
  spiking layer's input current repeated (its membrane after this step, leaked, plus this step's
  current, thresholded, through the final linear layer), as the softmax of the running sum with them
  added, its maximum, and whether its class is the running class. Ten numbers of the SNN's state
  rather than 128 spike rates;
- ``+ahead-T``: the same look-ahead run on to step T (the current held for every remaining step).

Same data as ``seenn_train exit-head``: trained on the held-out images (×5 with augmented copies),
threshold chosen on validation at SEENN-I's validation accuracy, reported on the test set.
``--train-rows N`` adds the SNN's outputs on N of its own training images to the heads' training rows
(at N = 50 000, eleven times the distinct images, but images the SNN has learned). Every head
is the same MLP (two hidden layers of HIDDEN, standardised inputs, target "stopping now loses nothing
against any later step"); its score is ranked, not calibrated.

    PYTHONPATH=training .venv/bin/python experiments/exit_features.py [--run training/checkpoints/fashion-mnist]

Prints one line per feature set: validation and test (accuracy, average timesteps), the test average
timesteps ÷ SEENN-I's, and the same ratio read off the test curve at SEENN-I's test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training"))
from seenn_train import seenn  # noqa: E402
from seenn_train.__main__ import build_model, load_splits  # noqa: E402
from seenn_train.data import Split  # noqa: E402
from seenn_train.exit_head import (  # noqa: E402
    exit_features,
    fine_thresholds,
    fit_binary,
    score_exit,
    stop_targets,
    threshold_sweep,
)
from seenn_train.train import augmented_copies, collect_logits  # noqa: E402

KINDS = ("logits", "+step", "+spikes", "+step+spikes", "+ahead", "+ahead-T")


@torch.no_grad()
def outputs(model, split, dataset: str, t_max: int, desc: str):
    """Per-step logits ``[N, T, K]`` (the trainer's ``collect_logits``), and per step the last
    spiking layer's spatially averaged spikes ``[N, T, C]`` and its look-ahead logits ``[N, T, K]``
    (see ``+ahead``), caught on the way by a forward hook."""
    seen, ahead = [], []
    act = model.act3

    def hook(_m, inputs, out):
        current, (spikes, membrane) = inputs[0], out
        seen.append(spikes.mean((2, 3)))
        # The logits of the next 1..T-1 steps if the current repeated, summed: [B, T-1, K].
        u, total, steps = membrane, 0, []
        for _ in range(t_max - 1):
            u = act.leak * u + current
            fire = (u >= act.threshold).to(current.dtype)
            u = (1 - fire) * u
            total = total + model.fc(torch.flatten(fire, 1))
            steps.append(total)
        ahead.append(torch.stack(steps, 1))

    handle = act.register_forward_hook(hook)
    try:
        z = collect_logits(model, split, dataset, t_max, desc=desc)
    finally:
        handle.remove()

    # One call per timestep, batch after batch: T entries [B, C] per batch → [N, T, C].
    def per_step(xs):
        return torch.cat([torch.stack(xs[i:i + t_max], 1) for i in range(0, len(xs), t_max)]).numpy()

    return z, (per_step(seen), per_step(ahead))


def features(z: np.ndarray, hidden, kind: str, temperature: float) -> torch.Tensor:
    f, ahead = hidden
    n, t_max, k = z.shape
    agg = seenn.cumulative(z).astype(np.float32)
    flat = torch.from_numpy(agg.reshape(-1, k))
    ts = torch.from_numpy(np.tile(np.arange(1, t_max + 1, dtype=np.float32), n).reshape(-1, 1))
    parts = [exit_features(flat, ts, temperature, t_max)]
    running = flat.argmax(1, keepdim=True)
    if "step" in kind:
        step = torch.softmax(torch.from_numpy(z.reshape(-1, k).astype(np.float32)), 1)
        prev = np.concatenate([np.zeros((n, 1, k), np.float32), agg[:, :-1]], 1).reshape(-1, k)
        parts += [step, (step.argmax(1, keepdim=True) == running).float(),
                  (torch.from_numpy(prev).argmax(1, keepdim=True) == running).float(), step.gather(1, running)]
    if "spikes" in kind:
        mean = np.cumsum(f, 1) / np.arange(1, t_max + 1)[None, :, None]
        parts.append(torch.from_numpy(mean.reshape(n * t_max, -1).astype(np.float32)))
    if "ahead" in kind:
        # ahead: [N, T, T-1, K]; "+ahead" looks one step on, "+ahead-T" to the last step (none at T).
        horizon = np.zeros((n, t_max, k), np.float32)
        for t in range(t_max - 1):
            horizon[:, t] = ahead[:, t, 0 if kind == "+ahead" else t_max - 2 - t]
        nxt = torch.softmax(torch.from_numpy((agg + horizon).reshape(-1, k).astype(np.float32)) / temperature, 1)
        parts += [nxt, nxt.max(1, keepdim=True).values, (nxt.argmax(1, keepdim=True) == running).float()]
    return torch.cat(parts, 1)


def train_head(x: torch.Tensor, target: torch.Tensor, hidden: int, epochs: int, seed: int = 0, lr: float = 3e-3):
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    mlp = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    fit_binary(mlp, mlp.parameters(), ((x - mu) / sd,), target, epochs=epochs, lr=lr, batch_size=512, seed=seed)

    @torch.no_grad()
    def score(xx):
        # Scaled so that float32 keeps the ranking near 1 (a sigmoid of the raw logit saturates).
        return torch.sigmoid(mlp((xx - mu) / sd) / 10).numpy()

    return score


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "training/checkpoints/fashion-mnist",
                    help="a run folder with run.json and snn.pt (default: the committed checkpoint)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS))
    ap.add_argument("--train-rows", type=int, default=0,
                    help="also train the heads on the SNN's outputs on this many of its own training images "
                         "(more rows, but images the SNN has learned; default 0: held-out images only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = json.loads((args.run / "run.json").read_text())
    model = build_model(meta)
    model.load_state_dict(torch.load(args.run / "snn.pt", map_location="cpu")["model"])
    model.eval()
    ns = types.SimpleNamespace(dataset=meta["dataset"], data_dir=args.data_dir, val_size=meta["val_size"],
                               holdout_size=None, limit=None)
    train, holdout, val, test = load_splits(ns, meta["holdout_size"])
    hold = augmented_copies(holdout, 4, seed=0)
    if args.train_rows:
        seen = train.subset(args.train_rows)
        hold = Split(np.concatenate([hold.images, seen.images]), np.concatenate([hold.labels, seen.labels]))
    t_max, temp, ds = meta["timesteps"], meta["temperature"], meta["dataset"]
    data = {name: (*outputs(model, split, ds, t_max, name), split.labels)
            for name, split in (("held-out", hold), ("val", val), ("test", test))}
    zv, _, yv = data["val"]
    zt, _, yt = data["test"]
    ref = seenn.choose_alpha(seenn.alpha_sweep(zv, yv, temp), seenn.accuracy_per_t(zv, yv)[-1], 0.001)
    s1 = seenn.summarize(*seenn.confidence_exit(zt, ref["alpha"], temp), yt, t_max)
    print(f"SEENN-I α={ref['alpha']}: val {ref['accuracy']:.4f} at {ref['avg_timesteps']:.4f}; "
          f"test {s1['accuracy']:.4f} at {s1['avg_timesteps']:.4f}")
    zh, fh, yh = data["held-out"]
    target = torch.from_numpy(stop_targets(seenn.correct_per_t(zh, yh), "no_regret").reshape(-1, 1))
    keep = torch.from_numpy(np.tile(np.arange(1, t_max + 1), len(yh)) < t_max)  # t = T teaches nothing
    for kind in args.kinds:
        x = features(zh, fh, kind, temp)
        score = train_head(x[keep], target[keep], args.hidden, args.epochs)
        sv = score(features(*data["val"][:2], kind, temp)).reshape(-1, t_max)
        st = score(features(*data["test"][:2], kind, temp)).reshape(-1, t_max)
        best = seenn.fewest_steps_at(threshold_sweep(zv, yv, sv, fine_thresholds(sv)), ref["accuracy"])
        if best is None:
            print(f"{kind:<14} features {x.shape[1]:>4}: never reaches SEENN-I's validation accuracy")
            continue
        r = seenn.summarize(*score_exit(zt, st, best["threshold"]), yt, t_max)
        curve = seenn.fewest_steps_at(threshold_sweep(zt, yt, st, fine_thresholds(st)), s1["accuracy"])
        on_curve = f"{curve['avg_timesteps'] / s1['avg_timesteps']:.3f}" if curve else "never"
        print(f"{kind:<14} features {x.shape[1]:>4}: val {best['accuracy']:.4f} at {best['avg_timesteps']:.4f}; "
              f"test {r['accuracy']:.4f} at {r['avg_timesteps']:.4f} = {r['avg_timesteps'] / s1['avg_timesteps']:.3f}× "
              f"SEENN-I; test curve at SEENN-I's accuracy {on_curve}×", flush=True)


if __name__ == "__main__":
    main()
