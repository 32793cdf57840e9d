#!/usr/bin/env python3
"""List the Rust functions in src/ longer than a limit (100 lines by default).

A function runs from its `fn` line to the first line after its body opens that is a lone `}` at the
`fn` line's indentation (rustfmt's layout). One that is long for a reason says so: a comment or doc
line among those right above its `fn` (attributes included) contains `long-function:` and the
reason. Such functions are listed as excused and do not fail the check.

    scripts/long_functions.py [--max N] [--all] [ROOT]

Exit status 1 when a function over the limit has no `long-function:` reason.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

FN = re.compile(r"^(?P<indent>\s*)(?:pub(?:\([^)]*\))?\s+)?(?:(?:const|async|unsafe|extern\s+\"[^\"]*\")\s+)*fn\s+(?P<name>\w+)")
MARK = "long-function:"


@dataclass
class Function:
    path: Path
    line: int  # 1-based line of the `fn`
    name: str
    length: int  # lines from the `fn` line to its closing brace, both included
    reason: str | None  # the text after `long-function:`, if any


def _reason(lines: list[str], i: int) -> str | None:
    """The `long-function:` reason among the comments and attributes right above line i."""
    j = i - 1
    while j >= 0:
        s = lines[j].strip()
        if not (s.startswith("//") or s.startswith("#[") or s.startswith("#![")):
            break
        if MARK in s:
            return s.split(MARK, 1)[1].strip()
        j -= 1
    return None


def _body_end(lines: list[str], i: int, indent: str) -> int | None:
    """Index of the line closing the function that starts at line i; None for a declaration."""
    for k in range(i, len(lines)):
        s = lines[k].split("//", 1)[0].rstrip()
        if s.endswith(";") and "{" not in s:
            return None  # a trait method without a body
        if "{" in s:
            if s.count("{") == s.count("}") and k == i:
                return k  # a one-line function
            if s.endswith("{"):
                break
            if s.endswith("}") and s.count("{") == s.count("}"):
                return k
    else:
        return None
    close = indent + "}"
    for m in range(k + 1, len(lines)):
        if lines[m].rstrip() == close:
            return m
    return None


def functions(root: Path) -> list[Function]:
    out = []
    for path in sorted(root.rglob("*.rs")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = FN.match(line)
            if not m:
                continue
            end = _body_end(lines, i, m.group("indent"))
            if end is None:
                continue
            out.append(Function(path, i + 1, m.group("name"), end - i + 1, _reason(lines, i)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--max", type=int, default=100, help="longest allowed function, in lines")
    ap.add_argument("--all", action="store_true", help="also list the excused long functions")
    args = ap.parse_args(argv)
    root = Path(args.root)
    long = sorted((f for f in functions(root) if f.length > args.max), key=lambda f: -f.length)
    bad = [f for f in long if f.reason is None]
    for f in long:
        if f.reason is None or args.all:
            where = f"{f.path.relative_to(root.parent) if root.parent in f.path.parents else f.path}:{f.line}"
            note = f"  (long-function: {f.reason})" if f.reason is not None else ""
            print(f"{f.length:5d}  {where}  {f.name}{note}")
    if bad:
        print(f"{len(bad)} function(s) over {args.max} lines without a `{MARK}` reason", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
