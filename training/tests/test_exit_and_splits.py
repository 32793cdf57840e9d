"""The learned exit rule, SEENN-II bias curves, the held-out split and exact resumption."""


import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seenn_train import data, seenn
from seenn_train.__main__ import main
from seenn_train.exit_head import (
    EXIT_INPUTS,
    EXIT_OUTPUT,
    ExitHead,
    head_scores,
    score_exit,
    stop_targets,
    threshold_sweep,
    train_exit_head,
)
from seenn_train.export import ExitGraph, onnx_export


def test_holdout_split_is_disjoint_and_keeps_the_validation_images():
    split = data.Split(np.zeros((1000, 1, 2, 2), np.uint8), np.arange(1000))
    train, hold, val = data.train_holdout_val_split(split, 100, 150, seed=0)
    t, h, v = set(train.labels), set(hold.labels), set(val.labels)
    assert len(t) == 750 and len(h) == 150 and len(v) == 100
    assert not (t & h) and not (t & v) and not (h & v) and len(t | h | v) == 1000
    _, old_val = data.train_val_split(split, 100, seed=0)
    assert old_val.labels.tolist() == val.labels.tolist()  # the validation split did not move
    idx = data.split_indices(1000, 100, 150, seed=0)
    assert idx["holdout"].tolist() == hold.labels.tolist()


def test_holdout_split_on_the_real_training_file():
    # scripts/setup.sh installs Debian's dataset-fashion-mnist, which every make target runs first.
    full = data.load("fashion-mnist", None, train=True)
    idx = data.split_indices(len(full), 5000, 5000, seed=0)
    assert len(idx["train"]) == 50000
    assert not set(idx["train"]) & set(idx["holdout"]) and not set(idx["train"]) & set(idx["val"])
    assert not set(idx["holdout"]) & set(idx["val"])


