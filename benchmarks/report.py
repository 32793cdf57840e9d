"""Summaries of benchmark runs (benchmarks/run.sh): reads a suite's raw reports, named
``<run>-r<round>.json`` (``seenn bench --json``, ``seenn eval --json`` or ``ort_only.py --json``),
writes ``summary.json`` beside them (medians over rounds, the per-round values, what each suite
derives from them, the host and the command) and prints the tables.

    python3 benchmarks/report.py SUITE OUT_DIR [--results DIR --write 0|1]
    python3 benchmarks/report.py line REPORT.json        # one line, for progress output
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUND = re.compile(r"^(?P<key>.+)-r(?P<round>\d+)$")
PARAMS = ("DURATION", "ROUNDS", "LIMIT", "NICE", "SMOKE", "MODELS", "BASE", "MODEL", "DROP", "RATE", "OBJ_MS",
          "CONCS", "WORKERS", "SETTINGS", "FRACTION", "HEADLINE_MODELS", "FACTOR", "OBJECTIVE")


# --- reading reports ---------------------------------------------------------------------------

def load(path: Path) -> dict:
    return json.loads(path.read_text())


def kind(d: dict) -> str:
    if "rules" in d:
        return "eval"
    if "images_per_s" in d:
        return "ort"
    return "bench"


def rule(d: dict, name: str) -> dict:
    return next(x for x in d["rules"] if x["rule"] == name)


def metrics(d: dict) -> dict:
    """The numbers of one report, flat. An eval report gives each rule's under ``<rule>.``."""
    k = kind(d)
    if k == "bench":
        lat = d.get("latency_ms") or {}
        st = d.get("server_timings_ms") or {}
        dur = d.get("duration_s") or float("nan")
        return {
            "rps": d["throughput_rps"], "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
            "avg_t": d.get("avg_timesteps"), "accuracy": d.get("accuracy"), "errors": d.get("errors", 0),
            "rejected_per_s": d.get("by_status", {}).get("429", 0) / dur, "rss_mb": d.get("server_rss_mb"),
            "server_p50_ms": st.get("total_p50"), "server_p99_ms": st.get("total_p99"),
            "requests": d.get("requests"), "deadline_exceeded": d.get("by_status", {}).get("504", 0),
            "deadline_exits": d.get("deadline_exits", 0), "deadline_exit_accuracy": d.get("deadline_exit_accuracy"),
        }
    if k == "ort":
        return {"rps": d["images_per_s"], "avg_t": d["avg_timesteps"], "accuracy": d["accuracy"],
                "cpu_ms_per_image": 1e3 * sum(d["cpu_seconds"]) / d["images"]}
    out = {}
    for r in d["rules"]:
        cpu = r.get("cpu_seconds")
        for name, v in (("rps", r["throughput_rps"]), ("p50_ms", r["latency_p50_ms"]), ("p99_ms", r["latency_p99_ms"]),
                        ("avg_t", r["avg_timesteps"]), ("accuracy", r["accuracy"]),
                        ("cpu_ms_per_image", None if cpu is None else 1e3 * cpu / d["samples"])):
            out[f"{r['rule']}.{name}"] = v
    return out


def line(path: Path) -> str:
    d = load(path)
    m = metrics(d)
    if kind(d) == "eval":
        return ", ".join(f"{r['rule']} {r['throughput_rps']:.0f} img/s at {r['avg_timesteps']:.3f} t" for r in d["rules"])
    if kind(d) == "ort":
        return f"{m['rps']:.0f} img/s, avg t {m['avg_t']:.3f}, accuracy {100 * m['accuracy']:.2f}%"
    p99 = m["p99_ms"]
    return (f"{m['rps']:.0f} req/s, p50 {fmt(m['p50_ms'], 3)} ms, p99 {fmt(p99, 2)} ms, avg t {fmt(m['avg_t'], 3)}, "
            f"errors {m['errors']}")


def fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def med(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def runs(out: Path) -> dict[str, list[tuple[int, dict]]]:
    """Reports by run key, in round order."""
    found: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for f in sorted(out.glob("*.json")):
        m = ROUND.match(f.stem)
        if m and f.name != "summary.json":
            found[m["key"]].append((int(m["round"]), load(f)))
    return {k: sorted(v, key=lambda x: x[0]) for k, v in sorted(found.items())}


def medians(reports: list[tuple[int, dict]]) -> dict:
    per = [metrics(d) for _, d in reports]
    keys = [k for k in per[0] if isinstance(per[0][k], (int, float)) or per[0][k] is None]
    out = {k: med([p.get(k) for p in per]) for k in keys}
    rps_key = "rps" if "rps" in per[0] else "confidence.rps"
    out["rounds"] = len(per)
    out["per_round_rps"] = [p.get(rps_key) for p in per]
    return out


# --- context of a run --------------------------------------------------------------------------

def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def host() -> dict:
    cpu = ""
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    osname = ""
    try:
        osname = next(x.split("=", 1)[1].strip('"') for x in Path("/etc/os-release").read_text().splitlines()
                      if x.startswith("PRETTY_NAME="))
    except (OSError, StopIteration):
        pass
    ort = ""
    lib = REPO / ".ort" / "lib" / "libonnxruntime.so"
    if lib.exists():
        m = re.search(r"\d+\.\d+\.\d+", os.path.realpath(lib))
        ort = m.group(0) if m else ""
    # The commit of the source tree the binary under test sits in (BIN may be another checkout's
    # build), and whether that tree's sources differed from it.
    src = str((REPO / os.environ.get("BIN", "target/release/seenn")).resolve().parent)
    top = sh("git", "-C", src, "rev-parse", "--show-toplevel") or str(REPO)
    dirty = sh("git", "-C", top, "status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml", "Cargo.lock")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "os": osname, "kernel": platform.release(),
        "rustc": sh("rustc", "--version"), "onnxruntime": ort,
        "commit": sh("git", "-C", top, "rev-parse", "--short=12", "HEAD") + ("+changes" if dirty else ""),
        "loadavg_at_summary": os.getloadavg()[0],
    }


def envelope(suite: str, out: Path, summary: dict) -> dict:
    return {
        "suite": suite,
        "date": time.strftime("%Y-%m-%d"),
        "command": os.environ.get("BENCH_COMMAND", f"benchmarks/run.sh {suite}"),
        "params": {k: os.environ[k] for k in PARAMS if os.environ.get(k)},
        "host": host(),
        **summary,
    }


def write(out: Path, data: dict) -> None:
    (out / "summary.json").write_text(json.dumps(data, indent=1) + "\n")


def table(rows: dict[str, dict], cols: list[tuple[str, str, int]]) -> None:
    print("| run | " + " | ".join(c[0] for c in cols) + " | req/s per round |")
    print("|---|" + "---|" * (len(cols) + 1))
    for key, m in rows.items():
        per = " ".join(fmt(x, 0) for x in m.get("per_round_rps", []))
        print(f"| {key} | " + " | ".join(fmt(m.get(c[1]), c[2]) for c in cols) + f" | {per} |")


BENCH_COLS = [("req/s", "rps", 0), ("p50 ms", "p50_ms", 3), ("p99 ms", "p99_ms", 2), ("avg t", "avg_t", 3),
              ("errors", "errors", 0)]
EVAL_COLS = [("fixed img/s", "fixed.rps", 0), ("SEENN-I img/s", "confidence.rps", 0), ("SEENN-I p50 ms", "confidence.p50_ms", 3),
             ("SEENN-I avg t", "confidence.avg_t", 3), ("SEENN-I accuracy", "confidence.accuracy", 4)]


def generic(out: Path) -> dict[str, dict]:
    """Medians of every run key; prints one table per kind of report."""
    found = runs(out)
    rows = {k: medians(v) for k, v in found.items()}
    for k_name, cols in (("bench", BENCH_COLS), ("eval", EVAL_COLS),
                         ("ort", [("img/s", "rps", 0), ("avg t", "avg_t", 3), ("CPU ms/img", "cpu_ms_per_image", 3)])):
        sel = {k: m for k, m in rows.items() if kind(found[k][0][1]) == k_name}
        if sel:
            table(sel, cols)
            print()
    return rows


def realised(conf_rps: float, fixed_rps: float, t: int, avg_t: float) -> dict:
    """SEENN-I ÷ fixed-T throughput against what skipping timesteps could buy at most (T ÷ avg t)."""
    got, ideal = conf_rps / fixed_rps, t / avg_t
    return {"seenn_i_over_fixed": got, "t_over_avg_t": ideal, "realised": got / ideal}


def per_round(found: dict, a: str, b: str, fn) -> list:
    """fn(report_a, report_b) for every round both keys have."""
    ra, rb = dict(found.get(a, [])), dict(found.get(b, []))
    return [fn(ra[r], rb[r]) for r in sorted(ra) if r in rb]


