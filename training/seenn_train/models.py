"""Spiking networks written one timestep at a time.

Each network splits into
- ``encoder(x)``: the layers before the first spiking neuron (first conv + BN). With direct encoding
  the image is the same at every timestep, so this runs once per input, not T times;
- ``step(e, states)``: one timestep from the encoder output and one membrane per spiking layer to
  this step's logits and the new membranes.

``forward(x, T)`` runs the encoder once and the step T times and returns logits ``[T, B, K]``. The
exported ONNX graphs are exactly ``encoder`` and ``step`` (BatchNorm folded).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .neurons import IF, LIF, QCFS


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=bias), nn.BatchNorm2d(cout))


class StateCursor:
    """Hands each spiking layer its membrane in call order and collects the new ones."""

    def __init__(self, states):
        self.states = states
        self.index = 0
        self.new_states = []

    def __call__(self, neuron: nn.Module, x: torch.Tensor) -> torch.Tensor:
        u = None if self.states is None else self.states[self.index]
        self.index += 1
        out, u_new = neuron(x, u)
        if u_new is not None:
            self.new_states.append(u_new)
        return out


class QCFSAct(QCFS):
    """QCFS with the neuron call signature; an ANN has no state."""

    def forward(self, x, u=None):  # noqa: ARG002 - same signature as the spiking neurons
        return super().forward(x), None


def make_neuron(kind: str, surrogate: str = "dspike", threshold: float = 1.0, levels: int = 8):
    if kind == "lif":
        return LIF(surrogate=surrogate)
    if kind == "qcfs":
        return QCFSAct(levels=levels)
    if kind == "if":
        return IF(threshold)
    raise ValueError(f"unknown neuron kind {kind!r}; accepted: lif, qcfs, if")


class SpikingNet(nn.Module):
    """Common driver: encoder once, step T times."""

    num_classes: int

    def encoder(self, x):
        raise NotImplementedError

    def step(self, e, states=None):
        raise NotImplementedError

    def forward(self, x, timesteps: int):
        e = self.encoder(x)
        states, outputs = None, []
        for _ in range(timesteps):
            logits, states = self.step(e, states)
            outputs.append(logits)
        return torch.stack(outputs)

    def neurons(self):
        return [m for m in self.modules() if isinstance(m, (LIF, IF, QCFSAct))]

    @torch.no_grad()
    def initial_states(self, x):
        """Initial membranes for input ``x`` (their shapes come from one dry step)."""
        was_training = self.training
        self.eval()
        e = self.encoder(x)
        cursor = StateCursor(None)
        self._step(e, cursor)
        self.train(was_training)
        spiking = [m for m in self.neurons() if not isinstance(m, QCFSAct)]
        return [n.initial_state(u) for n, u in zip(spiking, cursor.new_states)]


class VGG28(SpikingNet):
    """The shipped 28×28 network: conv(c)+BN [encoder] → LIF → pool → conv(2c)+BN → LIF → pool →
    conv(4c)+BN → LIF → flatten → FC. With ``neuron='qcfs'`` the same topology is the ANN for
    conversion; with ``neuron='if'`` it is the converted SNN."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, neuron: str = "lif",
                 surrogate: str = "dspike", size: int = 28, levels: int = 8, dropout: float = 0.0):
        super().__init__()
        c = int(width)
        self.num_classes = num_classes
        self.conv1 = conv_bn(in_channels, c)
        self.act1 = make_neuron(neuron, surrogate, levels=levels)
        self.conv2 = conv_bn(c, 2 * c)
        self.act2 = make_neuron(neuron, surrogate, levels=levels)
        self.conv3 = conv_bn(2 * c, 4 * c)
        self.act3 = make_neuron(neuron, surrogate, levels=levels)
        self.pool = nn.AvgPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * c * (size // 4) ** 2, num_classes)

    def encoder(self, x):
        return self.conv1(x)

    def _step(self, e, cursor):
        x = self.pool(cursor(self.act1, e))
        x = self.pool(cursor(self.act2, self.conv2(x)))
        x = cursor(self.act3, self.conv3(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))

    def step(self, e, states=None):
        cursor = StateCursor(states)
        logits = self._step(e, cursor)
        return logits, cursor.new_states


class BasicBlock(nn.Module):
    """SEENN's ResNet-19 block: LIF(BN(conv(LIF(BN(conv(x))))) + shortcut(x)); the shortcut, when the
    shape changes, is AvgPool(stride) → conv1×1 → BN."""

    def __init__(self, cin, cout, stride, surrogate):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.act1 = LIF(surrogate=surrogate)
        self.conv2 = conv_bn(cout, cout)
        self.act2 = LIF(surrogate=surrogate)
        if stride != 1 or cin != cout:
            pool = nn.AvgPool2d(stride) if stride != 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x, cursor):
        out = cursor(self.act1, self.conv1(x))
        return cursor(self.act2, self.conv2(out) + self.shortcut(x))


