"""Spiking neurons with explicit state, one timestep per call.

Every neuron takes the input current ``x`` and its membrane ``u`` (``None`` means the initial value)
and returns ``(output, new_membrane)``, so the same module serves BPTT training (the caller loops over
t) and the exported per-timestep ONNX graph (membranes are graph inputs and outputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DSpike(torch.autograd.Function):
    """Heaviside forward, Dspike surrogate backward (Li et al., 2021), with x = u - V_th.

    b(x) = tanh(γ·clamp(x, -γ, γ)) / (2·tanh(γ²)) + 1/2, so
    ∂s/∂u = γ·sech²(γ·x) / (2·tanh(γ²)) for |x| < γ, else 0.   (γ = 3 by default)
    """

    @staticmethod
    def forward(ctx, x, gamma):
        ctx.save_for_backward(x)
        ctx.gamma = gamma
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = ctx.gamma
        sech2 = 1.0 - torch.tanh(g * x) ** 2
        d = g * sech2 / (2.0 * math.tanh(g * g))
        d = torch.where(x.abs() < g, d, torch.zeros_like(d))
        return grad * d, None


class Triangle(torch.autograd.Function):
    """Heaviside forward, triangle surrogate backward, with x = u - V_th:

    ∂s/∂u = (1/γ²)·max(0, γ − |x|).   (γ = 1 by default)
    """

    @staticmethod
    def forward(ctx, x, gamma):
        ctx.save_for_backward(x)
        ctx.gamma = gamma
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = ctx.gamma
        return grad * torch.clamp(g - x.abs(), min=0.0) / (g * g), None


SURROGATES = {"dspike": (DSpike, 3.0), "triangle": (Triangle, 1.0)}


class LIF(nn.Module):
    """Leaky integrate-and-fire, as in SEENN's direct-training code:

    u ← τ·u + I;  s = H(u − V_th);  u ← (1 − s)·u   (hard reset to 0; the reset is not detached,
    so the gradient flows through it). τ = 0.5 is a multiplicative decay, V_th = 1.0, u₀ = 0.
    """

    kind = "lif"

    def __init__(self, leak: float = 0.5, threshold: float = 1.0, surrogate: str = "dspike",
                 gamma: float | None = None):
        super().__init__()
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; accepted: {', '.join(SURROGATES)}")
        self.leak, self.threshold = leak, threshold
        self.fn, default_gamma = SURROGATES[surrogate]
        self.gamma = default_gamma if gamma is None else gamma
        self.surrogate = surrogate

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def forward(self, x, u=None):
        u = self.leak * (self.initial_state(x) if u is None else u) + x
        if self.training and torch.is_grad_enabled():
            s = self.fn.apply(u - self.threshold, self.gamma)
        else:
            s = (u >= self.threshold).to(u.dtype)
        return s, (1.0 - s) * u


class IF(nn.Module):
    """Integrate-and-fire with soft reset for converted networks (QCFS → SNN), in units of θ:

    v ← v + I/θ;  s = [v > 1];  v ← v − s;  output = s·θ;  v₀ = 0.5 (i.e. 0.5·θ).
    """

    kind = "if"
    initial_value = 0.5

    def __init__(self, threshold: float):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.initial_value)

    def forward(self, x, v=None):
        v = (self.initial_state(x) if v is None else v) + x / self.threshold
        s = (v > 1.0).to(v.dtype)
        return s * self.threshold, v - s


class QCFS(nn.Module):
    """Quantisation-clip-floor-shift activation (Bu et al., 2022), the ANN side of conversion:

    h(x) = λ·clamp(floor(x·L/λ + 1/2) / L, 0, 1), floor with a straight-through gradient, λ learnable.
    """

    def __init__(self, levels: int = 8, init_lambda: float = 4.0):
        super().__init__()
        self.levels = levels
        self.lam = nn.Parameter(torch.tensor(float(init_lambda)))

    def forward(self, x):
        y = x * self.levels / self.lam + 0.5
        y = y + (torch.floor(y) - y).detach()  # straight-through floor
        return self.lam * torch.clamp(y / self.levels, 0.0, 1.0)