def show(v) -> str:
    if isinstance(v, float):
        return fmt(v, 3)
    if isinstance(v, list):
        return " ".join(show(x) for x in v)
    return str(v)


def print_derived(derived: dict) -> None:
    for k, v in derived.items():
        if isinstance(v, dict):
            print(f"{k}: " + ", ".join(f"{kk.replace('_', ' ')} {show(vv)}" for kk, vv in v.items()))
        else:
            print(f"{k}: {show(v)}")


# --- suites ------------------------------------------------------------------------------------

def ratio_rounds(found: dict, a: str, b: str, key: str = "rps") -> dict:
    per = per_round(found, a, b, lambda x, y: metrics(x)[key] / metrics(y)[key])
    return {"median": med(per), "per_round": per}


def summary_headline(out: Path, args) -> dict:
    found = runs(out)
    rows = generic(out)
    models = sorted({k.split("-seenn-")[0] for k in found if "-seenn-" in k})
    res = {}
    for m in models:
        t = load(REPO / os.environ.get("MODELS", "models") / m / "manifest.json")["timesteps"]
        g = lambda k, m=m: rows.get(f"{m}-{k}", {})  # noqa: E731
        rr = per_round(found, f"{m}-seenn-c16", f"{m}-seenn-c16-fixed",
                       lambda a, b, t=t: realised(metrics(a)["rps"], metrics(b)["rps"], t, metrics(a)["avg_t"]))
        ev = g("eval")
        res[m] = {
            "timesteps": t,
            "seenn": {"c1_p50_ms": g("seenn-c1").get("p50_ms"), "c16_rps": g("seenn-c16").get("rps"),
                      "c16_fixed_rps": g("seenn-c16-fixed").get("rps"), "c64_rps": g("seenn-c64").get("rps"),
                      "c64_p99_ms": g("seenn-c64").get("p99_ms"), "avg_t": g("seenn-c16").get("avg_t"),
                      "accuracy": g("seenn-c16").get("accuracy"), "fixed_accuracy": g("seenn-c16-fixed").get("accuracy"),
                      "c16_fixed_p50_ms": g("seenn-c16-fixed").get("p50_ms"), "c1_rps": g("seenn-c1").get("rps"),
                      "errors": sum(r.get("errors") or 0 for k, r in rows.items() if k.startswith(f"{m}-seenn-"))},
            "early_exit": {"seenn_i_over_fixed": med([x["seenn_i_over_fixed"] for x in rr]),
                           "t_over_avg_t": med([x["t_over_avg_t"] for x in rr]),
                           "realised": med([x["realised"] for x in rr]), "realised_per_round": [x["realised"] for x in rr]},
            "python": {"c1_p50_ms": g("python-c1").get("p50_ms"), "c16_rps": g("python-c16").get("rps"),
                       "c64_rps": g("python-c64").get("rps"), "c64_p99_ms": g("python-c64").get("p99_ms"),
                       "accuracy": g("python-c16").get("accuracy"),
                       "errors": sum(r.get("errors") or 0 for k, r in rows.items() if k.startswith(f"{m}-python-"))},
            "seenn_over_python_c16": ratio_rounds(found, f"{m}-seenn-c16", f"{m}-python-c16"),
            "seenn_fixed_over_python_c16": ratio_rounds(found, f"{m}-seenn-c16-fixed", f"{m}-python-c16"),
            "in_process": {"seenn_eval_seenn_i_img_s": ev.get("confidence.rps"), "seenn_eval_fixed_img_s": ev.get("fixed.rps"),
                           "images": found[f"{m}-eval"][0][1]["samples"] if f"{m}-eval" in found else None,
                           "seenn_i_accuracy": ev.get("confidence.accuracy"), "fixed_accuracy": ev.get("fixed.accuracy"),
                           "ort_only_img_s": g("ort").get("rps"), "ort_only_avg_t": g("ort").get("avg_t"),
                           "seenn_eval_avg_t": ev.get("confidence.avg_t"),
                           "seenn_over_ort": med(per_round(found, f"{m}-eval", f"{m}-ort",
                                                           lambda a, b: rule(a, "confidence")["throughput_rps"] / b["images_per_s"]))},
        }
    for m, r in res.items():
        print(f"{m}: realised early exit {fmt(r['early_exit']['realised'], 3)}; seenn ÷ Python at c16 "
              f"{fmt(r['seenn_over_python_c16']['median'], 2)}; seenn eval ÷ ORT alone {fmt(r['in_process']['seenn_over_ort'], 2)}")
    data = envelope("headline", out, {"models": res, "runs": rows})
    if args.context:  # re-rendered from kept reports: the date, command and host of the run itself
        kept = load(Path(args.context))
        data.update({k: kept[k] for k in ("date", "command", "params", "host")})
    write(out, data)
    if args.results:
        dest = Path(args.results)
        if dest.resolve() != out.resolve():
            raw = dest / "headline"
            shutil.rmtree(raw, ignore_errors=True)
            raw.mkdir(parents=True)
            for f in out.glob("*-r*.json"):
                shutil.copy(f, raw / f.name)
            (dest / "headline.json").write_text(json.dumps(data, indent=1) + "\n")
            print(f"results: {dest / 'headline.json'} (reports in {raw})")
    if args.write == "1":
        rewrite_benchmarks_md(data)
    return data


BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"


def headline_markdown(data: dict) -> str:
    """The headline tables of BENCHMARKS.md, from headline.json."""
    link = "[results](benchmarks/results/headline.json)"
    rounds = data["params"].get("ROUNDS", "?")
    dur = data["params"].get("DURATION", "?")
    lines = [f"Measured {data['date']} at commit `{data['host']['commit']}` with `{data['command']}` "
             f"(medians of {rounds} interleaved rounds, {dur} s per run; {link}, per-round values and every report "
             "in `benchmarks/results/headline/`).", ""]
    for m, r in data["models"].items():
        s, p, e, i = r["seenn"], r["python"], r["early_exit"], r["in_process"]
        pct = lambda v: "–" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        lines += [
            f"**{m}** (T = {r['timesteps']}; on the first {i.get('images')} test images in-process, SEENN-I at the package's "
            f"default α: {pct(i.get('seenn_i_accuracy'))} at {fmt(i['seenn_eval_avg_t'], 3)} timesteps on average, fixed T "
            f"{pct(i.get('fixed_accuracy'))}; over HTTP SEENN-I averaged {fmt(s['avg_t'], 3)} timesteps)",
            "",
            "| measure | seenn, SEENN-I | seenn, fixed T | Python baseline, fixed T | ONNX Runtime alone |",
            "|---|---|---|---|---|",
            f"| c=1 HTTP p50 latency | {fmt(s['c1_p50_ms'], 3)} ms | | {fmt(p['c1_p50_ms'], 3)} ms | |",
            f"| c=16 HTTP throughput | {fmt(s['c16_rps'], 0)} req/s | {fmt(s['c16_fixed_rps'], 0)} req/s | "
            f"{fmt(p['c16_rps'], 0)} req/s | |",
            f"| c=16: SEENN-I ÷ fixed T (of T ÷ avg t) | {fmt(e['seenn_i_over_fixed'], 2)}× of {fmt(e['t_over_avg_t'], 2)}× = "
            f"**{fmt(e['realised'], 2)}** realised | | | |",
            f"| c=16: seenn ÷ Python baseline | **{fmt(r['seenn_over_python_c16']['median'], 2)}×** | "
            f"{fmt(r['seenn_fixed_over_python_c16']['median'], 2)}× | 1 | |",
            f"| c=64 HTTP throughput, p99 latency | {fmt(s['c64_rps'], 0)} req/s, p99 {fmt(s['c64_p99_ms'], 1)} ms | | "
            f"{fmt(p['c64_rps'], 0)} req/s, p99 {fmt(p['c64_p99_ms'], 1)} ms | |",
            f"| in-process images/s (no HTTP; `seenn eval` c=64, ORT alone one process per core) | "
            f"{fmt(i['seenn_eval_seenn_i_img_s'], 0)} ({fmt(i['seenn_over_ort'], 2)}× ORT alone) | "
            f"{fmt(i['seenn_eval_fixed_img_s'], 0)} | | {fmt(i['ort_only_img_s'], 0)} (SEENN-I, avg t {fmt(i['ort_only_avg_t'], 3)}) |",
            "",
        ]
    lines += ["**GPU** (CUDA execution provider): not measured; no GPU was available for these runs "
              "(`benchmarks/run.sh gpu` measures it where one is).", ""]
    return "\n".join(lines)


def rewrite_benchmarks_md(data: dict) -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text()
    if BEGIN not in text or END not in text:
        print(f"BENCHMARKS.md has no {BEGIN} ... {END} markers: table not written", file=sys.stderr)
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + "\n" + headline_markdown(data) + END + tail)
    print("BENCHMARKS.md: headline table rewritten")