class ResNet19(SpikingNet):
    """ResNet-19 as in SEENN's code: stem conv3×3(→128w)+BN [encoder] → LIF; stages [3, 3, 2] with
    128/256/512 channels (× ``width``), strides 1/2/2; global average pool → FC."""

    def __init__(self, in_channels=3, num_classes=10, width: float = 1.0, surrogate="dspike"):
        super().__init__()
        chans = [max(1, int(round(c * width))) for c in (128, 256, 512)]
        self.num_classes = num_classes
        self.stem = conv_bn(in_channels, chans[0])
        self.act0 = LIF(surrogate=surrogate)
        blocks, cin = [], chans[0]
        for cout, n, stride in zip(chans, (3, 3, 2), (1, 2, 2)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, surrogate))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def encoder(self, x):
        return self.stem(x)

    def _step(self, e, cursor):
        x = cursor(self.act0, e)
        for block in self.blocks:
            x = block(x, cursor)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def step(self, e, states=None):
        cursor = StateCursor(states)
        logits = self._step(e, cursor)
        return logits, cursor.new_states


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG16(SpikingNet):
    """VGG-16 (cfg D) as in SEENN's code: 13 × [conv3×3(bias)+BN → LIF], M = AvgPool(2), then global
    average pool → FC. The first conv+BN is the encoder."""

    def __init__(self, in_channels=3, num_classes=10, width: float = 1.0, surrogate="dspike"):
        super().__init__()
        self.num_classes = num_classes
        layers, cin = [], in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.AvgPool2d(2))
            else:
                cout = max(1, int(round(v * width)))
                layers += [conv_bn(cin, cout, bias=True), LIF(surrogate=surrogate)]
                cin = cout
        self.first = layers[0]
        self.layers = nn.ModuleList(layers[1:])
        self.fc = nn.Linear(cin, num_classes)

    def encoder(self, x):
        return self.first(x)

    def _step(self, e, cursor):
        x = e
        for layer in self.layers:
            x = cursor(layer, x) if isinstance(layer, LIF) else layer(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def step(self, e, states=None):
        cursor = StateCursor(states)
        logits = self._step(e, cursor)
        return logits, cursor.new_states


class PolicyNet(nn.Module):
    """SEENN-II policy: a small ANN, image → logits over the actions {1..T} (timesteps to run)."""

    def __init__(self, in_channels=1, actions=4, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        )
        self.fc = nn.Linear(4 * width, actions)

    def embed(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x):
        return self.fc(self.embed(x))


class BiasedPolicy(nn.Module):
    """The exported policy graph: the policy's action logits plus a fixed per-action bias (chosen on
    validation), so the server's argmax gives the default operating point."""

    def __init__(self, policy: nn.Module, bias):
        super().__init__()
        self.policy = policy
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32).view(1, -1))

    def forward(self, x):
        return self.policy(x) + self.bias


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv2d directly followed by BatchNorm2d (inside one
    Sequential) replaced by a single Conv2d carrying the folded scale and bias."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        items = list(module._modules.items())
        new, i = [], 0
        while i < len(items):
            name, m = items[i]
            if isinstance(m, nn.Conv2d) and i + 1 < len(items) and isinstance(items[i + 1][1], nn.BatchNorm2d):
                new.append((name, fuse_conv_bn_eval(m, items[i + 1][1])))
                new.append((items[i + 1][0], nn.Identity()))
                i += 2
            else:
                new.append((name, m))
                i += 1
        for name, m in new:
            module._modules[name] = m
    return model


def convert_qcfs(ann: VGG28) -> VGG28:
    """QCFS ANN → IF SNN: same weights, each QCFS(λ) becomes IF(θ = λ, v₀ = 0.5θ, soft reset)."""
    width = ann.conv1[0].out_channels
    size = int(round((ann.fc.in_features / (4 * width)) ** 0.5)) * 4
    snn = VGG28(ann.conv1[0].in_channels, ann.num_classes, width, neuron="if", size=size)
    state = {k: v for k, v in ann.state_dict().items() if not k.endswith(".lam")}
    missing, unexpected = snn.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    for name in ("act1", "act2", "act3"):
        getattr(snn, name).threshold.fill_(float(getattr(ann, name).lam.detach()))
    return snn.eval()
