"""Export a model package: the contract between the trainer and the server (see models/README.md).

Every number written here comes from ONNX Runtime running the exported graphs, so the server (which
runs the same graphs through the same runtime) can reproduce them exactly.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from . import data, seenn
from .models import fold_batchnorm
from .train import PIXEL_SCALE, Normalizer

FORMAT_VERSION = 1
OPSET = 17
PARITY_ATOL = 1e-4
PARITY_MAX_DIFFERING = 0.005
# A converted IF network runs 32 steps with no leak: a membrane within float rounding of the threshold
# (different conv kernels in PyTorch and ONNX Runtime) flips a spike in about 1% of the samples.
PARITY_MAX_DIFFERING_CONVERTED = 0.02
PARITY_MIN_SAME_CLASS = 0.999


class EncoderGraph(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image):
        return self.net.encoder(image)


class StepGraph(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, features, *membranes):
        logits, new = self.net.step(features, list(membranes))
        return (logits, *new)


def onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list, outputs: list):
    """The legacy (TorchScript) exporter, which torch 1.13 and 2.x both have; every axis 0 dynamic."""
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET,
                      dynamic_axes=dynamic, do_constant_folding=True, **kwargs)


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OrtPackage:
    """Runs a package's graphs the way the server does: encoder once, step T times."""

    def __init__(self, folder: Path, manifest: dict):
        g = manifest["graphs"]
        self.manifest = manifest
        self.encoder = ort_session(folder / g["encoder"]["file"])
        self.step = ort_session(folder / g["step"]["file"])
        self.policy = ort_session(folder / g["policy"]["file"]) if "policy" in g else None

    def logits(self, x: np.ndarray, timesteps: int, return_states: bool = False):
        g = self.manifest["graphs"]
        feats = self.encoder.run([g["encoder"]["output"]], {g["encoder"]["input"]: x})[0]
        states = [np.full((len(x), *s["shape"]), s["initial_value"], np.float32) for s in g["step"]["states"]]
        names_out = [g["step"]["logits"]] + [s["output"] for s in g["step"]["states"]]
        out = []
        for _ in range(timesteps):
            feed = {g["step"]["input"]: feats}
            feed.update({s["input"]: v for s, v in zip(g["step"]["states"], states)})
            res = self.step.run(names_out, feed)
            out.append(res[0])
            states = res[1:]
        z = np.stack(out, 1)
        return (z, states) if return_states else z

    def actions(self, x: np.ndarray) -> np.ndarray:
        g = self.manifest["graphs"]["policy"]
        return np.asarray(g["actions"])[self.policy.run([g["output"]], {g["input"]: x})[0].argmax(1)]


def ort_logits(pkg: OrtPackage, split: data.Split, dataset: str, timesteps: int, batch: int = 500, desc=""):
    norm = Normalizer(dataset)
    out = []
    for i in tqdm(range(0, len(split), batch), desc=f"onnxruntime {desc}"):
        out.append(pkg.logits(norm(split.images[i:i + batch]).numpy(), timesteps))
    return np.concatenate(out)


def ort_actions(pkg: OrtPackage, split: data.Split, dataset: str, batch: int = 1000) -> np.ndarray:
    norm = Normalizer(dataset)
    return np.concatenate([pkg.actions(norm(split.images[i:i + batch]).numpy()) for i in range(0, len(split), batch)])


def parity_check(net: nn.Module, pkg: OrtPackage, split: data.Split, dataset: str, timesteps: int,
                 max_differing: float = PARITY_MAX_DIFFERING) -> dict:
    """PyTorch (the exported, BN-folded network) against ONNX Runtime over all T steps. A membrane within
    float rounding of the threshold can spike in one and not the other, so a small reported fraction
    of the samples may differ; the predicted class must agree on >= 99.9%."""
    norm = Normalizer(dataset)
    diffs, same = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(split), 500), desc="parity pytorch vs onnxruntime"):
            x = norm(split.images[i:i + 500])
            zt = net(x, timesteps).permute(1, 0, 2).numpy()
            zo = pkg.logits(x.numpy(), timesteps)
            diffs.append(np.abs(zt - zo).reshape(len(x), -1).max(1))
            same.append(zt.cumsum(1)[:, -1].argmax(-1) == zo.cumsum(1)[:, -1].argmax(-1))
    diffs, same = np.concatenate(diffs), np.concatenate(same)
    result = {"samples": int(len(diffs)), "atol": PARITY_ATOL, "max_abs_diff_median": float(np.median(diffs)),
              "fraction_over_atol": float((diffs > PARITY_ATOL).mean()), "same_class": float(same.mean()),
              "allowed_fraction_over_atol": max_differing}
    if result["fraction_over_atol"] > max_differing or result["same_class"] < PARITY_MIN_SAME_CLASS:
        raise RuntimeError(f"ONNX Runtime disagrees with PyTorch: {result}")
    return result


