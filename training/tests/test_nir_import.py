"""import-nir: graphs built with `nir`, every refusal with its message, and nothing left on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nir
import numpy as np
import pytest

from seenn_train import nir_import as ni


def lif(n, **kw):
    args = dict(tau=np.full(n, 1e-3), r=np.full(n, 10.0), v_leak=np.zeros(n), v_threshold=np.ones(n))
    args.update(kw)
    return nir.LIF(**args)


def mlp(n_in=6, hidden=5, out=3, **lif_kw) -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    return nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([n_in])}),
            "fc1": nir.Affine(weight=rng.normal(size=(hidden, n_in)), bias=rng.normal(size=hidden) * 0.1),
            "lif1": lif(hidden, **lif_kw),
            "fc2": nir.Linear(weight=rng.normal(size=(out, hidden))),
            "lif2": lif(out),
            "output": nir.Output(output_type={"output": np.array([out])}),
        },
        edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("lif2", "output")],
    )


def write(graph, path: Path) -> Path:
    nir.write(str(path), graph)
    return path


def opts(**kw) -> ni.ImportOptions:
    return ni.ImportOptions(**{"timesteps": 6, "dtype": "float32", **kw})


def run(graph_file: Path, out: Path, **kw) -> dict:
    return ni.import_nir(graph_file, out, opts(**kw), log=lambda *_: None)


def test_an_mlp_imports_into_a_checked_format_3_package(tmp_path):
    m = run(write(mlp(), tmp_path / "g.nir"), tmp_path / "pkg", dialect="snntorch", labels="a,b,c")
    pkg = tmp_path / "pkg"
    assert m["format_version"] == 3 and m["input"] == {"kind": "tensor", "shape": [6], "dtype": "float32", "time": "per_step"}
    assert [s["name"] for s in m["graphs"]["step"]["states"]] == ["lif1.v", "lif2.v"]
    assert m["neuron"]["dialect"] == "snntorch" and m["neuron"]["dt"] == 1e-4
    assert m["import_check"]["max_output_diff"] == 0.0
    for f in ("step.onnx", "manifest.json", "golden.json", "MODEL_CARD.md", "source.nir"):
        assert (pkg / f).is_file(), f
    golden = json.loads((pkg / "golden.json").read_text())
    x = np.load(pkg / golden["samples"][0]["file"])
    assert x.shape == (6, 6)  # [T, *frame]
    assert len(golden["samples"][0]["logits"]) == 6
    # No temporary folder left beside the package.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.nir", "pkg"]


def test_the_recurrent_loop_is_cut_after_the_neuron_and_its_bias_counts_from_step_one(tmp_path):
    g = mlp()
    g.nodes["rec"] = nir.Affine(weight=np.eye(5) * 0.5, bias=np.full(5, 0.25))
    g.edges += [("lif1", "rec"), ("rec", "lif1")]
    m = run(write(g, tmp_path / "g.nir"), tmp_path / "pkg", dialect="snntorch")
    assert [s["name"] for s in m["graphs"]["step"]["states"]] == ["lif1.v", "lif2.v", "lif1.prev"]
    plan = ni.plan_graph(nir.read(str(tmp_path / "g.nir")), ni.DIALECTS["snntorch"])
    assert plan.inputs["rec"] == [("lif1", True)] and ("rec", False) in plan.inputs["lif1"]


def test_sinabs_multi_spikes_and_norse_leak_offsets_pass_their_checks(tmp_path):
    g = mlp()
    g.nodes["lif1"] = nir.IF(r=np.ones(5), v_threshold=np.full(5, 0.5))
    m = run(write(g, tmp_path / "g.nir"), tmp_path / "s", dialect="sinabs")
    assert m["neuron"]["dialect"] == "sinabs"
    h = mlp(v_leak=np.linspace(-0.2, 0.3, 5))
    m = run(write(h, tmp_path / "h.nir"), tmp_path / "n", dialect="norse")
    # A per-neuron start (v_leak) is folded into the graph: every stored state starts at 0.
    assert all(s["initial_value"] == 0.0 for s in m["graphs"]["step"]["states"])


@pytest.mark.parametrize("case, dialect, message", [
    ("unsupported", "snntorch", "node 'd' is a Delay, which the importer does not support; supported nodes: Input"),
    ("no-output", "snntorch", "the graph has no Output node"),
    ("v-leak", "snntorch", "node 'lif1' (LIF) has v_leak ≠ 0"),
    ("v-reset", "norse", "has v_reset ≠ 0"),
    ("cubalif-sinabs", "sinabs", "node 'lif1' is a CubaLIF, which the sinabs dialect does not import"),
    ("shape", "snntorch", "node 'fc2' (Linear) cannot take an input of shape [5]"),
    ("param-shape", "snntorch", "node 'lif1' (LIF): tau has shape [4], but the node's input has shape [5]"),
    ("stateless-loop", "snntorch", "the graph has a loop with no neuron in it"),
])
def test_a_graph_the_dialect_cannot_honour_is_refused_by_node_and_nothing_is_written(tmp_path, case, dialect, message):
    g = mlp()
    if case == "unsupported":
        g.nodes["d"] = nir.Delay(delay=np.ones(5))
        g.edges = [e for e in g.edges if e != ("lif1", "fc2")] + [("lif1", "d"), ("d", "fc2")]
    elif case == "no-output":
        # nir.read gives every dangling node an Output of its own, so a file cannot lack one; a graph
        # built in memory can.
        del g.nodes["output"]
        g.edges = [e for e in g.edges if e[1] != "output"]
        with pytest.raises(ni.NirImportError) as err:
            ni.plan_graph(g, ni.DIALECTS[dialect])
        assert message in str(err.value)
        return
    elif case == "v-leak":
        g = mlp(v_leak=np.full(5, 0.1))
    elif case == "v-reset":
        g = mlp(v_reset=np.full(5, 0.2))
    elif case == "cubalif-sinabs":
        g.nodes["lif1"] = nir.CubaLIF(tau_syn=np.ones(5), tau_mem=np.ones(5), r=np.ones(5), v_leak=np.zeros(5),
                                      v_threshold=np.ones(5))
    elif case == "shape":
        g.nodes["fc2"] = nir.Linear(weight=np.ones((3, 7)))
    elif case == "param-shape":
        g.nodes["lif1"] = lif(4)
    elif case == "stateless-loop":
        g.nodes["s1"] = nir.Scale(scale=np.ones(5))
        g.nodes["s2"] = nir.Scale(scale=np.ones(5))
        g.edges = [e for e in g.edges if e != ("fc1", "lif1")] + [("fc1", "s1"), ("s1", "s2"), ("s2", "s1"), ("s2", "lif1")]
    # The importer's own check, on the graph in memory.
    with pytest.raises(ni.NirImportError) as err:
        ni.infer(ni.plan_graph(g, ni.DIALECTS[dialect]), ni.DIALECTS[dialect], None)
    assert message in str(err.value), str(err.value)
    # From a file: nir's own type check may refuse shape mismatches first; either message names the nodes.
    try:
        f = write(g, tmp_path / "g.nir")
    except Exception:
        return
    with pytest.raises(ni.NirImportError) as err:
        run(f, tmp_path / "pkg", dialect=dialect)
    assert message in str(err.value) or "type mismatch" in str(err.value), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.nir"]


def test_a_file_that_is_not_hdf5_or_is_cut_short_is_refused(tmp_path):
    bad = tmp_path / "net.nir"
    bad.write_text("not a graph")
    with pytest.raises(ni.NirImportError, match="not an HDF5 file"):
        run(bad, tmp_path / "pkg", dialect="snntorch")
    good = write(mlp(), tmp_path / "g.nir")
    cut = tmp_path / "cut.nir"
    cut.write_bytes(good.read_bytes()[:600])
    with pytest.raises(ni.NirImportError, match="cannot read the NIR graph"):
        run(cut, tmp_path / "pkg", dialect="snntorch")
    with pytest.raises(ni.NirImportError, match="no such file"):
        run(tmp_path / "missing.nir", tmp_path / "pkg", dialect="snntorch")
    assert not (tmp_path / "pkg").exists()


def test_wrong_labels_an_existing_package_and_bad_options_are_refused(tmp_path):
    f = write(mlp(), tmp_path / "g.nir")
    with pytest.raises(ni.NirImportError, match="2 labels given, but the network's output has 3 values"):
        run(f, tmp_path / "pkg", dialect="snntorch", labels="a,b")
    run(f, tmp_path / "pkg", dialect="snntorch")
    with pytest.raises(ni.NirImportError, match="exists and is not empty"):
        run(f, tmp_path / "pkg", dialect="snntorch")
    run(f, tmp_path / "pkg", dialect="snntorch", force=True, name="again")
    assert json.loads((tmp_path / "pkg" / "manifest.json").read_text())["name"] == "again"
    with pytest.raises(ni.NirImportError, match="dialect 'brian'; accepted: snntorch, norse, sinabs"):
        run(f, tmp_path / "x", dialect="brian")
    with pytest.raises(ni.NirImportError, match="does not match the Input node's shape"):
        run(f, tmp_path / "x", dialect="snntorch", input_shape=(7,))


def test_a_pytorch_step_module_imports_and_is_checked_against_itself(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(textwrap.dedent("""
        import torch

        class Step(torch.nn.Module):
            state_shapes = [(4,)]
            initial_values = [0.5]

            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 4)

            def forward(self, x, v):
                v = 0.9 * v + self.fc(x)
                z = (v > 1.0).float()
                return z, v * (1 - z)

        def build():
            torch.manual_seed(0)
            return Step()

        def broken():
            return 42
    """))
    monkeypatch.chdir(tmp_path)
    m = ni.import_module("mynet:build", tmp_path / "pkg", opts(input_shape=(3,)), log=lambda *_: None)
    assert m["graphs"]["step"]["states"][0]["initial_value"] == 0.5 and m["source"]["format"] == "pytorch step module"
    with pytest.raises(ni.NirImportError, match="returned a int, not a torch.nn.Module"):
        ni.import_module("mynet:broken", tmp_path / "pkg2", opts(input_shape=(3,)))
    with pytest.raises(ni.NirImportError, match="expected MODULE:FACTORY"):
        ni.import_module("mynet", tmp_path / "pkg2", opts(input_shape=(3,)))
    assert not (tmp_path / "pkg2").exists()


def test_the_command_line_exits_2_with_the_reason_and_works_from_any_directory(tmp_path):
    f = write(mlp(), tmp_path / "g.nir")
    exe = [sys.executable, "-m", "seenn_train", "import-nir"]
    res = subprocess.run(exe + [str(f), "--out", str(tmp_path / "p")], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "--dialect is required" in res.stderr
    res = subprocess.run(exe + [str(tmp_path / "nope.nir"), "--dialect", "snntorch", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "no such file" in res.stderr and not (tmp_path / "p").exists()
    res = subprocess.run(exe + [str(f), "--dialect", "snntorch", "--timesteps", "4", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "next: seenn calibrate" in res.stdout
