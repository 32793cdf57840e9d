"""The learned exit rule: a tiny network that, after every timestep, reads the SNN's running aggregate
of logits and the step count and scores whether to stop.

Exported as ``exit.onnx`` (see models/README.md): inputs ``aggregate`` ``[N, K]`` float32 (the running
SUM of the per-step logits of steps 1..t, the same ``Z_t`` as the confidence rule, before any
temperature) and ``timestep`` ``[N, 1]`` float32 (t, 1-based); output ``stop_probability`` ``[N, 1]``
float32 in [0, 1]. The features are computed inside the graph, so the server only feeds ``Z_t`` and t.
Rule: exit at the first t with ``stop_probability > threshold`` (strict), always at ``max_timesteps``.
SEENN-I's rule is the special case score = max softmax(Z_t / temperature).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import seenn

# Names in exit.onnx and the manifest.
EXIT_INPUTS = ("aggregate", "timestep")
EXIT_OUTPUT = "stop_probability"


def exit_features(aggregate: torch.Tensor, timestep: torch.Tensor, temperature: float, t_max: int) -> torch.Tensor:
    """Features of the running state, ``[N, K + 6 + T]``:

    - softmax(Z_t / temperature) (K values: which class, since some classes are harder than others);
    - the three largest of those probabilities, sorted;
    - the top-1 minus top-2 probability margin;
    - the normalised entropy H(p) / log K;
    - the top-1 minus top-2 margin of the per-step mean logits (Z_t / t), scaled by 1/10;
    - t as a one-hot over 1..T (``|t − j| < 0.5``; a t outside 1..T gives all zeros).
    """
    k = aggregate.shape[1]
    p = torch.softmax(aggregate / temperature, dim=1)
    top3 = torch.topk(p, min(3, k), dim=1).values
    margin = top3[:, :1] - top3[:, 1:2]
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1, keepdim=True) / math.log(k)
    mean_top2 = torch.topk(aggregate / timestep, 2, dim=1).values
    logit_margin = (mean_top2[:, :1] - mean_top2[:, 1:2]) * 0.1
    steps = torch.arange(1, t_max + 1, dtype=aggregate.dtype).view(1, -1)
    onehot = ((timestep - steps).abs() < 0.5).to(aggregate.dtype)
    return torch.cat([p, top3, margin, entropy, logit_margin, onehot], dim=1)


class ExitHead(nn.Module):
    """(Z_t, t) → stop probability: the features above → MLP(hidden, hidden) → sigmoid."""

    def __init__(self, num_classes: int, t_max: int, temperature: float = 1.0, hidden: int = 32):
        super().__init__()
        self.num_classes, self.t_max, self.temperature = num_classes, t_max, float(temperature)
        f = num_classes + 6 + t_max
        self.mlp = nn.Sequential(nn.Linear(f, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def logits(self, aggregate, timestep):
        return self.mlp(exit_features(aggregate, timestep, self.temperature, self.t_max))

    def forward(self, aggregate, timestep):
        return torch.sigmoid(self.logits(aggregate, timestep))


def stop_targets(correct: np.ndarray, kind: str = "no_regret") -> np.ndarray:
    """Per (sample, t) target of the stop score, ``correct`` ``[N, T]`` bool (c_t of the running sum).

    - ``correct``: c_t (the head estimates P(right now)).
    - ``no_regret``: stopping at t loses nothing against any later step: c_t, or no later step is right
      (a sample the SNN never gets right may as well stop at once).
    """
    c = correct.astype(bool)
    if kind == "correct":
        return c.astype(np.float32)
    if kind == "no_regret":
        later = np.zeros_like(c)
        later[:, :-1] = np.flip(np.logical_or.accumulate(np.flip(c[:, 1:], 1), 1), 1)
        return (c | ~later).astype(np.float32)
    raise ValueError(f"unknown target {kind!r}; accepted: correct, no_regret")


def _rows(z: np.ndarray):
    """All (Z_t, t) pairs of ``z`` ``[N, T, K]`` as float32 tensors ``[N·T, K]`` and ``[N·T, 1]``."""
    n, t_max, k = z.shape
    agg = seenn.cumulative(z).astype(np.float32).reshape(n * t_max, k)
    t = np.tile(np.arange(1, t_max + 1, dtype=np.float32), n).reshape(-1, 1)
    return torch.from_numpy(agg), torch.from_numpy(t)


def train_exit_head(z: np.ndarray, y: np.ndarray, temperature: float, *, target: str = "no_regret", epochs: int = 60,
                    hidden: int = 32, lr: float = 3e-3, batch_size: int = 512, seed: int = 0,
                    weight_decay: float = 1e-4) -> ExitHead:
    """Fit the head with binary cross-entropy on every t < T of the held-out logits ``z`` ``[N, T, K]``
    (at t = T the exit is forced, so those rows teach nothing)."""
    torch.manual_seed(seed)
    n, t_max, k = z.shape
    head = ExitHead(k, t_max, temperature, hidden)
    agg, t = _rows(z)
    tgt = torch.from_numpy(stop_targets(seenn.correct_per_t(z, y), target).reshape(-1, 1))
    keep = (t[:, 0] < t_max)
    agg, t, tgt = agg[keep], t[keep], tgt[keep]
    head.train()
    fit_binary(head.logits, head.parameters(), (agg, t), tgt, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
               weight_decay=weight_decay, desc=f"exit head ({target})")
    return head.eval()


def fit_binary(logits_fn, params, inputs: tuple, target: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
               seed: int, weight_decay: float = 1e-4, desc: str = "head"):
    """Binary cross-entropy of ``logits_fn(*inputs[idx])`` against ``target[idx]``: AdamW with a
    one-cycle schedule, shuffled mini-batches drawn from a generator seeded with ``seed``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(target) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        order = torch.randperm(len(target), generator=gen)
        for i in range(0, len(target), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(logits_fn(*(x[idx] for x in inputs)), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def head_scores(head: ExitHead, z: np.ndarray) -> np.ndarray:
    """Stop probability at every t, ``[N, T]`` (PyTorch)."""
    n, t_max, _ = z.shape
    agg, t = _rows(z)
    return head(agg, t).numpy().reshape(n, t_max)


def score_exit(z: np.ndarray, score: np.ndarray, threshold: float, max_timesteps: int | None = None):
    """Exit at the first t with ``score[n, t] > threshold``, always at max_timesteps (default T).
    Returns (exit timestep 1..T, predicted class = argmax Z_t)."""
    n, t_max, _ = z.shape
    t_max = min(t_max, max_timesteps or t_max)
    fire = score[:, :t_max] > threshold
    fire[:, t_max - 1] = True
    exit_t = fire.argmax(1) + 1
    pred = seenn.cumulative(z[:, :t_max])[np.arange(n), exit_t - 1].argmax(-1)
    return exit_t, pred


THRESHOLD_GRID = sorted({round(x, 6) for x in list(np.round(np.arange(0.05, 0.951, 0.05), 4))
                         + [0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999]})


def threshold_sweep(z: np.ndarray, y: np.ndarray, score: np.ndarray, thresholds=THRESHOLD_GRID) -> list:
    rows = []
    for thr in thresholds:
        exit_t, pred = score_exit(z, score, thr)
        rows.append({"threshold": float(thr), **seenn.summarize(exit_t, pred, y, z.shape[1]),
                     "agreement_with_full_t": seenn.agreement_with_full_t(z, pred)})
    return rows


def fine_thresholds(score: np.ndarray) -> list:
    """A threshold grid that follows the distribution of the scores (every 1% quantile of the scores
    at t < T), merged with the fixed grid, so the sweep resolves the whole curve."""
    q = np.quantile(score[:, :-1].ravel(), np.linspace(0.0, 1.0, 101))
    return sorted({round(float(x), 6) for x in q if 0.0 < x < 1.0} | set(THRESHOLD_GRID))
