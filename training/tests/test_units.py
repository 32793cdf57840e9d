"""Unit tests: neurons, surrogates, TET, AET, the SEENN-II loss, loaders, the exit rule."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from seenn_train import data, seenn
from seenn_train.models import VGG16, VGG28, ResNet19, convert_qcfs, fold_batchnorm
from seenn_train.neurons import IF, LIF, QCFS, DSpike, Triangle
from seenn_train.train import tet_loss


def test_lif_forward_values():
    lif = LIF().eval()
    x = torch.tensor([0.6, 1.2, 0.3])
    s1, u1 = lif(x, None)  # u = x
    assert s1.tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(u1, torch.tensor([0.6, 0.0, 0.3]))  # hard reset of the spiking neuron
    s2, u2 = lif(x, u1)  # u = 0.5 u + x
    assert torch.allclose(u2 * (1 - s2) + s2 * 0, u2)
    assert s2.tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(u2, torch.tensor([0.9, 0.0, 0.45]))
    s3, _ = lif(x, u2)  # 0.45 + 0.6 = 1.05 >= 1
    assert s3.tolist() == [1.0, 1.0, 0.0]


def test_lif_fires_at_exactly_threshold():
    s, u = LIF().eval()(torch.tensor([1.0]), None)
    assert s.item() == 1.0 and u.item() == 0.0


def test_dspike_surrogate_gradient_formula():
    x = torch.tensor([-0.5, 0.0, 0.2, 3.5], requires_grad=True)
    DSpike.apply(x, 3.0).sum().backward()
    g = 3.0
    want = g * (1 - torch.tanh(g * x.detach()) ** 2) / (2 * np.tanh(g * g))
    want[3] = 0.0  # outside |x| < γ
    assert torch.allclose(x.grad, want, atol=1e-6)


def test_triangle_surrogate_gradient_formula():
    x = torch.tensor([-0.5, 0.0, 0.9, 1.5], requires_grad=True)
    Triangle.apply(x, 1.0).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.5, 1.0, 0.1, 0.0]), atol=1e-6)


def test_gradient_flows_through_hard_reset():
    lif = LIF(surrogate="triangle").train()
    x = torch.tensor([0.8], requires_grad=True)
    _, u = lif(x, None)
    s, _ = lif(x, u)
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().item() > 0


def test_if_soft_reset_and_initial_membrane():
    neuron = IF(threshold=2.0)
    out, v = neuron(torch.tensor([1.2]), None)  # v = 0.5 + 0.6 = 1.1 > 1 → spike, v = 0.1
    assert out.item() == 2.0 and abs(v.item() - 0.1) < 1e-6
    out, v = neuron(torch.tensor([0.0]), v)
    assert out.item() == 0.0


def test_qcfs_levels_and_clip():
    q = QCFS(levels=4, init_lambda=2.0)
    y = q(torch.tensor([-1.0, 0.3, 0.55, 5.0]))
    assert torch.allclose(y, torch.tensor([0.0, 0.5, 0.5, 2.0]))


def test_tet_loss_matches_definition():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 4)
    y = torch.randint(0, 4, (5,))
    ce = sum(torch.nn.functional.cross_entropy(z[t], y) for t in range(3)) / 3
    mse = ((z - 1.0) ** 2).mean()
    assert torch.allclose(tet_loss(z, y), (1 - 1e-3) * ce + 1e-3 * mse)


def _hand_logits():
    # 4 samples, T = 3, 2 classes; labels all 0.
    z = np.zeros((4, 3, 2), np.float32)
    z[0] = [[2, 0], [2, 0], [2, 0]]    # right from t=1
    z[1] = [[0, 1], [3, 0], [0, 0]]    # right from t=2
    z[2] = [[0, 1], [0, 1], [3, 0]]    # right at t=3
    z[3] = [[0, 5], [0, 5], [0, 5]]    # never right
    return z, np.zeros(4, np.int64)


def test_aet_on_hand_made_example():
    z, y = _hand_logits()
    # |C1|=1, |C2|=2, |C3|=3, |W|=1: (1 + 2·1 + 3·1 + 3·1) / 4 = 9/4
    assert seenn.aet(z, y) == pytest.approx(9 / 4)
    assert seenn.empirical_earliest(z, y) == pytest.approx((1 + 2 + 3 + 3) / 4)
    assert seenn.accuracy_per_t(z, y) == pytest.approx([0.25, 0.5, 0.75])
    # Oracle: all exit at t=1 (1 right), then the one first right at t=2 (+1 step), then at t=3
    # (+2 steps); the sample never right stays at t=1 instead of costing T as in AET.
    curve = seenn.oracle_curve(z, y)
    assert [r["accuracy"] for r in curve] == pytest.approx([0.25, 0.5, 0.75])
    assert [r["avg_timesteps"] for r in curve] == pytest.approx([1.0, 1.25, 1.75])


def test_exit_rule_at_exactly_alpha_and_at_T():
    z = np.array([[[0.0, 0.0], [np.log(3.0), 0.0]]], np.float32)  # t=1 score 0.5, t=2 score 0.75
    exit_t, _ = seenn.confidence_exit(z, 0.5)
    assert exit_t[0] == 2  # 0.5 is not > 0.5
    exit_t, _ = seenn.confidence_exit(z, 0.49)
    assert exit_t[0] == 1
    exit_t, _ = seenn.confidence_exit(z, 0.99)
    assert exit_t[0] == 2  # forced at T


def test_policy_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    correct = torch.rand(6, 4) > 0.4
    weight = seenn.class_balance_weight(correct[:, 0].double(), 0.7)
    loss = seenn.policy_loss(logits, correct, weight, beta=0.3)
    loss.backward()
    eps = 1e-6
    num = torch.zeros_like(logits)
    for i in range(6):
        for j in range(4):
            d = torch.zeros_like(logits)
            d[i, j] = eps
            num[i, j] = (seenn.policy_loss(logits.detach() + d, correct, weight, 0.3)
                         - seenn.policy_loss(logits.detach() - d, correct, weight, 0.3)) / (2 * eps)
    assert torch.allclose(logits.grad, num, atol=1e-7)


def test_policy_loss_value():
    logits = torch.tensor([[0.0, 0.0]])
    correct = torch.tensor([[True, False]])
    loss = seenn.policy_loss(logits, correct, torch.ones(1), beta=1.0)
    # π = (0.5, 0.5): 0.5·(−1) + 0.5·(1) = 0
    assert loss.item() == pytest.approx(0.0)
    w = seenn.class_balance_weight(torch.tensor([1.0, 0.0]), 0.8)
    assert w.tolist() == pytest.approx([1.0, 4.0])


def _write_idx(path, arr, code):
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())


def test_idx_loader(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 7], np.uint8), 0x08)
    split = data.load_idx_dataset(tmp_path, train=True)
    assert split.images.shape == (2, 1, 28, 28) and split.labels.tolist() == [3, 7]
    assert (split.images[1, 0] == imgs[1]).all()
    (tmp_path / "bad").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError):
        data.read_idx(tmp_path / "bad")


def test_cifar10_loader_on_a_tiny_fixture(tmp_path):
    rng = np.random.RandomState(0)
    for i in range(1, 6):
        batch = {b"data": rng.randint(0, 256, (3, 3072)).astype(np.uint8), b"labels": [i % 10, 1, 2]}
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [4, 5]}, f)
    train = data.load_cifar10(tmp_path, train=True)
    test = data.load_cifar10(tmp_path, train=False)
    assert train.images.shape == (15, 3, 32, 32) and test.labels.tolist() == [4, 5]


def test_train_val_split_is_fixed_and_disjoint():
    split = data.Split(np.zeros((100, 1, 2, 2), np.uint8), np.arange(100))
    a_train, a_val = data.train_val_split(split, 10, seed=0)
    b_train, b_val = data.train_val_split(split, 10, seed=0)
    assert a_val.labels.tolist() == b_val.labels.tolist()
    assert not set(a_val.labels) & set(a_train.labels) and len(a_train) == 90


@pytest.mark.parametrize("cls,kw", [(ResNet19, {"width": 0.0625}), (VGG16, {"width": 0.0625})])
def test_cifar_architectures_shapes_and_folding(cls, kw):
    torch.manual_seed(0)
    net = cls(3, 10, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    z = net(x, 2)
    assert z.shape == (2, 2, 10)
    folded = fold_batchnorm(net)
    assert torch.allclose(folded(x, 2), z, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_encoder_runs_once_per_input():
    net = VGG28(width=4).eval()
    calls = []
    net.conv1.register_forward_hook(lambda *a: calls.append(1))
    net(torch.randn(1, 1, 28, 28), 4)
    assert len(calls) == 1


def test_conversion_keeps_weights_and_sets_thresholds():
    ann = VGG28(width=4, neuron="qcfs").eval()
    ann.act2.lam.data.fill_(2.5)
    snn = convert_qcfs(ann)
    assert float(snn.act2.threshold) == 2.5
    assert torch.equal(snn.conv2[0].weight, ann.conv2[0].weight)
