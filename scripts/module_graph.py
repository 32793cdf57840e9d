"""The server's module graph from its `crate::` imports (tests excluded), and its cycles.

    python3 scripts/module_graph.py [src]      prints `module -> imports` and exits 1 on a cycle

A module is a file under src/ (`a/mod.rs` is `a`); an import of `crate::a::b` counts toward `a::b`
when that module exists, else toward `a`. Imports between a module and its own submodules are
not edges (a folder is one unit to the rest of the crate).
"""

import re
import sys
from collections import defaultdict
from pathlib import Path


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def graph(src: Path) -> dict[str, set[str]]:
    files = [p for p in src.rglob("*.rs") if p.name not in ("lib.rs", "main.rs")]
    modules = {module_name(p, src) for p in files}
    edges: dict[str, set[str]] = defaultdict(set)
    for p in files:
        m = module_name(p, src)
        edges[m]
        text = p.read_text().split("#[cfg(test)]")[0]
        for target in re.findall(r"crate::(\w+(?:::\w+)?)", text):
            first = target.split("::")[0]
            t = target if target in modules else first
            if t != m and not m.startswith(t + "::") and not t.startswith(m + "::"):
                edges[m].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    edges = graph(src)
    for m in sorted(edges):
        print(f"{m} -> {', '.join(sorted(edges[m])) or '(nothing)'}")
    found = cycles(edges)
    for c in found:
        print(f"cycle: {' <-> '.join(c)}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
