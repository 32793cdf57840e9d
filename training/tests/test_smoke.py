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


def test_direct_policy_and_export(work):
    run = work / "direct"
    main(["train", "--limit", "2000", "--epochs", "1", "--out", str(run), "--width", "8", "--threads", "2"])
    main(["policy", "--run", str(run), "--limit", "2000", "--epochs", "1", "--betas", "0.1,0.5", "--threads", "2"])
    main(["export", "--run", str(run), "--limit", "2000", "--out", str(work / "pkg-direct"), "--golden", "8"])
    manifest, report = _check_package(work / "pkg-direct", expect_policy=True)
    assert manifest["timesteps"] == 4 and "seenn_ii" in report
    assert 0.3 < report["accuracy_per_t"][-1] <= 1.0  # one epoch on 2k images learns something


def test_training_resumes_from_checkpoint(work):
    run = work / "resume"
    main(["train", "--limit", "500", "--epochs", "1", "--out", str(run), "--width", "4"])
    main(["train", "--limit", "500", "--epochs", "2", "--out", str(run), "--width", "4"])
    meta = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2]


def test_joint_fine_tuning(work):
    run = work / "direct"
    main(["policy", "--run", str(run), "--limit", "500", "--epochs", "1", "--betas", "0.2", "--joint"])
    assert json.loads((run / "policy_sweep.json").read_text())["chosen_beta"] == 0.2


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
