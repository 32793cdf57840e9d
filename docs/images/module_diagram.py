"""The module diagram of docs/development/architecture.md, generated from the code.

    python3 docs/images/module_diagram.py            rewrite the diagram in architecture.md
    python3 docs/images/module_diagram.py --check    exit 1 when architecture.md is out of date

Reads the server's import graph with scripts/module_graph.py (the same graph tests/structure checks
for cycles), gives every module its floor (1 + the highest floor it imports; floor 1 imports
nothing), drops the edges implied by longer paths (transitive reduction), and writes a Mermaid
flowchart, with each folder's modules grouped, and the table of floors between the markers in
architecture.md.
"""

from __future__ import annotations

import argparse
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import module_graph  # noqa: E402

PAGE = ROOT / "docs" / "development" / "architecture.md"
BEGIN = "<!-- module-diagram:begin (docs/images/module_diagram.py) -->"
END = "<!-- module-diagram:end -->"


def folder(module: str) -> str | None:
    """The folder a module belongs to (`engine::slots` and `engine` itself: `engine`), if any."""
    return module.split("::")[0]


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    @lru_cache(maxsize=None)
    def floor(u: str) -> int:
        return 1 + max((floor(t) for t in g.get(u, ())), default=0)

    return {u: floor(u) for u in g}


def reduce(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """Keep an edge u -> v only when no other path leads from u to v."""

    @lru_cache(maxsize=None)
    def reach(u: str) -> frozenset:
        out: set[str] = set()
        for t in g.get(u, ()):
            out |= {t} | reach(t)
        return frozenset(out)

    return {u: {v for v in ts if not any(v in reach(w) for w in ts if w != v)} for u, ts in g.items()}


def node(u: str) -> str:
    return u.replace("::", "_")


def render(g: dict[str, set[str]]) -> str:
    fl = floors(g)
    red = reduce(g)
    folders = {f for f in map(folder, g) if sum(folder(m) == f for m in g) > 1}
    lines = [BEGIN, "", "```mermaid", "flowchart TD"]
    for u in sorted(g, key=lambda u: (-fl[u], u)):
        f = folder(u)
        if f in folders:
            continue
        lines.append(f'    {node(u)}["{u}"]')
    for f in sorted(folders):
        lines.append(f'    subgraph {f}_dir["src/{f}/"]')
        for u in sorted((u for u in g if folder(u) == f), key=lambda u: (-fl[u], u)):
            label = "mod.rs" if u == f else u.split("::", 1)[1] + ".rs"
            lines.append(f'        {node(u)}["{u} ({label})"]')
        lines.append("    end")
    for u in sorted(red, key=lambda u: (-fl[u], u)):
        for v in sorted(red[u], key=lambda v: (-fl[v], v)):
            lines.append(f"    {node(u)} --> {node(v)}")
    lines += ["```", "", "| floor | modules (each imports only from lower floors) |", "|---|---|"]
    for f in sorted(set(fl.values()), reverse=True):
        names = ", ".join(f"`{u}`" for u in sorted(u for u in fl if fl[u] == f))
        lines.append(f"| {f} | {names} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when architecture.md is out of date")
    args = ap.parse_args()
    g = module_graph.graph(ROOT / "src")
    if module_graph.cycles(g):
        print("the module graph has a cycle: python3 scripts/module_graph.py names it", file=sys.stderr)
        return 1
    text = PAGE.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + render(g) + tail
    if args.check:
        if new != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python3 docs/images/module_diagram.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
