"""Docs that cannot rot: every relative link in README.md and docs/ resolves (files and #anchors), every
page is reached from the README within two links, the configuration reference lists exactly the flags
of `seenn serve --help`, the metrics reference lists exactly the metrics a real server exports, and the
README's quick-start curl answers as shown against the real server."""

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
import seenn_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "target" / "release" / "seenn"
README = REPO / "README.md"
DOCS = REPO / "docs"
# Pages whose links are checked: the README, every page under docs/, and the other top-level documents.
PAGES = [README, REPO / "BENCHMARKS.md", REPO / "models" / "README.md", *sorted(DOCS.rglob("*.md"))]

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links."""
    out, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(page.read_text()))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r'<a (?:name|id)="([^"]+)"', page.read_text()))
    return out


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("//")


def broken_links(pages: list[Path], root: Path = REPO) -> list[str]:
    broken = []
    for page in pages:
        for target in links(page):
            if not relative(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(root)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(root)}: {target} (no heading #{anchor})")
    return broken


def test_every_relative_link_resolves():
    assert DOCS.is_dir() and len(PAGES) > 10
    assert broken_links(PAGES) == []


def test_the_link_check_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n[ok](b.md#second-part) [gone](c.md) [bad](b.md#nowhere)\n"
                                   "`[not a link](x.md)`\n")
    (tmp_path / "b.md").write_text("# B\n\n## Second part\n")
    assert broken_links([tmp_path / "a.md"], root=tmp_path) == [
        "a.md: c.md (no such file)", "a.md: b.md#nowhere (no heading #nowhere)"]


def test_every_docs_page_is_within_two_links_of_the_readme():
    def local_md(page: Path) -> set[Path]:
        out = set()
        for target in links(page):
            path = target.partition("#")[0]
            if relative(target) and path.endswith(".md"):
                dest = (page.parent / path).resolve()
                if dest.exists():
                    out.add(dest)
        return out

    first = local_md(README)
    second = set().union(*(local_md(p) for p in first))
    reached = first | second
    pages = {p.resolve() for p in DOCS.rglob("*.md")}
    assert sorted(str(p.relative_to(REPO)) for p in pages - reached) == []


def test_no_doc_speaks_of_the_host_or_its_own_history():
    # The benchmark log is dated history by design; everything else reads as product documentation.
    log = DOCS / "benchmarks" / "log"
    words = re.compile(r"this machine|this project's|\b2-core\b|on this CPU|\bhere \(", re.IGNORECASE)
    hits = []
    for page in [README, REPO / "BENCHMARKS.md", *DOCS.rglob("*.md")]:
        if log in page.parents:
            continue
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if words.search(line):
                hits.append(f"{page.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert hits == []


def table_column(page: Path, pattern: str) -> set[str]:
    """Every code span matching pattern in the first column of the page's tables."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            first = line.split("|")[1]
            out.update(m for m in re.findall(r"`([^`]+)`", first) if re.fullmatch(pattern, m))
    return out


def serve_help_flags() -> set[str]:
    out = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", out, re.MULTILINE))
    return flags - {"--help"}


def test_configuration_reference_lists_exactly_the_serve_flags():
    documented = table_column(DOCS / "reference" / "configuration.md", r"--[a-z0-9-]+")
    flags = serve_help_flags()
    assert len(flags) > 20
    assert sorted(flags - documented) == [], "flags of `seenn serve --help` missing from the reference"
    assert sorted(documented - flags) == [], "flags in the reference that `seenn serve` does not have"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server as `make run` starts it: every committed model, the defaults."""
    s = seenn_server.start(["--models", "models", "--state-dir", str(tmp_path_factory.mktemp("state"))])
    yield s
    seenn_server.stop(s)


def exported_metrics(base: str) -> set[str]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    names = set(re.findall(r"^# TYPE (seenn_\w+) ", text, re.MULTILINE))
    assert names, text[:500]
    return names


def test_metrics_reference_lists_exactly_the_exported_metrics(server):
    # Request metrics appear with their first request.
    png = sorted((REPO / "models" / "fashion-mnist" / "samples").glob("*.png"))[0].read_bytes()
    req = urllib.request.Request(f"{server['base']}/classify", data=png, headers={"content-type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    documented = table_column(DOCS / "reference" / "metrics.md", r"seenn_\w+")
    exported = exported_metrics(server["base"])
    assert sorted(documented - exported) == [], "metrics in the reference that the server does not export"
    assert sorted(exported - documented) == [], "exported metrics missing from the reference"


def quick_start_example() -> tuple[str, dict]:
    """The README's quick-start curl command and the answer printed under it."""
    section = README.read_text().split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)
    for i, (lang, body) in enumerate(blocks):
        if lang in ("sh", "bash", "console") and "curl " in body:
            command = body[body.index("curl "):].split("\n\n")[0].strip()
            answer = next(b for lg, b in blocks[i + 1:] if lg == "json")
            return command, json.loads(answer)
    raise AssertionError("no curl example with a JSON answer in the README's quick start")


# Fields that differ on every call.
VOLATILE = {"timings", "request_id"}


def same(shown, got, path="") -> list[str]:
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r}"]
        diffs = [f"{path}.{k}: missing" for k in shown if k not in got and k not in VOLATILE]
        for k in shown:
            if k in got and k not in VOLATILE:
                diffs += same(shown[k], got[k], f"{path}.{k}")
        return diffs
    if isinstance(shown, list):
        if not isinstance(got, list) or len(got) != len(shown):
            return [f"{path}: {got!r}"]
        return [d for i, (a, b) in enumerate(zip(shown, got)) for d in same(a, b, f"{path}[{i}]")]
    if isinstance(shown, float):
        # The README rounds probabilities; what it shows must be the answer rounded.
        return [] if isinstance(got, (int, float)) and abs(got - shown) <= 5e-4 * max(1.0, abs(shown)) + 5e-6 \
            else [f"{path}: shown {shown}, got {got}"]
    return [] if shown == got else [f"{path}: shown {shown!r}, got {got!r}"]


def test_readme_curl_answers_as_shown(server):
    command, shown = quick_start_example()
    assert "localhost:8080" in command
    run = subprocess.run(["bash", "-c", command.replace("localhost:8080", f"127.0.0.1:{server['port']}")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert same(shown, got) == [], json.dumps(got)


def test_the_answer_check_catches_a_difference():
    shown = {"label": "Ankle boot", "confidence": 0.99992, "top_k": [{"class_id": 9}], "timings": {}}
    assert same(shown, {"label": "Ankle boot", "confidence": 0.999921, "top_k": [{"class_id": 9}]}) == []
    assert same(shown, {"label": "Sneaker", "confidence": 0.9, "top_k": []}) == [
        ".label: shown 'Ankle boot', got 'Sneaker'", ".confidence: shown 0.99992, got 0.9", ".top_k: []"]


def test_architecture_diagram_matches_the_code():
    run = subprocess.run(["python3", str(DOCS / "images" / "module_diagram.py"), "--check"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr + "\nrun: python3 docs/images/module_diagram.py"
