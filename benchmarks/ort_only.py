#!/usr/bin/env python3
"""ONNX Runtime alone: the engine's work on a model package with nothing else around it.

One process per core (``--procs``), each with its own sessions (intra-op 1, inter-op 1, graph
optimisation ``ORT_ENABLE_ALL`` as ``src/runtime.rs``) and its own continuous batch of up to
``--max-batch`` requests: at every step newcomers fill the free rows (the encoder once for all of
them), ``step.onnx`` runs once for every active request with its membranes fed back, each request
adds its logits to its running sum (float64) and leaves when the max softmax of that sum exceeds α
(SEENN-I) or at T. The images are the Fashion-MNIST test images preprocessed as ``seenn eval`` does
them, split round-robin among the processes; throughput is images over the wall time from the first
process's start to the last one's end (sessions are built before the clock starts).

    .venv/bin/python benchmarks/ort_only.py --model models/fashion-mnist --limit 2000 --procs 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (optionally gzip-compressed) as an array of its dims."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:3] != b"\x00\x00\x08":
        raise SystemExit(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    header = 4 + 4 * ndim
    return np.frombuffer(raw[header : header + count], dtype=np.uint8).reshape(dims)


def find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise SystemExit(f"{data_dir}: no {stem}[.gz]")


def load_test_images(data_dir: Path, limit: int, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` test images as the server's preprocessing makes them (src/preprocess.rs:
    x = v * scale, optionally 1 - x, then (x - mean) / std, all in float32), and their labels."""
    images = read_idx(find(data_dir, "t10k-images-idx3-ubyte"))[:limit]
    labels = read_idx(find(data_dir, "t10k-labels-idx1-ubyte"))[:limit].astype(np.int64)
    c, h, w = spec["channels"], spec["height"], spec["width"]
    if c != 1 or images.shape[1:] != (h, w):
        raise SystemExit(f"the model takes {c}x{h}x{w}; the IDX images are 1x{images.shape[1]}x{images.shape[2]}")
    x = images.astype(np.float32) * np.float32(spec["scale"])
    if spec.get("invert"):
        x = np.float32(1.0) - x
    x = (x - np.float32(spec["mean"][0])) / np.float32(spec["std"][0])
    return np.ascontiguousarray(x.reshape(-1, c, h, w), dtype=np.float32), labels


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def worker(rank: int, model: str, images: np.ndarray, alpha: float, max_batch: int, barrier, done, results) -> None:
    """Runs the continuous batch over ``images``; puts (rank, start, end, timesteps used, classes, CPU
    seconds). ``done`` counts finished images for the progress bar (``None``: no bar, no shared counter)."""
    pkg = Path(model)
    manifest = json.loads((pkg / "manifest.json").read_text())
    g = manifest["graphs"]
    t_max = manifest["timesteps"]
    temperature = manifest["exit"].get("temperature", 1.0)
    mean_agg = manifest["exit"].get("aggregation", "sum") == "mean"
    enc_g, step_g = g.get("encoder"), g["step"]
    enc = session(pkg / enc_g["file"]) if enc_g else None
    step = session(pkg / step_g["file"])
    states = step_g["states"]
    feat_shape = tuple(enc_g["output_shape"]) if enc_g else images.shape[1:]
    classes = len(manifest["labels"])

    # The batch: rows 0..n are the active requests; a request that leaves is replaced by the last row.
    # Each membrane state has two buffers: a step reads mems[k][cur] and ONNX Runtime writes the next
    # membranes straight into mems[k][1 - cur] (I/O binding to the buffers), then the sides swap.
    feats = np.zeros((max_batch, *feat_shape), np.float32)
    mems = [[np.zeros((max_batch, *s["shape"]), np.float32) for _ in range(2)] for s in states]
    logits = np.zeros((max_batch, classes), np.float32)
    sums = np.zeros((max_batch, classes), np.float64)
    steps = np.zeros(max_batch, np.int64)
    ids = np.zeros(max_batch, np.int64)

    def bind(fn, name: str, arr: np.ndarray, first: int, rows: int) -> None:
        view = arr[first : first + rows]
        fn(name, "cpu", 0, np.float32, list(view.shape), view.ctypes.data)

    bindings: dict = {}

    def step_binding(n: int, cur: int):
        """The step's inputs and outputs for rows 0..n, made once per (n, side) and reused."""
        b = bindings.get((n, cur))
        if b is None:
            b = step.io_binding()
            bind(b.bind_input, step_g["input"], feats, 0, n)
            bind(b.bind_output, step_g["logits"], logits, 0, n)
            for st, pair in zip(states, mems):
                bind(b.bind_input, st["input"], pair[cur], 0, n)
                bind(b.bind_output, st["output"], pair[1 - cur], 0, n)
            bindings[(n, cur)] = b
        return b

    def encode(new: np.ndarray, first: int) -> None:
        """The encoder once over the newcomers, straight into feature rows first.."""
        if enc is None:
            feats[first : first + len(new)] = new
            return
        b = enc.io_binding()
        bind(b.bind_input, enc_g["input"], new, 0, len(new))
        bind(b.bind_output, enc_g["output"], feats, first, len(new))
        enc.run_with_iobinding(b)

    # Warm-up (as the server's load does): one batch-1 run of each graph.
    encode(np.ascontiguousarray(images[:1]), 0)
    step.run_with_iobinding(step_binding(1, 0))

    used = np.zeros(len(images), np.int64)
    classes_out = np.zeros(len(images), np.int64)
    barrier.wait()
    start, cpu0 = time.perf_counter(), time.process_time()
    nxt, n, finished, cur = 0, 0, 0, 0
    while finished < len(images):
        m = min(max_batch - n, len(images) - nxt)
        if m > 0:
            encode(images[nxt : nxt + m], n)
            for st, pair in zip(states, mems):
                pair[cur][n : n + m] = st["initial_value"]
            sums[n : n + m] = 0.0
            steps[n : n + m] = 0
            ids[n : n + m] = np.arange(nxt, nxt + m)
            nxt += m
            n += m
        step.run_with_iobinding(step_binding(n, cur))
        cur = 1 - cur
        sums[:n] += logits[:n]
        steps[:n] += 1
        agg = sums[:n] / steps[:n, None] if mean_agg else sums[:n]
        z = agg / temperature
        z = z - z.max(axis=1, keepdims=True)
        score = 1.0 / np.exp(z).sum(axis=1)  # max softmax: exp(0) / sum
        leave = (score > alpha) | (steps[:n] >= t_max)
        # Highest row first, so the last row that moves down never leaves in this step.
        for i in np.flatnonzero(leave)[::-1]:
            used[ids[i]] = steps[i]
            classes_out[ids[i]] = int(np.argmax(agg[i]))
            last = n - 1
            if i != last:
                feats[i] = feats[last]
                for pair in mems:
                    pair[cur][i] = pair[cur][last]
                sums[i] = sums[last]
                steps[i] = steps[last]
                ids[i] = ids[last]
            n -= 1
            finished += 1
        if done is not None and leave.any():
            with done.get_lock():
                done.value += int(leave.sum())
    end, cpu = time.perf_counter(), time.process_time() - cpu0
    results.put((rank, start, end, used, classes_out, cpu))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/fashion-mnist")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=2000, help="the first N test images")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes (one per core)")
    ap.add_argument("--max-batch", type=int, default=8, help="rows of each process's batch (the server's default)")
    ap.add_argument("--alpha", type=float, help="SEENN-I α (default: the manifest's default_alpha)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    manifest = json.loads((Path(args.model) / "manifest.json").read_text())
    alpha = args.alpha if args.alpha is not None else manifest["exit"]["default_alpha"]
    t_max = manifest["timesteps"]
    images, labels = load_test_images(Path(args.data_dir), args.limit, manifest["input"])
    procs = max(1, args.procs)

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    show = sys.stderr.isatty()
    done = ctx.Value("q", 0) if show else None
    results = ctx.Queue()
    shares = [np.arange(len(images))[p::procs] for p in range(procs)]
    workers = [
        ctx.Process(target=worker, args=(r, args.model, images[s], alpha, args.max_batch, barrier, done, results))
        for r, s in enumerate(shares)
    ]
    for w in workers:
        w.start()

    bar = None
    if show:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(images), unit="img", file=sys.stderr, leave=False)
        except ImportError:
            bar = None
    got = []
    while len(got) < procs:
        try:
            got.append(results.get(timeout=0.2))
        except queue.Empty:
            # A process that failed leaves the others waiting at the barrier: stop them all.
            if any(w.exitcode not in (None, 0) for w in workers):
                for w in workers:
                    w.terminate()
                raise SystemExit("a worker process failed (see its traceback above)") from None
        if bar is not None:
            bar.n = done.value
            bar.refresh()
    if bar is not None:
        bar.close()
    for w in workers:
        w.join()

    used = np.zeros(len(images), np.int64)
    pred = np.zeros(len(images), np.int64)
    for rank, _, _, u, c, _ in got:
        used[shares[rank]], pred[shares[rank]] = u, c
    starts = [r[1] for r in got]
    ends = [r[2] for r in got]
    wall = max(ends) - min(starts)
    report = {
        "model": manifest["name"],
        "images": len(images),
        "procs": procs,
        "max_batch": args.max_batch,
        "alpha": alpha,
        "avg_timesteps": float(used.mean()),
        "accuracy": float((pred == labels).mean()),
        "exits_per_t": [int((used == t).sum()) for t in range(1, t_max + 1)],
        "seconds": wall,
        "process_seconds": [r[2] - r[1] for r in sorted(got)],
        "cpu_seconds": [r[5] for r in sorted(got)],
        "images_per_s": len(images) / wall,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['model']}: {report['images']} images, {procs} process(es), batch ≤ {args.max_batch}, α = {alpha}: "
            f"{report['images_per_s']:.1f} images/s, avg t {report['avg_timesteps']:.3f}, "
            f"accuracy {100 * report['accuracy']:.2f}%, exits per t {report['exits_per_t']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
