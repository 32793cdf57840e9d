"""The server's modules import one way only (docs/development/architecture.md)."""

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
    # kserve/ is one transport (its submodules use their parent); api::http and api::grpc are two.
    def family(m: str) -> str:
        return m.split("::")[0] if m.startswith("kserve") else m

    for t in transports:
        others = {u for u in transports if family(u) != family(t)}
        assert not (edges[t] & others), (t, edges[t])


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


def test_the_checker_follows_super_self_and_bare_paths(tmp_path):
    # Two siblings in a folder that use each other through `super::` (the shape of a cycle the
    # `crate::`-only checker missed), a parent that names its children, a child that names its parent.
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "mod.rs").write_text("pub mod a;\npub mod b;\nuse self::a::X;\nfn f() { b::g(); }\n")
    (tmp_path / "svc" / "a.rs").write_text("use super::b::Dial;\nuse super::Service;\n")
    (tmp_path / "svc" / "b.rs").write_text("pub fn g() { super::a::managed(); }\n// super::c::nothing\n")
    (tmp_path / "top.rs").write_text("use crate::svc::a::X;\n")
    edges = module_graph.graph(tmp_path)
    assert edges["svc"] == set(), "a folder's paths into its own children are not edges"
    assert edges["svc::a"] == {"svc::b", "svc"}
    assert edges["svc::b"] == {"svc::a"}, "comments do not count"
    assert edges["top"] == {"svc::a"}
    assert module_graph.cycles(edges) == [["svc::a", "svc::b"]]


def test_the_checker_reads_grouped_imports(tmp_path):
    (tmp_path / "a.rs").write_text("use crate::{b, c::{D, self as e}};\n")
    (tmp_path / "b.rs").write_text("pub struct B;\n")
    (tmp_path / "c.rs").write_text("use crate::{a::{X}};\n")
    edges = module_graph.graph(tmp_path)
    assert edges["a"] == {"b", "c"}
    assert module_graph.cycles(edges) == [["a", "c"]]
