"""Smoke runs of every path on ~2k Fashion-MNIST samples: train → export → load in ONNX Runtime."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seenn_train import data
from seenn_train.__main__ import main
from seenn_train.export import OrtPackage
from seenn_train.train import Normalizer


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke")


def _check_package(pkg_dir: Path, expect_policy: bool):
    manifest = json.loads((pkg_dir / "manifest.json").read_text())
    for f in ("encoder.onnx", "step.onnx", "calibration.json", "golden.json", "MODEL_CARD.md",
              "accuracy_vs_timesteps.png"):
        assert (pkg_dir / f).exists(), f
    assert ("policy" in manifest["graphs"]) == expect_policy
    golden = json.loads((pkg_dir / "golden.json").read_text())
    pkg = OrtPackage(pkg_dir, manifest)
    # The golden logits reproduce from the PNG files through ONNX Runtime.
    from PIL import Image

    imgs = np.stack([np.asarray(Image.open(pkg_dir / s["file"]))[None] for s in golden["samples"]])
    split = data.Split(imgs.astype(np.uint8), np.array([s["label"] for s in golden["samples"]]))
    x = Normalizer("fashion-mnist")(split.images).numpy()
    z = np.concatenate([pkg.logits(x[i:i + 1], manifest["timesteps"]) for i in range(len(x))])  # batch 1, as golden
    want = np.array([s["logits"] for s in golden["samples"]])
    assert np.abs(z - want).max() < 1e-4
    report = json.loads((pkg_dir / "report.json").read_text())
    assert report["parity"]["same_class"] >= 0.999
    return manifest, report


def test_direct_policy_exit_head_and_export(work):
    run = work / "direct"
    main(["train", "--limit", "2000", "--epochs", "1", "--out", str(run), "--width", "8", "--threads", "2"])
    main(["exit-head", "--run", str(run), "--limit", "2000", "--epochs", "2", "--holdout-copies", "1"])
    main(["policy", "--run", str(run), "--limit", "2000", "--epochs", "1", "--backbone-epochs", "1", "--betas", "0.5",
          "--holdout-copies", "1", "--variants", "rl-holdout,sup-holdout,sup-rl-holdout,pretrained-sup", "--threads", "2"])
    sweep = json.loads((run / "policy_sweep.json").read_text())
    assert [v["variant"] for v in sweep["variants"]] == ["rl-holdout", "sup-holdout", "sup-rl-holdout", "pretrained-sup"]
    main(["export", "--run", str(run), "--limit", "2000", "--out", str(work / "pkg-direct"), "--golden", "8"])
    pkg_dir = work / "pkg-direct"
    manifest, report = _check_package(pkg_dir, expect_policy=True)
    assert manifest["timesteps"] == 4 and "seenn_ii" in report and "learned" in report
    assert 0.3 < report["accuracy_per_t"][-1] <= 1.0  # one epoch on 2k images learns something
    assert manifest["format_version"] == 2
    assert manifest["graphs"]["exit"] == {"file": "exit.onnx", "aggregate_input": "aggregate",
                                          "timestep_input": "timestep", "output": "stop_probability"}
    threshold = manifest["exit"]["default_threshold"]
    cal = json.loads((pkg_dir / "calibration.json").read_text())
    assert cal["learned"]["chosen_threshold"] == threshold
    assert all("agreement_with_full_t" in r for r in cal["alpha_sweep"] + cal["learned"]["threshold_sweep"])
    assert any(r["action_bias"] == [0.0] * 4 for r in cal["policy"]["bias_sweep"])
    # The learned golden fields reproduce through exit.onnx from the golden logits.
    golden = json.loads((pkg_dir / "golden.json").read_text())
    assert golden["learned_threshold"] == threshold
    z = np.array([s["logits"] for s in golden["samples"]], np.float32)
    scores = OrtPackage(pkg_dir, manifest).exit_scores(z, batch=1)
    want = np.array([s["learned_scores"] for s in golden["samples"]])
    assert np.abs(scores - want).max() < 1e-5
    for s, row in zip(golden["samples"], scores):
        fire = [t + 1 for t in range(4) if row[t] > threshold] + [4]
        assert s["learned_exit_timestep"] == fire[0]
        assert s["learned_class_id"] == int(np.cumsum(np.array(s["logits"], np.float64), 0)[fire[0] - 1].argmax())


def test_training_resumes_from_checkpoint(work):
    run = work / "resume"
    main(["train", "--limit", "500", "--epochs", "2", "--stop-after", "1", "--out", str(run), "--width", "4"])
    main(["train", "--limit", "500", "--epochs", "2", "--resume", "--out", str(run), "--width", "4"])
    meta = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2]


def test_joint_fine_tuning(work):
    run = work / "direct"
    main(["policy", "--run", str(run), "--limit", "500", "--epochs", "1", "--betas", "0.2", "--joint",
          "--variants", "sup-holdout", "--holdout-copies", "0"])
    sweep = json.loads((run / "policy_sweep.json").read_text())
    assert [v["variant"] for v in sweep["variants"]] == ["joint", "sup-holdout"]
    assert sweep["variants"][0]["beta"] == 0.2


def test_qcfs_conversion_and_export(work):
    run = work / "qcfs"
    main(["convert", "--limit", "2000", "--epochs", "1", "--timesteps", "8", "--out", str(run), "--width", "8"])
    main(["export", "--run", str(run), "--limit", "2000", "--out", str(work / "pkg-qcfs"), "--golden", "8"])
    manifest, report = _check_package(work / "pkg-qcfs", expect_policy=False)
    assert manifest["neuron"]["kind"] == "if" and manifest["exit"]["temperature"] == 8.0
    assert manifest["graphs"]["step"]["states"][0]["initial_value"] == 0.5


def test_bench_model_export(work):
    out = work / "bench"
    main(["bench-model", "--arch", "resnet19", "--width", "0.0625", "--golden", "4", "--out", str(out)])
    m = json.loads((out / "manifest.json").read_text())
    assert m["input"]["channels"] == 3 and len(m["graphs"]["step"]["states"]) == 17
    shutil.rmtree(out)