def eval_realised(d: dict) -> float:
    """Realised early exit of one `seenn eval` report (its fixed and confidence rules)."""
    c, f = rule(d, "confidence"), rule(d, "fixed")
    return realised(c["throughput_rps"], f["throughput_rps"], d["timesteps"], c["avg_timesteps"])["realised"]


def http_realised(found: dict, a: str, b: str, t: int) -> dict:
    """Realised early exit over HTTP per round: SEENN-I run a against fixed-T run b."""
    per = per_round(found, a, b, lambda x, y: realised(metrics(x)["rps"], metrics(y)["rps"], t, metrics(x)["avg_t"])["realised"])
    return {"median": med(per), "per_round": per}


def derive_early_exit(found: dict) -> dict:
    derived = {}
    for key, reps in found.items():
        if kind(reps[0][1]) == "eval":
            per = [eval_realised(d) for _, d in reps]
            derived[f"{key} realised (in-process)"] = {"median": med(per), "per_round": per}
        elif key.endswith("-http-fixed"):
            base = key[: -len("-fixed")]
            derived[f"{base} realised (HTTP)"] = http_realised(found, base, key, int(re.search(r"-T(\d+)-", key).group(1)))
    return derived


def derive_batching(found: dict) -> dict:
    derived = {}
    for a, b in (("continuous-mb8", "per-request-mb1"), ("continuous-mb8", "static-mb8"), ("continuous-mb8", "continuous-mb32")):
        if a in found and b in found:
            derived[f"{a} ÷ {b} req/s"] = ratio_rounds(found, a, b)
            derived[f"{a} p99 − {b} p99 (ms)"] = med(per_round(found, a, b, lambda x, y: metrics(x)["p99_ms"] - metrics(y)["p99_ms"]))
    return derived


def derive_workers(found: dict) -> dict:
    derived = {}
    ts = {"fm": int(os.environ.get("T_FM", "4")), "qcfs": int(os.environ.get("T_QC", "32"))}
    configs = sorted({k.split("-")[0] for k in found})
    for c in configs:
        for model, t in ts.items():
            if f"{c}-{model}-c16" in found and f"{c}-{model}-c16-fixed" in found:
                derived[f"{c} {model} realised at c16"] = http_realised(found, f"{c}-{model}-c16", f"{c}-{model}-c16-fixed", t)
    ws = sorted((c for c in configs if c.startswith("workers") and c[7:].isdigit()), key=lambda c: int(c[7:]))
    if len(ws) >= 2:
        derived[f"{ws[-1]} ÷ {ws[0]} at c64"] = ratio_rounds(found, f"{ws[-1]}-fm-c64", f"{ws[0]}-fm-c64")
        if "base-fm-c64" in found:
            derived[f"{ws[-1]} ÷ base at c64"] = ratio_rounds(found, f"{ws[-1]}-fm-c64", "base-fm-c64")
    return derived


def derive_cores(found: dict) -> dict:
    derived = {}
    conf = lambda d: rule(d, "confidence")["throughput_rps"] if kind(d) == "eval" else d["images_per_s"]  # noqa: E731
    n = os.cpu_count() or 1
    for label, a, b in ((f"{n} workers ÷ 1 worker", f"eval-w{n}", "eval-w1"),
                        (f"{n} workers ÷ ORT alone, {n} processes", f"eval-w{n}", f"ort-p{n}"),
                        ("1 worker ÷ ORT alone, 1 process", "eval-w1", "ort-p1"),
                        (f"ORT alone {n} ÷ 1 processes", f"ort-p{n}", "ort-p1")):
        per = per_round(found, a, b, lambda x, y: conf(x) / conf(y))
        derived[label] = {"median": med(per), "per_round": per}
    return derived


def derive_slot_memory(found: dict) -> dict:
    derived = {}
    for key in found:
        if not key.endswith("-host"):
            continue
        name = key[: -len("-host")]
        host_r, dev_r = dict(found[key]), dict(found.get(f"{name}-device", []))
        both = [r for r in host_r if r in dev_r]
        for rl in (x["rule"] for x in found[key][0][1]["rules"]):
            per = [rule(dev_r[r], rl)["throughput_rps"] / rule(host_r[r], rl)["throughput_rps"] for r in both]
            same = all(rule(dev_r[r], rl)["accuracy"] == rule(host_r[r], rl)["accuracy"]
                       and rule(dev_r[r], rl)["avg_timesteps"] == rule(host_r[r], rl)["avg_timesteps"] for r in both)
            derived[f"{name} {rl} device ÷ host"] = {"median": med(per), "per_round": per, "same_answers": same}
    return derived


