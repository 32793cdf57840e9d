"""The server's modules import one way only (see README "Layout")."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import module_graph  # noqa: E402


def test_src_has_no_import_cycle():
    edges = module_graph.graph(ROOT / "src")
    assert "engine" in edges and "service" in edges
    assert module_graph.cycles(edges) == []


def test_transports_do_not_import_each_other():
    edges = module_graph.graph(ROOT / "src")
    transports = {"api::http", "api::grpc", "kserve", "kserve::rest", "kserve::grpc"}
    for t in transports:
        assert not (edges[t] & transports), (t, edges[t])


def test_the_checker_finds_a_cycle(tmp_path):
    (tmp_path / "a.rs").write_text("use crate::b::X;\n")
    (tmp_path / "b.rs").write_text(textwrap.dedent("""
        use crate::a::Y;
        #[cfg(test)]
        mod tests { use crate::c::Z; }
    """))
    (tmp_path / "c.rs").write_text("use crate::a::Y;\n")
    edges = module_graph.graph(tmp_path)
    assert edges["b"] == {"a"}, "imports in tests do not count"
    assert module_graph.cycles(edges) == [["a", "b"]]
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "module_graph.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "cycle: a <-> b" in run.stderr
