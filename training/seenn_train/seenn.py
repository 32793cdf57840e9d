"""SEENN's exit rules and metrics on stored per-timestep logits ``z[N, T, K]`` (numpy).

All of this mirrors the official code (see the method reference): the score is the max softmax of
the cumulative *sum* of logits, divided by a temperature (1 for direct training, 8 for conversion);
a sample exits at the first t with score > α (strict) and always at T.
"""

from __future__ import annotations

import numpy as np
import torch


def cumulative(z: np.ndarray) -> np.ndarray:
    return np.cumsum(z.astype(np.float64), axis=1)


def aggregate(z: np.ndarray, how: str = "sum") -> np.ndarray:
    """The aggregate Z_t the exit rule reads (manifest ``exit.aggregation``): the running sum of the
    per-step outputs, their running mean, or (``last``, an LI readout) the last step's output."""
    if how == "sum":
        return cumulative(z)
    if how == "mean":
        return cumulative(z) / np.arange(1, z.shape[1] + 1)[None, :, None]
    if how == "last":
        return z.astype(np.float64)
    raise ValueError(f"aggregation {how!r}; accepted: sum, mean, last")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def correct_per_t(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """c[n, t] = 1 if argmax of the running sum at t (1-based t = index + 1) is the label."""
    return (cumulative(z).argmax(-1) == y[:, None])


def accuracy_per_t(z: np.ndarray, y: np.ndarray) -> list:
    return correct_per_t(z, y).mean(0).tolist()


def scores(z: np.ndarray, temperature: float = 1.0, aggregation: str = "sum") -> np.ndarray:
    """Exit score at every t: max_k softmax(Z_t / temperature)."""
    return softmax(aggregate(z, aggregation) / temperature).max(-1)


def confidence_exit(z: np.ndarray, alpha: float, temperature: float = 1.0, max_timesteps: int | None = None,
                    aggregation: str = "sum"):
    """SEENN-I. Returns (exit timestep 1..T per sample, predicted class)."""
    n, t_max, _ = z.shape
    t_max = min(t_max, max_timesteps or t_max)
    s = scores(z[:, :t_max], temperature, aggregation)
    fire = s > alpha
    fire[:, t_max - 1] = True
    exit_t = fire.argmax(1) + 1
    pred = aggregate(z[:, :t_max], aggregation)[np.arange(n), exit_t - 1].argmax(-1)
    return exit_t, pred


def fixed_exit(z: np.ndarray, timesteps: np.ndarray):
    """Run exactly ``timesteps[n]`` steps (SEENN-II's chosen action, or a fixed t)."""
    timesteps = np.asarray(timesteps)
    pred = cumulative(z)[np.arange(len(z)), timesteps - 1].argmax(-1)
    return timesteps, pred


def summarize(exit_t: np.ndarray, pred: np.ndarray, y: np.ndarray, t_max: int) -> dict:
    return {
        "accuracy": float((pred == y).mean()),
        "avg_timesteps": float(exit_t.mean()),
        "exits_per_t": np.bincount(exit_t, minlength=t_max + 1)[1:].tolist(),
    }


def agreement_with_full_t(z: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of samples whose exit-time class equals the class after all T steps (argmax Z_T),
    whatever the label: how often an early exit changes the answer."""
    return float((np.asarray(pred) == cumulative(z)[:, -1].argmax(-1)).mean())


def aet(z: np.ndarray, y: np.ndarray) -> float:
    """The paper's AET (eq. 4 as coded): assumes C_1 ⊆ … ⊆ C_T,
    AET = (|C_1| + Σ_{t≥2} t·(|C_t| − |C_{t−1}|) + T·|W|) / N, with W the samples wrong at T."""
    c = correct_per_t(z, y).sum(0).astype(np.float64)
    t_max, n = z.shape[1], len(y)
    total = c[0] + sum((t + 1) * (c[t] - c[t - 1]) for t in range(1, t_max)) + t_max * (n - c[-1])
    return float(total / n)


def empirical_earliest(z: np.ndarray, y: np.ndarray) -> float:
    """Per sample, the first t at which the prediction is correct (T if never), averaged."""
    c = correct_per_t(z, y)
    first = np.where(c.any(1), c.argmax(1) + 1, z.shape[1])
    return float(first.mean())


def oracle_curve(z: np.ndarray, y: np.ndarray) -> list:
    """What exits chosen with the labels can reach, the bound for any exit rule: every sample exits
    at t = 1 unless it is wrong there and right (by the running sum) at a later t; those are sent on
    to their first right t, cheapest first. One row per accuracy reached, ``{"accuracy",
    "avg_timesteps"}``, from all-at-t=1 to every sample that is ever right. Unlike AET, a sample that
    is never right costs 1 timestep here, not T: a rule may as well answer it at once."""
    c = correct_per_t(z, y)
    n = len(y)
    late = c.any(1) & ~c[:, 0]
    cost = np.sort(c[late].argmax(1))  # first right t minus 1
    right = int(c[:, 0].sum()) + np.arange(len(cost) + 1)
    extra = np.concatenate([[0], np.cumsum(cost)])
    return [{"accuracy": float(r / n), "avg_timesteps": float(1 + e / n)} for r, e in zip(right, extra)]


ALPHA_GRID = sorted({round(a, 6) for a in
                     [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99,
                      0.992, 0.994, 0.995, 0.996, 0.997, 0.998, 0.999, 0.9993, 0.9995, 0.9997, 0.9999,
                      0.99995, 0.99999, 0.999999]})


def alpha_sweep(z: np.ndarray, y: np.ndarray, temperature: float = 1.0, alphas=ALPHA_GRID) -> list:
    rows = []
    for a in alphas:
        exit_t, pred = confidence_exit(z, a, temperature)
        rows.append({"alpha": float(a), **summarize(exit_t, pred, y, z.shape[1]),
                     "agreement_with_full_t": agreement_with_full_t(z, pred)})
    return rows


def choose_alpha(sweep: list, full_accuracy: float, tolerance: float = 0.001) -> dict:
    """The smallest α whose (validation) accuracy is within ``tolerance`` of full-T accuracy."""
    ok = [r for r in sweep if r["accuracy"] >= full_accuracy - tolerance - 1e-12]
    return min(ok, key=lambda r: r["alpha"]) if ok else max(sweep, key=lambda r: r["alpha"])


def class_balance_weight(c1: torch.Tensor, rate: float) -> torch.Tensor:
    """The official code's sample weight: 1 if correct at t=1, else rate/(1−rate), where rate is the
    SNN's training accuracy at t=1."""
    rate = min(max(rate, 1e-6), 1 - 1e-6)
    return c1 + (rate / (1.0 - rate)) * (1.0 - c1)


def policy_loss(policy_logits: torch.Tensor, correct: torch.Tensor, weight: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative expected reward, computed exactly over all actions (no sampling):

    L = mean_n [ w_n · Σ_t π_t(x_n) · (β·(1 − c_{n,t}) − 2^{−(t−1)}·c_{n,t}) ],

    i.e. −E_{a∼π}[R(a)] with R(t) = 2^{−(t−1)} if the SNN is right at t, else −β (SEENN eq. 10 form).
    """
    t_max = policy_logits.shape[1]
    pi = torch.softmax(policy_logits, dim=1)
    c = correct.to(pi.dtype)
    reward_if_right = torch.pow(2.0, -torch.arange(t_max, dtype=pi.dtype, device=pi.device))
    cost = beta * (1.0 - c) - reward_if_right * c
    return (weight * (pi * cost).sum(1)).mean()


def earliest_correct_action(correct: np.ndarray) -> np.ndarray:
    """Supervised SEENN-II target (0-based action index): the first t at which the running sum is
    right; a sample never right anywhere gets action 0 (one step: more steps would not help)."""
    c = np.asarray(correct, bool)
    return np.where(c.any(1), c.argmax(1), 0)


def bias_vector(scale: float, t_max: int) -> np.ndarray:
    """Per-action logit bias ``scale·(a − 1)/(T − 1)`` for a = 1..T: one number moves a policy along its
    accuracy/steps curve (positive: later actions, more steps)."""
    return scale * np.arange(t_max, dtype=np.float64) / max(1, t_max - 1)


BIAS_SCALES = [round(float(x), 3) for x in np.concatenate([np.arange(-8.0, -2.0, 1.0), np.arange(-2.0, 2.0, 0.1),
                                                           np.arange(2.0, 8.01, 0.5)])]


def bias_sweep(z: np.ndarray, y: np.ndarray, action_logits: np.ndarray, scales=BIAS_SCALES) -> list:
    """SEENN-II with per-action biases: action = argmax(action_logits + bias), one row per scale."""
    t_max = z.shape[1]
    rows = []
    for sc in scales:
        b = bias_vector(sc, t_max)
        a = (action_logits + b).argmax(1) + 1
        exit_t, pred = fixed_exit(z, a)
        rows.append({"bias_scale": float(sc), "action_bias": [round(float(v), 6) + 0.0 for v in b],
                     **summarize(exit_t, pred, y, t_max), "agreement_with_full_t": agreement_with_full_t(z, pred)})
    return rows


def fewest_steps_at(rows: list, accuracy: float) -> dict | None:
    """The row with the fewest average timesteps whose accuracy is at least ``accuracy``."""
    ok = [r for r in rows if r["accuracy"] >= accuracy - 1e-12]
    return min(ok, key=lambda r: (r["avg_timesteps"], -r["accuracy"])) if ok else None


def steps_at_accuracy(rows: list, accuracy: float) -> float | None:
    r = fewest_steps_at(rows, accuracy)
    return None if r is None else r["avg_timesteps"]