def derive_byo(found: dict) -> dict:
    derived = {}
    for key, reps in found.items():
        if kind(reps[0][1]) == "eval":
            per = [eval_realised(d) for _, d in reps]
            c = rule(reps[0][1], "confidence")
            derived[f"{key} realised"] = {"median": med(per), "per_round": per, "accuracy": c["accuracy"],
                                          "avg_frames": c["avg_timesteps"]}
    return derived


def derive_tails(found: dict) -> dict:
    """This binary against the previous engine and the Python baseline, and the deadline runs."""
    derived = {}

    def ratio(a: str, b: str, key: str) -> dict | None:
        if a not in found or b not in found:
            return None
        per = per_round(found, a, b, lambda x, y: metrics(x)[key] / metrics(y)[key])
        return {"median": med(per), "per_round": per}

    for model, cs in (("qcfs", (1, 16, 64)), ("fm", (1, 16, 64))):
        for c in cs:
            for other in ("base", "python"):
                a, b = f"seenn-{model}-c{c}", f"{other}-{model}-c{c}"
                for key, label in (("rps", "req/s"), ("p50_ms", "p50"), ("p99_ms", "p99")):
                    r = ratio(a, b, key)
                    if r is not None:
                        derived[f"{model} c{c} {label} seenn ÷ {other}"] = r
    for name in ("seenn", "base"):
        key = f"deadline-{name}-double"
        if key not in found:
            continue
        reps = [metrics(d) for _, d in found[key]]
        half = [metrics(d)["p99_ms"] for _, d in found.get(f"deadline-{name}-half", [])]
        share = lambda r, k: r[k] / r["requests"] if r.get("requests") else None  # noqa: E731
        fixed = os.environ.get("DEADLINE_MS")
        derived[f"deadlines {name}"] = {
            # The deadline each request carried: DEADLINE_MS, else the half-load p99.
            "deadline_ms": float(fixed) if fixed else med(half),
            "half_load_p99_ms": med(half),
            "deadline_exit_share": med([share(r, "deadline_exits") for r in reps]),
            "deadline_exceeded_share": med([share(r, "deadline_exceeded") for r in reps]),
            "deadline_exit_accuracy": med([r["deadline_exit_accuracy"] for r in reps]),
            "accuracy_all_answers": med([r["accuracy"] for r in reps]),
            "answered_rps": med([r["rps"] for r in reps]),
        }
    return derived


def derived_summary(suite: str, derive):
    """A suite whose summary is the medians of its runs plus what ``derive(runs)`` computes from them."""
    def run(out: Path, args) -> dict:
        found = runs(out)
        rows = generic(out)
        derived = derive(found)
        print_derived(derived)
        data = envelope(suite, out, {"runs": rows, "derived": derived})
        write(out, data)
        return data
    return run


def summary_latency(out: Path, args) -> dict:
    found = runs(out)
    rows = generic(out)
    table_rows = []
    for r, e in found.get("eval", []):
        h = dict(found.get("http", [])).get(r)
        z = dict(found.get("healthz", [])).get(r)
        if h is None:
            continue
        c = rule(e, "confidence")
        st = h.get("server_timings_ms") or {}
        table_rows.append({
            "in-process p50": c["latency_p50_ms"], "  queue": c.get("queue_p50_ms"), "  inference": c.get("inference_p50_ms"),
            "  other (submit, reply)": c.get("other_p50_ms"), "HTTP p50": h["latency_ms"]["p50"],
            "  server total": st.get("total_p50"), "    queue": st.get("queue_p50"), "    inference": st.get("inference_p50"),
            "    other (decode, submit, reply)": st.get("other_p50"), "  outside the server": st.get("outside_p50"),
            "GET /healthz p50": z["latency_ms"]["p50"] if z else None,
            "HTTP p50 − in-process p50": h["latency_ms"]["p50"] - c["latency_p50_ms"],
        })
    split = {}
    if table_rows:
        for k in table_rows[0]:
            vals = [row[k] for row in table_rows]
            split[k.strip()] = {"median": med(vals), "per_round": vals}
            print(f"{k:<34} {fmt(med(vals), 3):>8}   per round " + " ".join(fmt(v, 3) for v in vals))
    data = envelope("latency", out, {"runs": rows, "c1_split_ms": split})
    write(out, data)
    return data