def make_golden(pkg: OrtPackage, x: np.ndarray, labels: np.ndarray, files: list, alpha: float, temp: float) -> dict:
    """golden.json: each sample run alone (batch 1), as a single request is served. A converted IF
    network over 32 steps can flip a spike between batch sizes (ONNX Runtime's kernels round
    differently), so the reference uses the batch size the server's tests use."""
    t_max = pkg.manifest["timesteps"]
    z = np.concatenate([pkg.logits(x[i:i + 1], t_max) for i in range(len(x))])
    exit_t, pred = seenn.confidence_exit(z, alpha, temp)
    actions = np.concatenate([pkg.actions(x[i:i + 1]) for i in range(len(x))]) if pkg.policy is not None else None
    samples = []
    for i, f in enumerate(files):
        entry = {"file": f, "label": int(labels[i]), "logits": z[i].tolist(), "exit_timestep": int(exit_t[i]),
                 "class_id": int(pred[i])}
        if actions is not None:
            entry["policy_timesteps"] = int(actions[i])
        samples.append(entry)
    return {"rule": "confidence", "alpha": alpha, "temperature": temp, "atol": PARITY_ATOL, "batch_size": 1,
            "samples": samples}


def _manifest(meta: dict, net, info: data.DatasetInfo, state_shapes: list, feat_shape: list, has_policy: bool,
              name: str, version: str, default_alpha: float) -> dict:
    t_max = meta["timesteps"]
    neuron = ({"kind": "lif", "leak": 0.5, "threshold": 1.0, "reset": "hard"} if meta["neuron"] == "lif" else
              {"kind": "if", "thresholds": meta.get("thresholds"), "initial_membrane": 0.5, "reset": "soft",
               "units": "membranes are divided by each layer's threshold"})
    init = 0.0 if meta["neuron"] == "lif" else 0.5
    graphs = {
        "encoder": {"file": "encoder.onnx", "input": "image", "output": "features", "output_shape": feat_shape},
        "step": {"file": "step.onnx", "input": "features", "logits": "logits",
                 "states": [{"input": f"membrane_in_{i}", "output": f"membrane_out_{i}", "shape": s,
                             "initial_value": init} for i, s in enumerate(state_shapes)]},
    }
    if has_policy:
        graphs["policy"] = {"file": "policy.onnx", "input": "image", "output": "action_logits",
                            "actions": list(range(1, t_max + 1))}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "kind": meta["kind"],
        "architecture": meta["arch"],
        "labels": info.labels,
        "input": {"channels": info.channels, "height": info.size, "width": info.size,
                  "color": "grayscale" if info.channels == 1 else "rgb", "scale": PIXEL_SCALE,
                  "mean": list(info.mean), "std": list(info.std), "invert": False, "resize": "bilinear",
                  "layout": "NCHW"},
        "timesteps": t_max,
        "neuron": neuron,
        "exit": {"aggregation": "sum", "temperature": meta["temperature"],
                 "default_rule": "confidence", "default_alpha": default_alpha},
        "graphs": graphs,
    }


def _plot(path: Path, report: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sweep = report["seenn_i_sweep"]
    ax.plot([r["avg_timesteps"] for r in sweep], [100 * r["accuracy"] for r in sweep], "-o", ms=3, label="SEENN-I (α sweep)")
    acc = report["accuracy_per_t"]
    ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], "s--", color="gray", label="fixed T")
    if report.get("seenn_ii_sweep"):
        pts = report["seenn_ii_sweep"]
        ax.plot([p["test"]["avg_timesteps"] for p in pts], [100 * p["test"]["accuracy"] for p in pts], "^",
                color="tab:red", ms=8, label="SEENN-II (β sweep)")
    ax.axvline(report["aet"], color="tab:green", ls=":", label=f"AET = {report['aet']:.3f}")
    ax.set_xlabel("average timesteps")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    lo = min(100 * min(acc), min(100 * r["accuracy"] for r in sweep))
    ax.set_ylim(max(lo - 1, 0), 100 * max(acc) + 0.6)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save_png(img_u8: np.ndarray, path: Path):
    arr = img_u8[0] if img_u8.shape[0] == 1 else np.transpose(img_u8, (1, 2, 0))
    Image.fromarray(arr).save(path)


