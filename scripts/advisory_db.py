"""The RustSec advisories `cargo deny check advisories` reads, for builds that cannot reach GitHub.

    python3 scripts/advisory_db.py snapshot CHECKOUT   refresh .ci/advisory-db from a checkout of
                                                       github.com/rustsec/advisory-db
    python3 scripts/advisory_db.py install DIR         lay the snapshot out as the git repository
                                                       cargo-deny expects under DIR (deny.toml's db-path)
    python3 scripts/advisory_db.py check               exit 1 when a crate in Cargo.lock has advisories
                                                       in the database but none in the snapshot

The snapshot keeps every advisory of every crate in Cargo.lock (all versions: cargo-deny matches the
versions), the names of all crates the database has advisories for (so `check` notices a new
dependency that needs a refresh), and the database commit and date it was taken from. cargo-deny
updates its database from the clone's origin, which `install` makes a local repository holding the
snapshot: the check needs no network, and reads the advisories as of the snapshot's date.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / ".ci" / "advisory-db"
# cargo-deny's folder name for https://github.com/rustsec/advisory-db (a hash of the URL).
DB_DIR = "advisory-db-3157b0e258782691"


def locked_crates() -> set[str]:
    return set(re.findall(r'^name = "([^"]+)"', (ROOT / "Cargo.lock").read_text(), re.MULTILINE))


def snapshot(checkout: Path) -> None:
    crates = checkout / "crates"
    if not crates.is_dir():
        sys.exit(f"{checkout} is not a checkout of rustsec/advisory-db (no crates/ folder)")
    head = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%H %cI"],
                          capture_output=True, text=True, check=True).stdout.split()
    shutil.rmtree(SNAPSHOT, ignore_errors=True)
    (SNAPSHOT / "crates").mkdir(parents=True)
    names = sorted(p.name for p in crates.iterdir() if p.is_dir())
    kept = 0
    for name in sorted(locked_crates() & set(names)):
        shutil.copytree(crates / name, SNAPSHOT / "crates" / name)
        kept += len(list((SNAPSHOT / "crates" / name).glob("*.md")))
    (SNAPSHOT / "index.txt").write_text("\n".join(names) + "\n")
    (SNAPSHOT / "SNAPSHOT").write_text(f"source https://github.com/rustsec/advisory-db\ncommit {head[0]}\n"
                                       f"date {head[1]}\n")
    print(f"{kept} advisories of {len(locked_crates() & set(names))} locked crates "
          f"(database: {len(names)} crates, {head[0][:12]}, {head[1]})")


def install(dest: Path) -> None:
    info = dict(line.split(" ", 1) for line in (SNAPSHOT / "SNAPSHOT").read_text().splitlines())
    # cargo-deny runs `git fetch origin main` on the database before each check: the origin is a
    # local repository holding the snapshot, so the fetch succeeds without a network.
    origin, repo = dest / "snapshot-origin", dest / DB_DIR
    for d in (origin, repo):
        shutil.rmtree(d, ignore_errors=True)
    origin.mkdir(parents=True)
    shutil.copytree(SNAPSHOT / "crates", origin / "crates")
    env = {"GIT_AUTHOR_NAME": "snapshot", "GIT_AUTHOR_EMAIL": "snapshot@localhost",
           "GIT_COMMITTER_NAME": "snapshot", "GIT_COMMITTER_EMAIL": "snapshot@localhost",
           "GIT_AUTHOR_DATE": info["date"], "GIT_COMMITTER_DATE": info["date"], "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["commit", "-q", "-m", f"advisory-db {info['commit']}"]):
        subprocess.run(["git", "-C", str(origin), *cmd], check=True, env=env)
    subprocess.run(["git", "clone", "-q", str(origin.resolve()), str(repo)], check=True, env=env)
    print(f"advisory database {info['commit'][:12]} ({info['date']}) in {repo}")


def check() -> int:
    index = set((SNAPSHOT / "index.txt").read_text().split())
    kept = {p.name for p in (SNAPSHOT / "crates").iterdir()}
    missing = sorted((locked_crates() & index) - kept)
    if missing:
        print(f"crates in Cargo.lock with advisories missing from .ci/advisory-db: {', '.join(missing)}; "
              "refresh: python3 scripts/advisory_db.py snapshot CHECKOUT", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "snapshot":
        snapshot(Path(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "install":
        install(Path(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "check":
        return check()
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