def summary_overload(out: Path, args) -> dict:
    reps = {f.stem: load(f) for f in out.glob("*.json") if f.name != "summary.json"}
    res = {}
    for name in ("soak", "capacity", "overload", "after"):
        if name in reps:
            res[name] = metrics(reps[name])
            print(f"{name:9} {line(out / f'{name}.json')}")
    ov = reps.get("overload")
    if ov:
        res["overload_detail"] = {"offered_rps": ov["offered_rps"], "by_status": ov["by_status"],
                                  "rejection_p99_ms": ov["error_latency_ms"]["p99"],
                                  "rejections_with_retry_after": ov["rejections_with_retry_after"],
                                  "server_rss_peak_mb": ov.get("server_rss_peak_mb")}
        print(f"overload: by status {ov['by_status']}, rejections p99 {fmt(ov['error_latency_ms']['p99'], 2)} ms, "
              f"{ov['rejections_with_retry_after']} with Retry-After, RSS peak {fmt(ov.get('server_rss_peak_mb'), 0)} MB")
    if "soak" in reps:
        s = reps["soak"]
        print(f"soak: {s['requests']} requests, {s['errors']} errors, RSS {fmt(s.get('server_rss_mb'), 0)} MB")
    data = envelope("overload", out, {"results": res})
    write(out, data)
    return data


def summary_adaptive(out: Path, args) -> dict:
    reps = {f.stem: load(f) for f in out.glob("*.json") if f.name != "summary.json" and not ROUND.match(f.stem)}
    res = {}
    for name in ("capacity", "half", "fixed", "adaptive_settle", "adaptive", "recover"):
        if name in reps:
            res[name] = metrics(reps[name])
            print(f"{name:16} {line(out / f'{name}.json')}, 429/s {fmt(res[name]['rejected_per_s'], 0)}, "
                  f"server p99 {fmt(res[name]['server_p99_ms'], 1)} ms, accuracy {fmt(100 * (res[name]['accuracy'] or 0), 2)}%")
    if "policy" in reps:
        a = reps["policy"].get("adaptive", {})
        res["policy"] = a
        print(f"objective p99 {a.get('p99_ms')} ms; configured α {a.get('configured_alpha')}, floor {a.get('floor_alpha')}")
    if "final_policy" in reps:
        res["alpha_after_recovery"] = reps["final_policy"].get("alpha")
        print(f"α after the return to half load: {res['alpha_after_recovery']}")
    ab = {}
    found = runs(out)
    for arm in ("a", "b"):
        if arm in found:
            ab[arm] = medians(found[arm])
    if ab:
        table(ab, [("answered req/s", "rps", 0), ("429/s", "rejected_per_s", 0), ("p99 ms", "p99_ms", 1),
                   ("server p99 ms", "server_p99_ms", 1), ("accuracy", "accuracy", 4), ("avg t", "avg_t", 3)])
    data = envelope("adaptive", out, {"phases": res, "ab": ab})
    write(out, data)
    return data