def export_package(net: nn.Module, meta: dict, val: data.Split, test: data.Split, out: Path, *, name: str,
                   policy: nn.Module | None, run_dir: Path | None, golden_count: int, version: str) -> dict:
    t0 = time.time()
    info = data.DATASETS[meta["dataset"]]
    t_max, temp = meta["timesteps"], meta["temperature"]
    net = net.eval()
    folded = fold_batchnorm(net)
    norm = Normalizer(meta["dataset"])
    example = norm(val.images[:2])
    states = folded.initial_states(example)
    feats = folded.encoder(example)
    state_shapes = [list(s.shape[1:]) for s in states]

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent if out.parent.exists() else None))
    try:
        onnx_export(EncoderGraph(folded), (example,), tmp / "encoder.onnx", ["image"], ["features"])
        onnx_export(StepGraph(folded), (feats, *states), tmp / "step.onnx", ["features"] + [f"membrane_in_{i}" for i in range(len(states))],
                    ["logits"] + [f"membrane_out_{i}" for i in range(len(states))])
        if policy is not None:
            onnx_export(fold_batchnorm(policy), (example,), tmp / "policy.onnx", ["image"], ["action_logits"])
        manifest = _manifest(meta, net, info, state_shapes, list(feats.shape[1:]), policy is not None, name,
                             version, default_alpha=0.9)
        pkg = OrtPackage(tmp, manifest)

        allowed = PARITY_MAX_DIFFERING_CONVERTED if meta["neuron"] == "if" else PARITY_MAX_DIFFERING
        parity = parity_check(folded, pkg, val.subset(2000), meta["dataset"], t_max, allowed)
        z_val = ort_logits(pkg, val, meta["dataset"], t_max, desc="validation")
        z_test = ort_logits(pkg, test, meta["dataset"], t_max, desc="test")
        full_val = seenn.accuracy_per_t(z_val, val.labels)[-1]
        val_sweep = seenn.alpha_sweep(z_val, val.labels, temp)
        chosen = seenn.choose_alpha(val_sweep, full_val, 0.001)
        manifest["exit"]["default_alpha"] = chosen["alpha"]

        calibration = {
            "split": "validation", "samples": int(len(val)), "accuracy_per_t": seenn.accuracy_per_t(z_val, val.labels),
            "aet": seenn.aet(z_val, val.labels), "empirical_earliest": seenn.empirical_earliest(z_val, val.labels),
            "temperature": temp, "chosen_alpha": chosen["alpha"],
            "chosen_by": "smallest alpha whose validation accuracy is within 0.1 pp of full T",
            "alpha_sweep": val_sweep,
        }
        test_exit = seenn.summarize(*seenn.confidence_exit(z_test, chosen["alpha"], temp), test.labels, t_max)
        report = {
            "split": "test", "samples": int(len(test)), "accuracy_per_t": seenn.accuracy_per_t(z_test, test.labels),
            "aet": seenn.aet(z_test, test.labels), "empirical_earliest": seenn.empirical_earliest(z_test, test.labels),
            "seenn_i": {"alpha": chosen["alpha"], **test_exit}, "seenn_i_sweep": seenn.alpha_sweep(z_test, test.labels, temp),
            "parity": parity,
        }
        if policy is not None:
            a_val, a_test = ort_actions(pkg, val, meta["dataset"]), ort_actions(pkg, test, meta["dataset"])
            calibration["policy"] = seenn.summarize(*seenn.fixed_exit(z_val, a_val), val.labels, t_max)
            report["seenn_ii"] = seenn.summarize(*seenn.fixed_exit(z_test, a_test), test.labels, t_max)
            if run_dir is not None and (run_dir / "policy_sweep.json").exists():
                ps = json.loads((run_dir / "policy_sweep.json").read_text())
                report["seenn_ii"]["beta"] = ps["chosen_beta"]
                report["seenn_ii_sweep"] = ps["sweep"]

        # Golden samples: PNGs and their ONNX Runtime logits at every t.
        (tmp / "samples").mkdir()
        gold_split = test.subset(min(golden_count, len(test)))
        files = []
        for i in range(len(gold_split)):
            label = info.labels[gold_split.labels[i]].replace("/", "-").replace(" ", "-").lower()
            files.append(f"samples/{i:03d}_{label}.png")
            _save_png(gold_split.images[i], tmp / files[-1])
        golden = make_golden(pkg, norm(gold_split.images).numpy(), gold_split.labels, files, chosen["alpha"], temp)

        meta_out = {k: v for k, v in meta.items() if k != "history"}
        report["training"] = {"train_seconds": meta.get("train_seconds"), "history": meta.get("history"),
                              "export_seconds": None, "meta": meta_out}
        report["export_seconds"] = time.time() - t0
        for fname, obj in (("manifest.json", manifest), ("calibration.json", calibration), ("golden.json", golden),
                           ("report.json", report)):
            (tmp / fname).write_text(json.dumps(obj, indent=1) + "\n")
        _plot(tmp / "accuracy_vs_timesteps.png", report, f"{name}: accuracy vs average timesteps (test)")
        from .card import model_card
        (tmp / "MODEL_CARD.md").write_text(model_card(manifest, calibration, report))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), str(out))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(json.dumps({"package": str(out), "parity": parity, "seenn_i": report["seenn_i"],
                      "seenn_ii": report.get("seenn_ii")}, indent=1))
    return report
