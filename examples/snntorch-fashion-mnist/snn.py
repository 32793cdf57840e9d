"""The example's snnTorch networks, data and frame encoding, shared by train.py and evaluate.py.

Plain snnTorch as in its tutorials: ``snn.Leaky`` / ``snn.RLeaky`` neurons, surrogate gradients,
backpropagation through time, cross-entropy on the output spikes at every step (``ce_rate_loss``);
the prediction is the output layer's spike count. Fashion-MNIST is fed as **frames**: rate coding from
``snntorch.spikegen.rate``, one Bernoulli spike frame per timestep, seeded.

Two choices are made for the server, not for snnTorch:
- every neuron resets to zero in the step it spikes (``reset_mechanism="zero"``,
  ``reset_delay=False``): that is what snnTorch's own NIR import does with any LIF node, so the
  network exported to NIR is the network that was trained;
- ``beta`` and ``threshold`` are given per neuron, which snnTorch 1.0's ``export_to_nir`` needs to
  pass NIR's type check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import snntorch as snn
import torch
from seenn_train.data import FASHION_LABELS, read_idx
from snntorch import spikegen, surrogate

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FRAMES = 16  # T: frames per image
VAL_SIZE = 5000  # held out of the training file, for calibration (seeded split)
BETA = 0.9


def load_fashion(train: bool, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 1, 28, 28] and int64 labels."""
    stem = "train" if train else "t10k"
    x = read_idx(data_dir / f"{stem}-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28)
    y = read_idx(data_dir / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


def train_val_split(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """The same seeded split every time: (train_x, train_y, val_x, val_y)."""
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:VAL_SIZE], order[VAL_SIZE:]
    return x[train], y[train], x[val], y[val]


def encode(images: np.ndarray, seed: int, frames: int = FRAMES, batch: int = 1000) -> np.ndarray:
    """Rate coding: frames [N, T, 1, 28, 28] as bool, pixel/255 the spike probability per frame.

    Deterministic for a given (images, seed): one seeded generator, batches in order."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((len(images), frames, *images.shape[1:]), dtype=bool)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch].astype(np.float32) / 255.0)
        # spikegen.rate draws with the global generator; run it under ours for reproducibility.
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            s = spikegen.rate(x, num_steps=frames)  # [T, B, 1, 28, 28]
        out[i:i + batch] = s.transpose(0, 1).numpy().astype(bool)
    return out


def _leaky(n: int) -> snn.Leaky:
    return snn.Leaky(beta=torch.full((n,), BETA), threshold=torch.ones(n), spike_grad=surrogate.atan(),
                     reset_mechanism="zero", reset_delay=False)


class FeedForward(torch.nn.Module):
    """784 → 256 Leaky → 10 Leaky, frames flattened by the first layer."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.flat = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(784, hidden)
        self.lif1 = _leaky(hidden)
        self.fc2 = torch.nn.Linear(hidden, len(FASHION_LABELS))
        self.lif2 = _leaky(len(FASHION_LABELS))

    def init_state(self):
        return [self.lif1.init_leaky(), self.lif2.init_leaky()]

    def step(self, x: torch.Tensor, state: list):
        """One timestep: (output spikes, output membrane, new state)."""
        m1, m2 = state
        s1, m1 = self.lif1(self.fc1(self.flat(x)), m1)
        s2, m2 = self.lif2(self.fc2(s1), m2)
        return s2, m2, [m1, m2]

    def forward(self, x: torch.Tensor):  # used by export_to_nir's tracer only
        s, _, _ = self.step(x, self.init_state())
        return s


class Recurrent(torch.nn.Module):
    """784 → 128 RLeaky (all-to-all recurrent weights) → 10 Leaky."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.flat = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(784, hidden)
        self.rlif = snn.RLeaky(beta=torch.full((hidden,), BETA), threshold=torch.ones(hidden), linear_features=hidden,
                               spike_grad=surrogate.atan(), reset_mechanism="zero", reset_delay=False)
        self.fc2 = torch.nn.Linear(hidden, len(FASHION_LABELS))
        self.lif2 = _leaky(len(FASHION_LABELS))

    def init_state(self):
        spk, mem = self.rlif.init_rleaky()
        return [spk, mem, self.lif2.init_leaky()]

    def step(self, x: torch.Tensor, state: list):
        spk, mem, m2 = state
        spk, mem = self.rlif(self.fc1(self.flat(x)), spk, mem)
        s2, m2 = self.lif2(self.fc2(spk), m2)
        return s2, m2, [spk, mem, m2]

    def forward(self, x: torch.Tensor):
        s, _, _ = self.step(x, self.init_state())
        return s


NETS = {"feedforward": FeedForward, "recurrent": Recurrent}


def run(net: torch.nn.Module, frames: torch.Tensor):
    """frames [B, T, ...] → (spikes [T, B, K], membranes [T, B, K])."""
    state = net.init_state()
    spikes, mems = [], []
    for t in range(frames.shape[1]):
        s, m, state = net.step(frames[:, t], state)
        spikes.append(s)
        mems.append(m)
    return torch.stack(spikes), torch.stack(mems)