def series(path: Path, model: str, name: str, **labels) -> float:
    total = 0.0
    for ln in path.read_text().splitlines():
        if not ln.startswith(name + "{"):
            continue
        head, value = ln.rsplit(" ", 1)
        if f'model="{model}"' in head and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def summary_shadow(out: Path, args) -> dict:
    model = os.environ.get("MODEL", "fashion-mnist")
    res: dict = {}
    m = out / "agreement_metrics.txt"
    if m.exists():
        agree, disagree = series(m, model, "seenn_shadow_total", agree="true"), series(m, model, "seenn_shadow_total", agree="false")
        n = agree + disagree
        p = agree / n if n else float("nan")
        se = math.sqrt(p * (1 - p) / n) if n else float("nan")
        off = load(out / "offline.json")
        res["agreement"] = {"server": p, "server_se": se, "shadows_ran": n,
                            "dropped": series(m, model, "seenn_shadow_dropped_total"),
                            "offline": off["early_agreement"], "offline_se": off["early_agreement_se"],
                            "offline_early_exits": off["early_exits"],
                            "calibration_expects": series(m, model, "seenn_shadow_expected_agreement")}
        print(f"agreement: server {agree:.0f}/{n:.0f} = {fmt(p, 5)} ± {fmt(se, 5)}; offline {off['early_agree']}/"
              f"{off['early_exits']} = {fmt(off['early_agreement'], 5)}; "
              f"calibration expects {fmt(res['agreement']['calibration_expects'], 5)}")
    found = runs(out)
    for key in sorted({k.rsplit("-", 1)[0] for k in found if k.startswith("cost-c")}):
        per = per_round(found, f"{key}-on", f"{key}-off", lambda a, b: a["throughput_rps"] / b["throughput_rps"])
        b, a = out / f"{key}-metrics-before.txt", out / f"{key}-metrics-after.txt"
        extra = {}
        if a.exists() and b.exists():
            d = {n: series(a, model, n) - series(b, model, n) for n in
                 ("seenn_shadow_total", "seenn_shadow_dropped_total", "seenn_shadow_steps_total", "seenn_request_steps_total")}
            extra = {"shadows_ran": d["seenn_shadow_total"], "dropped": d["seenn_shadow_dropped_total"],
                     "shadow_steps_over_live_steps": d["seenn_shadow_steps_total"] / d["seenn_request_steps_total"]
                     if d["seenn_request_steps_total"] else None}
        res[key] = {"on_over_off_median": med(per), "per_round": per, **extra}
        print(f"{key}: on ÷ off throughput median {fmt(med(per), 3)} (per round {' '.join(fmt(x, 3) for x in per)}); {extra}")
    data = envelope("shadow", out, {"results": res})
    write(out, data)
    return data


def summary_gpu(out: Path, args) -> dict:
    skipped = out / "skipped.txt"
    if skipped.exists():
        reason = skipped.read_text().strip()
        data = envelope("gpu", out, {"skipped": reason})
        print(f"skipped: {reason}")
    else:
        rows = generic(out)
        data = envelope("gpu", out, {"runs": rows})
    write(out, data)
    return data


def summary_repository(out: Path, args) -> dict:
    """benchmarks/repository.py's result: swaps under load, load/unload cycles, broken versions."""
    r = json.loads((out / "repository.json").read_text())
    s, c = r["summary"], r["cycles"]
    print(f"swaps under c={r['concurrency']} load: {s['swaps_ok']}/{s['swaps']} swaps, "
          f"{s['non_2xx_with_swaps']} non-2xx of {s['requests_with_swaps']} requests; "
          f"p99 {fmt(s['p99_with_ms'], 2)} ms with swaps, {fmt(s['p99_without_ms'], 2)} ms without "
          f"(ratio {fmt(s['p99_ratio'], 2)}); swap median {fmt(s['swap_seconds_median'], 3)} s")
    print(f"{c['cycles']} unload/load cycles: RSS {fmt(c['before']['rss_mb'])} -> {fmt(c['after']['rss_mb'])} MB "
          f"(ratio {fmt(c['rss_ratio'], 3)}), fds {c['before']['fds']} -> {c['after']['fds']}, "
          f"threads {c['before']['threads']} -> {c['after']['threads']}")
    for b in r["broken"]:
        print(f"{b['broken']}: HTTP {b['status']}, version {b['serving_after']} still serving: {b['answer']}")
    data = envelope("repository", out, {"summary": s, "cycles": c, "broken": r["broken"]})
    write(out, data)
    return data


def summary_plain(suite: str):
    return derived_summary(suite, lambda found: {})


SUITES = {
    "headline": summary_headline, "latency": summary_latency, "overload": summary_overload, "adaptive": summary_adaptive,
    "shadow": summary_shadow, "gpu": summary_gpu,
    "early-exit": derived_summary("early-exit", derive_early_exit), "batching": derived_summary("batching", derive_batching),
    "workers": derived_summary("workers", derive_workers), "cores": derived_summary("cores", derive_cores),
    "slot-memory": derived_summary("slot-memory", derive_slot_memory), "byo": derived_summary("byo", derive_byo),
    "repository": summary_repository, "tails": derived_summary("tails", derive_tails),
}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "line":
        print(line(Path(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite")
    ap.add_argument("out", type=Path)
    ap.add_argument("--results", help="headline: where headline.json and its reports go")
    ap.add_argument("--write", default="0", help="headline: 1 rewrites BENCHMARKS.md's table")
    ap.add_argument("--context", help="headline: take date, command, params and host from this summary (re-rendering)")
    args = ap.parse_args()
    SUITES.get(args.suite, summary_plain(args.suite))(args.out, args)


if __name__ == "__main__":
    main()
