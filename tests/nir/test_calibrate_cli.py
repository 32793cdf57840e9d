"""`seenn calibrate` and `seenn eval --data` on the committed snnTorch example package, with data
written by numpy (savez and savez_compressed), and every bad DATA refused with what is accepted."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SEENN = ROOT / "target" / "release" / "seenn"
PKG = ROOT / "models" / "snntorch-fashion-mnist"


def seenn(*args, cwd=None):
    return subprocess.run([str(SEENN), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture()
def pkg(tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(PKG, dst)
    return dst


def frames(n=60, seed=0):
    """The package's own golden samples (true labels) repeated with fresh random frames around them."""
    golden = json.loads((PKG / "golden.json").read_text())
    xs = np.stack([np.load(PKG / s["file"]) for s in golden["samples"]])
    ys = np.array([s["label"] for s in golden["samples"]])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(xs), n)
    flip = rng.random((n, *xs.shape[1:])) < 0.02
    return (xs[idx] ^ flip).astype(bool), ys[idx]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflate"])
def test_calibrate_writes_the_table_the_default_and_golden_samples(pkg, tmp_path, save):
    x, y = frames()
    save(tmp_path / "val.npz", x=x, y=y)
    res = seenn("calibrate", pkg, "--data", tmp_path / "val.npz", "--golden", 5, "--quiet")
    assert res.returncode == 0, res.stderr
    cal = json.loads((pkg / "calibration.json").read_text())
    assert cal["samples"] == 60 and len(cal["accuracy_per_t"]) == 16
    assert cal["split"] == "user data: val.npz"
    rows = {(r["temperature"]) for r in cal["temperature_sweep"]}
    assert {0.05, 1.0, 8.0} <= rows
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["exit"]["default_alpha"] == cal["chosen_alpha"]
    assert manifest["exit"]["temperature"] == cal["temperature"]
    assert manifest["source"]["dialect"] == "snntorch"  # fields calibrate does not own are kept
    golden = json.loads((pkg / "golden.json").read_text())
    assert [s["label"] for s in golden["samples"]] == y[:5].tolist()
    assert np.array_equal(np.load(pkg / golden["samples"][0]["file"]), x[0])
    card = (pkg / "MODEL_CARD.md").read_text()
    assert card.count("## Calibration") == 1 and "## Import check" in card
    assert (pkg / "accuracy_vs_timesteps.svg").read_text().startswith("<svg")
    # The chosen setting, replayed from the golden logits, exits where golden.json says.
    for s in golden["samples"]:
        z = np.cumsum(np.asarray(s["logits"], np.float64), axis=0) / cal["temperature"]
        p = np.exp(z - z.max(1, keepdims=True))
        conf = (p / p.sum(1, keepdims=True)).max(1)
        fire = np.flatnonzero(conf[:-1] > cal["chosen_alpha"])
        assert s["exit_timestep"] == (fire[0] + 1 if fire.size else len(z))


def test_eval_on_the_same_data_reproduces_the_calibrated_default(pkg, tmp_path):
    x, y = frames(n=40, seed=1)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    assert seenn("calibrate", pkg, "--data", tmp_path / "val.npz", "--quiet").returncode == 0
    res = seenn("eval", "--model", pkg, "--data", tmp_path / "val.npz", "--json", "--quiet")
    assert res.returncode == 0, res.stderr
    rules = {r["rule"]: r for r in json.loads(res.stdout)["rules"]}
    cal = json.loads((pkg / "calibration.json").read_text())
    row = next(r for r in cal["alpha_sweep"] if r["alpha"] == cal["chosen_alpha"])
    assert rules["confidence"]["accuracy"] == pytest.approx(row["accuracy"], abs=1e-9)
    assert rules["confidence"]["avg_timesteps"] == pytest.approx(row["avg_timesteps"], abs=1e-9)
    assert rules["fixed"]["accuracy"] == pytest.approx(cal["accuracy_per_t"][-1], abs=1e-9)


@pytest.mark.parametrize("case, message", [
    ("not-npz", "not an .npz (zip) file"),
    ("no-y", "no `y` array"),
    ("shape", "x has shape [4, 16, 28, 28]; model snntorch-fashion-mnist takes [N, t, 1, 28, 28] with 1 ≤ t ≤ 16"),
    ("too-many-frames", "takes [N, t, 1, 28, 28] with 1 ≤ t ≤ 16"),
    ("label", "label 10 is out of range: the model has 10 classes"),
    ("count", "x holds 4 samples but y 3 labels"),
    ("dtype", "dtype '<f8'; accepted: .npy version 1.0, 2.0 or 3.0, dtype '<f4' (float32), '|u1' (uint8) or '|b1' (bool)"),
    ("folder", "a folder of images, but model snntorch-fashion-mnist takes tensors"),
])
def test_bad_data_is_refused_with_what_is_accepted_and_the_package_is_untouched(pkg, tmp_path, case, message):
    before = {p.name: p.read_bytes() for p in pkg.iterdir() if p.is_file()}
    data = tmp_path / "data.npz"
    x, y = np.zeros((4, 16, 1, 28, 28), bool), np.zeros(4, np.int64)
    if case == "not-npz":
        data.write_text("x,y\n1,2\n")
    elif case == "no-y":
        np.savez(data, x=x)
    elif case == "shape":
        np.savez(data, x=np.zeros((4, 16, 28, 28), bool), y=y)
    elif case == "too-many-frames":
        np.savez(data, x=np.zeros((4, 17, 1, 28, 28), bool), y=y)
    elif case == "label":
        np.savez(data, x=x, y=np.array([0, 1, 2, 10]))
    elif case == "count":
        np.savez(data, x=x, y=y[:3])
    elif case == "dtype":
        np.savez(data, x=x.astype(np.float64), y=y)
    elif case == "folder":
        data = tmp_path / "images"
        (data / "a").mkdir(parents=True)
    for cmd in (["calibrate", pkg, "--data", data], ["eval", "--model", pkg, "--data", data, "--quiet"]):
        res = seenn(*cmd)
        assert res.returncode != 0
        assert message in res.stderr, res.stderr
    assert {p.name: p.read_bytes() for p in pkg.iterdir() if p.is_file()} == before
