"""The server's module graph from its paths (tests excluded), and its cycles.

    python3 scripts/module_graph.py [src]      prints `module -> imports` and exits 1 on a cycle

A module is a file under src/ (`a/mod.rs` is `a`). Every path counts, however it is spelled:
`crate::a::b::C`, `super::b::C` (relative to the module's parent), `self::b::C`, a bare `b::C`
naming a submodule, and each path of a group (`use crate::{a, b::C}`); each counts toward the
longest module prefix it names. A module's paths into
its own submodules are not edges (a folder's `mod.rs` declares and re-exports its children), but a
submodule's paths to its parent and to its siblings are: two siblings that use each other are a
cycle, as are a child and a parent's other child that use each other.
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


def longest_module(parts: list[str], modules: set[str]) -> str | None:
    for n in range(len(parts), 0, -1):
        name = "::".join(parts[:n])
        if name in modules:
            return name
    return None


# A path: its first segment, then `::` segments; `use a::{b, c}` groups count by their prefix.
PATH = re.compile(r"(?<![\w:])((?:crate|super|self|\w+)(?:::(?:super|\w+))+)")


def resolve(path: str, module: str, modules: set[str]) -> str | None:
    parts = path.split("::")
    here = module.split("::") if module else []
    if parts[0] == "crate":
        return longest_module(parts[1:], modules)
    if parts[0] in ("self", "super"):
        base = list(here)
        while parts and parts[0] in ("self", "super"):
            if parts.pop(0) == "super":
                if not base:
                    return None
                base.pop()
        return longest_module(base + parts, modules) or ("::".join(base) if base else None)
    # A bare path: a submodule of this module (`policy::X` in `service/mod.rs`), else not ours.
    if "::".join(here + parts[:1]) in modules:
        return longest_module(here + parts, modules)
    return None


GROUP = re.compile(r"((?:crate|super|self|\w+)(?:::(?:super|\w+))*)::\{([^{}]*)\}")


def expand_groups(text: str) -> str:
    """`use a::{b, c::D, self}` as the paths `a::b a::c::D a`, innermost groups first."""
    def one(m: re.Match) -> str:
        items = [i.strip().split(" as ")[0].strip() for i in m.group(2).split(",")]
        return " ".join(m.group(1) if i == "self" else f"{m.group(1)}::{i}" for i in items if i)

    while True:
        text, n = GROUP.subn(one, text)
        if n == 0:
            return text


def graph(src: Path) -> dict[str, set[str]]:
    files = [p for p in src.rglob("*.rs") if p.name not in ("lib.rs", "main.rs")]
    modules = {module_name(p, src) for p in files}
    edges: dict[str, set[str]] = defaultdict(set)
    for p in files:
        m = module_name(p, src)
        edges[m]
        text = p.read_text().split("#[cfg(test)]")[0]
        text = expand_groups(re.sub(r"//[^\n]*", "", text))
        for path in PATH.findall(text):
            t = resolve(path, m, modules)
            if t and t != m and not t.startswith(m + "::"):
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