def test_resume_gives_the_same_state(tmp_path):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    common = ["--limit", "300", "--val-size", "200", "--holdout-size", "100", "--epochs", "2", "--width", "4",
              "--threads", "1"]
    main(["train", "--out", str(straight), *common])
    main(["train", "--out", str(pieces), "--stop-after", "1", *common])
    with pytest.raises(FileExistsError):  # never overwrite a run by accident
        main(["train", "--out", str(pieces), *common])
    main(["train", "--out", str(pieces), "--resume", *common])
    a, b = torch.load(straight / "snn.pt"), torch.load(pieces / "snn.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert [h["epoch"] for h in b["history"]] == [1, 2]


def test_exit_onnx_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    head = ExitHead(10, 4, temperature=1.0, hidden=16).eval()
    onnx_export(ExitGraph(head), (torch.randn(2, 10), torch.ones(2, 1)), tmp_path / "exit.onnx", list(EXIT_INPUTS),
                [EXIT_OUTPUT])
    sess = ort.InferenceSession(str(tmp_path / "exit.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["aggregate", "timestep"]
    assert [o.name for o in sess.get_outputs()] == ["stop_probability"]
    rng = np.random.RandomState(0)
    for t in (1, 2, 3, 4):
        agg = (rng.randn(37, 10) * 4 * t).astype(np.float32)
        ts = np.full((37, 1), t, np.float32)
        got = sess.run(["stop_probability"], {"aggregate": agg, "timestep": ts})[0]
        with torch.no_grad():
            want = head(torch.from_numpy(agg), torch.from_numpy(ts)).numpy()
        assert got.shape == (37, 1)
        assert np.abs(got - want).max() < 1e-5
        assert ((got >= 0) & (got <= 1)).all()


def test_stop_targets():
    c = np.array([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 1]], bool)
    assert stop_targets(c, "correct").tolist() == c.astype(float).tolist()
    assert stop_targets(c, "no_regret").tolist() == [
        [1, 1, 1, 1],  # right all along
        [0, 1, 1, 1],  # stopping at t=1 loses a right answer
        [1, 1, 1, 1],  # never right: stopping early costs nothing
        [1, 1, 1, 1],  # right at t=1 only: stop there
        [0, 1, 0, 1],
    ]


def test_score_exit_is_strict_and_forced_at_max_timesteps():
    z = np.zeros((2, 3, 2), np.float32)
    z[:, :, 0] = 1.0
    score = np.array([[0.5, 0.7, 0.1], [0.2, 0.3, 0.4]])
    exit_t, pred = score_exit(z, score, 0.5)
    assert exit_t.tolist() == [2, 3] and pred.tolist() == [0, 0]  # 0.5 is not > 0.5
    exit_t, _ = score_exit(z, score, 0.9, max_timesteps=2)
    assert exit_t.tolist() == [2, 2]


def test_exit_head_learns_to_stop_confident_samples():
    rng = np.random.RandomState(0)
    n, t_max, k = 600, 4, 3
    y = rng.randint(0, k, n)
    z = rng.randn(n, t_max, k).astype(np.float32)
    easy = rng.rand(n) < 0.5
    z[easy, :, :] += 6.0 * np.eye(k)[y[easy]][:, None, :]  # easy samples are right and confident from t=1
    head = train_exit_head(z, y, 1.0, target="correct", epochs=30, hidden=16)
    s = head_scores(head, z)
    assert s[easy, 0].mean() > s[~easy, 0].mean() + 0.3
    rows = threshold_sweep(z, y, s, [0.2, 0.5, 0.8])
    steps = [r["avg_timesteps"] for r in rows]
    assert steps == sorted(steps) and all(0 <= r["agreement_with_full_t"] <= 1 for r in rows)


def test_policy_bias_sweep_and_supervised_targets():
    c = np.array([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]], bool)
    assert seenn.earliest_correct_action(c).tolist() == [1, 0, 0, 2]
    rng = np.random.RandomState(1)
    z, y = rng.randn(50, 4, 5).astype(np.float32), rng.randint(0, 5, 50)
    logits = rng.randn(50, 4)
    rows = seenn.bias_sweep(z, y, logits)
    steps = [r["avg_timesteps"] for r in rows]
    assert steps == sorted(steps) and steps[0] < 1.2 and steps[-1] > 3.8
    zero = [r for r in rows if r["bias_scale"] == 0.0][0]
    assert zero["action_bias"] == [0.0, 0.0, 0.0, 0.0]
    assert zero["avg_timesteps"] == pytest.approx((logits.argmax(1) + 1).mean())


def test_agreement_with_full_t():
    z = np.zeros((2, 2, 2), np.float32)
    z[0, :, 0] = 1.0
    z[1, 0, 0], z[1, 1, 1] = 1.0, 3.0  # sample 1 flips from class 0 to class 1
    assert seenn.agreement_with_full_t(z, np.array([0, 0])) == 0.5
    assert seenn.alpha_sweep(z, np.array([0, 1]), 1.0, alphas=[0.99])[0]["agreement_with_full_t"] == 1.0


def test_anneal_to_shortens_a_resumed_run(tmp_path):
    out = tmp_path / "run"
    common = ["--limit", "300", "--val-size", "200", "--holdout-size", "100", "--epochs", "4", "--width", "4",
              "--threads", "1", "--out", str(out)]
    main(["train", "--stop-after", "1", *common])
    main(["train", "--resume", "--anneal-to", "3", "--stop-after", "2", *common])
    mid = torch.load(out / "snn.pt")
    assert mid["epoch"] == 2 and mid["anneal"]["to_epoch"] == 3 and mid["total_epochs"] == 4
    main(["train", "--resume", *common])  # a later resume follows the stored, shortened schedule
    end = torch.load(out / "snn.pt")
    assert end["epoch"] == 3 and [h["epoch"] for h in end["history"]] == [1, 2, 3]
    assert end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    meta = json.loads((out / "run.json").read_text())
    assert meta["anneal"]["to_epoch"] == 3 and meta["epochs_done"] == 3
