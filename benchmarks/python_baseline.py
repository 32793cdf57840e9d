"""The Python baseline of the headline: a minimal FastAPI + uvicorn + ONNX Runtime server for one
image model package, with nothing of seenn's engine: every request runs the package's encoder once
and its step graph for all T timesteps (fixed T, no early exit, no batching), one request at a time
per uvicorn worker (the handler is ``async`` and runs ONNX Runtime on the event loop).

``--exit confidence`` makes it the Python alternative with SEENN-I: each request stops at the first
timestep whose max softmax of the aggregated logits (the manifest's aggregation and temperature)
exceeds the manifest's ``default_alpha``, as seenn's default policy does; still one request at a
time per worker.

It answers POST /classify and /v1/models/<name>/classify with an image body (PNG, JPEG, ...) as
seenn does, with the fields ``seenn bench`` reads (``class_id``, ``timesteps_used``), and
GET /healthz and /readyz. Preprocessing follows the manifest as ``src/preprocess.rs`` does
(grayscale or RGB, bilinear resize to the model size, ``x * scale``, optional ``1 - x``,
``(x - mean) / std``); ONNX Runtime sessions use one intra-op thread, as seenn's do.

    .venv/bin/python benchmarks/python_baseline.py --model models/fashion-mnist --port 18900 [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

ENV_MODEL = "SEENN_BASELINE_MODEL"
ENV_EXIT = "SEENN_BASELINE_EXIT"


class Package:
    """A model package's encoder and step graph, run for a fixed T."""

    def __init__(self, pkg: Path) -> None:
        self.manifest = json.loads((pkg / "manifest.json").read_text())
        if self.manifest["input"].get("kind", "image") != "image":
            raise SystemExit(f"{pkg}: the baseline serves image packages only")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(pkg / name), opts, providers=["CPUExecutionProvider"])

        g = self.manifest["graphs"]
        self.enc_g, self.step_g = g.get("encoder"), g["step"]
        self.enc = session(self.enc_g["file"]) if self.enc_g else None
        self.step = session(self.step_g["file"])
        self.t = int(self.manifest["timesteps"])
        self.labels = self.manifest["labels"]
        self.name = self.manifest["name"]
        rule = os.environ.get(ENV_EXIT, "fixed")
        self.alpha = float(self.manifest["exit"]["default_alpha"]) if rule == "confidence" else None

    def preprocess(self, body: bytes) -> np.ndarray:
        spec = self.manifest["input"]
        c, h, w = spec["channels"], spec["height"], spec["width"]
        img = Image.open(io.BytesIO(body))
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1) * np.float32(spec["scale"])
        if spec.get("invert"):
            x = np.float32(1.0) - x
        mean = np.asarray(spec["mean"], np.float32).reshape(c, 1, 1)
        std = np.asarray(spec["std"], np.float32).reshape(c, 1, 1)
        return ((x - mean) / std)[None].astype(np.float32)

    def exits(self, total: np.ndarray, t: int) -> bool:
        """The SEENN-I rule on the running sum after t steps (always false at fixed T)."""
        if self.alpha is None:
            return False
        e = self.manifest["exit"]
        agg = total / t if e.get("aggregation", "mean") == "mean" else total
        z = agg / float(e.get("temperature", 1.0))
        p = np.exp(z - z.max())
        return float(p.max() / p.sum()) > self.alpha

    def classify(self, x: np.ndarray) -> tuple[int, int]:
        """The class and the timesteps run."""
        if self.enc is not None:
            x = self.enc.run([self.enc_g["output"]], {self.enc_g["input"]: x})[0]
        states = {s["input"]: np.full((1, *s["shape"]), s["initial_value"], np.float32) for s in self.step_g["states"]}
        outputs = [self.step_g["logits"]] + [s["output"] for s in self.step_g["states"]]
        total, last = None, self.manifest["exit"].get("aggregation") == "last"
        for t in range(1, self.t + 1):
            out = self.step.run(outputs, {self.step_g["input"]: x, **states})
            logits = out[0][0].astype(np.float64)
            total = logits if total is None or last else total + logits
            states = {s["input"]: v for s, v in zip(self.step_g["states"], out[1:])}
            if self.exits(total, t):
                return int(np.argmax(total)), t
        return int(np.argmax(total)), self.t


app = FastAPI()
_package: Package | None = None


def package() -> Package:
    global _package
    if _package is None:
        _package = Package(Path(os.environ[ENV_MODEL]))
    return _package


@app.on_event("startup")
def _load() -> None:
    package()


async def _classify(request: Request) -> JSONResponse:
    p = package()
    body = await request.body()
    try:
        x = p.preprocess(body)
    except Exception as e:  # noqa: BLE001 - any undecodable body is the client's error
        return JSONResponse({"error": f"cannot decode the image: {e}"}, status_code=400)
    cls, t = p.classify(x)
    return JSONResponse({"model": p.name, "class_id": cls, "label": p.labels[cls], "timesteps_used": t})


@app.post("/classify")
async def classify(request: Request) -> JSONResponse:
    return await _classify(request)


@app.post("/v1/models/{name}/classify")
async def classify_model(name: str, request: Request) -> JSONResponse:
    if name != package().name:
        return JSONResponse({"error": f"no model {name}"}, status_code=404)
    return await _classify(request)


@app.get("/healthz")
@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ok"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an image model package folder")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--exit", choices=["fixed", "confidence"], default="fixed",
                    help="fixed: every request runs T steps; confidence: SEENN-I at the manifest's default_alpha")
    args = ap.parse_args()
    import uvicorn

    os.environ[ENV_MODEL] = str(Path(args.model).resolve())
    os.environ[ENV_EXIT] = args.exit
    package()  # fail here, before the workers start, on a package it cannot serve
    uvicorn.run("python_baseline:app", app_dir=str(Path(__file__).parent), host=args.host, port=args.port,
                workers=args.workers, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
