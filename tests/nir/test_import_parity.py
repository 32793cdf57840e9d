"""Imported NIR graphs against the frameworks' own simulations, per step, through `seenn simulate`.

Each folder of ``tests/nir/graphs/`` holds a graph, random inputs and the framework's own per-step
output and membranes (``make_references.py`` regenerates them). The test imports the graph with
``seenn-train import-nir``'s code under the folder's dialect, runs the package through the serving
engine (``seenn simulate``, no exit), and asserts:
- the per-step outputs equal the framework's exactly (a membrane readout within 5e-5), except on a
  row from the step where one of its membranes sat within float32 rounding (1e-5 relative) of a
  threshold (printed with its margin);
- every membrane the framework recorded within 5e-5 absolute on the rows that agree.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from seenn_train import nir_import as ni

ROOT = Path(__file__).resolve().parents[2]
SEENN = ROOT / "target" / "release" / "seenn"
GRAPHS = sorted(p.parent for p in (ROOT / "tests" / "nir" / "graphs").glob("*/graph.nir"))


def simulate(pkg: Path, x: np.ndarray, tmp: Path):
    np.save(tmp / "x.npy", x.astype(np.float32))
    res = subprocess.run([str(SEENN), "simulate", "--model", str(pkg), "--input", str(tmp / "x.npy"),
                          "--out", str(tmp / "y.npy"), "--states-out", str(tmp / "state")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    n_states = len(json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["states"])
    return np.load(tmp / "y.npy"), [np.load(tmp / f"state{i}.npy") for i in range(n_states)]


def test_the_graphs_cover_every_supported_node_recurrence_fan_in_and_every_dialect():
    kinds, dialects, recurrent = set(), set(), False
    for g in GRAPHS:
        meta = json.loads((g / "meta.json").read_text())
        dialects.add(meta["dialect"])
        recurrent |= bool(meta.get("recurrent"))
        graph = ni.read_graph(g / "graph.nir")
        plan = ni.plan_graph(graph, ni.DIALECTS[meta["dialect"]])
        kinds |= set(plan.kinds.values())
        if any(len(v) > 1 for v in plan.inputs.values()):
            kinds.add("fan-in")
    assert len(GRAPHS) >= 8
    assert dialects == {"snntorch", "norse", "sinabs"}, dialects
    assert recurrent
    assert not (set(ni.SUPPORTED) - kinds), f"node types no graph covers: {sorted(set(ni.SUPPORTED) - kinds)}"
    assert "fan-in" in kinds


@pytest.mark.parametrize("folder", GRAPHS, ids=[g.name for g in GRAPHS])
def test_imported_graph_matches_the_framework_step_by_step(folder: Path, tmp_path: Path):
    meta = json.loads((folder / "meta.json").read_text())
    x = np.load(folder / "input.npy").astype(np.float32)
    expected = np.load(folder / "expected.npz")
    t_max, rows = x.shape[:2]
    o = ni.ImportOptions(dialect=meta["dialect"], timesteps=t_max, input_shape=tuple(x.shape[2:]), dtype="float32",
                         time="per_step")
    pkg = tmp_path / "pkg"
    manifest = ni.import_nir(folder / "graph.nir", pkg, o, log=lambda *_: None)
    y, states = simulate(pkg, x, tmp_path)
    want = expected["output"].reshape(t_max, rows, -1)
    assert y.shape == want.shape, (y.shape, want.shape)

    # Where float32 rounding may decide a spike: the reference's margins, per step and row.
    dialect = ni.DIALECTS[meta["dialect"]]
    plan = ni.infer(ni.plan_graph(ni.read_graph(folder / "graph.nir"), dialect), dialect, tuple(x.shape[2:]))
    _, _, margins = ni.reference_run(plan, dialect, x)
    # Spikes (integer outputs) must be equal; a membrane readout (LI) is held to 5e-5 like any membrane.
    spiking = bool(np.all(want == np.round(want)))
    differs = ((y != want) if spiking else (np.abs(y - want) > 5e-5)).reshape(t_max, rows, -1).any(-1)
    agree = np.ones((t_max, rows), bool)
    excused = []
    for r in range(rows):
        bad = np.flatnonzero(differs[:, r])
        if bad.size:
            t = int(bad[0])
            near = float(margins[: t + 1, r].min())
            assert near < ni.FLIP_MARGIN, (
                f"{folder.name}: row {r} differs from {meta['framework']} at step {t + 1} "
                f"(max |Δ| {np.abs(y[t, r] - want[t, r]).max():.3g}); nearest membrane to a threshold "
                f"{near:.3g} relative, not within float32 rounding")
            excused.append((r, t + 1, near))
            agree[t:, r] = False
    assert agree.mean() >= 0.75, f"{folder.name}: only {agree.mean():.0%} of (step, row) pairs comparable"
    print(f"{folder.name}: {agree.sum()} of {agree.size} (step, row) outputs equal; flips at float32 rounding: "
          f"{excused}; nearest membrane to a threshold: {margins.min():.2g} relative")

    module = ni.StepModule(plan, dialect)
    names = [s["name"] for s in manifest["graphs"]["step"]["states"]]
    compared = 0
    for key in expected.files:
        quantity, _, node = key.partition(":")
        if quantity not in ("v", "i"):  # the output, or a framework's other run kept for the record
            continue
        name = f"{node}.{quantity}"
        assert name in names, f"{folder.name}: the framework recorded {key}, the package has states {names}"
        i = names.index(name)
        got = states[i] + (0 if module.offsets[i] is None else module.offsets[i].numpy())
        ref = expected[key].reshape(got.shape)
        diff = np.abs(got - ref)[agree]
        assert diff.max() <= 5e-5, f"{folder.name}: {key} differs by {diff.max():.3g} on agreeing rows"
        print(f"  {key}: max |Δ| {diff.max():.2g}")
        compared += 1
    assert compared >= 1, f"{folder.name}: no membrane recorded"
