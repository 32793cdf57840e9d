"""Every benchmark suite still runs: `SMOKE=1 benchmarks/run.sh SUITE` (tiny durations, one round)
against the release binary, each writing its summary.json; the gpu suite, on a machine without a
CUDA device, says so and exits 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted(p.stem for p in (ROOT / "benchmarks" / "suites").glob("*.sh"))
BIN = ROOT / "target" / "release" / "seenn"


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.startswith("GPU ")


def test_the_list_names_every_suite():
    out = subprocess.run([str(ROOT / "benchmarks" / "run.sh"), "--list"], capture_output=True, text=True, check=True)
    listed = [line.split()[0] for line in out.stdout.splitlines()]
    assert listed == SUITES
    for name in ("headline", "batching", "workers", "early-exit", "latency", "overload", "adaptive", "shadow", "gpu", "byo"):
        assert name in SUITES


@pytest.mark.parametrize("suite", SUITES)
def test_suite_runs(suite, tmp_path):
    assert BIN.exists(), "needs the release build (make build runs before these tests in make test)"
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path)}
    for var in ("NICE", "DURATION", "ROUNDS", "LIMIT", "MODELS", "MODEL", "BIN", "PARTS", "RESULTS", "WRITE"):
        env.pop(var, None)
    run = subprocess.run([str(ROOT / "benchmarks" / "run.sh"), suite], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / suite / "summary.json").read_text())
    assert summary["suite"] == suite
    assert summary["host"]["cores"] >= 1
    if suite == "gpu" and not has_gpu():
        assert summary["skipped"].startswith("no CUDA device")
        assert "skipped: no CUDA device" in run.stdout
        return
    reports = [p for p in (tmp_path / suite).glob("*.json") if p.name != "summary.json"]
    assert reports, f"{suite} wrote no reports"
    if suite == "headline":
        # A smoke run neither touches BENCHMARKS.md nor the committed results.
        assert summary["models"]["fashion-mnist"]["early_exit"]["realised"] > 0
        assert "python" in summary["models"]["fashion-mnist"]
