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

# 2: optional `graphs.exit` (the learned exit rule, exit.onnx) and `exit.default_threshold`; packages
# of format 1 are still valid format-2 packages without those fields.
FORMAT_VERSION = 2
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


class ExitGraph(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, aggregate, timestep):
        return self.head(aggregate, timestep)


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
        self.exit = ort_session(folder / g["exit"]["file"]) if "exit" in g else None

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

    def action_logits(self, x: np.ndarray) -> np.ndarray:
        g = self.manifest["graphs"]["policy"]
        return self.policy.run([g["output"]], {g["input"]: x})[0]

    def actions(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.manifest["graphs"]["policy"]["actions"])[self.action_logits(x).argmax(1)]

    def exit_scores(self, z: np.ndarray, batch: int | None = None) -> np.ndarray:
        """The learned rule's stop probability after every step, ``[N, T]``: exit.onnx fed the running
        sum Z_t (accumulated in float64, passed as float32) and t, as the server does."""
        g = self.manifest["graphs"]["exit"]
        agg = seenn.cumulative(z).astype(np.float32)
        n, t_max, _ = agg.shape
        batch = batch or n
        out = np.zeros((n, t_max), np.float32)
        for t in range(t_max):
            for i in range(0, n, batch):
                feed = {g["aggregate_input"]: np.ascontiguousarray(agg[i:i + batch, t]),
                        g["timestep_input"]: np.full((len(agg[i:i + batch]), 1), t + 1, np.float32)}
                out[i:i + batch, t] = self.exit.run([g["output"]], feed)[0][:, 0]
        return out


def ort_logits(pkg: OrtPackage, split: data.Split, dataset: str, timesteps: int, batch: int = 500, desc=""):
    norm = Normalizer(dataset)
    out = []
    for i in tqdm(range(0, len(split), batch), desc=f"onnxruntime {desc}"):
        out.append(pkg.logits(norm(split.images[i:i + batch]).numpy(), timesteps))
    return np.concatenate(out)


def ort_actions(pkg: OrtPackage, split: data.Split, dataset: str, batch: int = 1000) -> np.ndarray:
    norm = Normalizer(dataset)
    return np.concatenate([pkg.actions(norm(split.images[i:i + batch]).numpy()) for i in range(0, len(split), batch)])


def ort_action_logits(pkg: OrtPackage, split: data.Split, dataset: str, batch: int = 1000) -> np.ndarray:
    norm = Normalizer(dataset)
    return np.concatenate([pkg.action_logits(norm(split.images[i:i + batch]).numpy())
                           for i in range(0, len(split), batch)])


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


def make_golden(pkg: OrtPackage, x: np.ndarray, labels: np.ndarray, files: list, alpha: float, temp: float,
                threshold: float | None = None) -> dict:
    """golden.json: each sample run alone (batch 1), as a single request is served. A converted IF
    network over 32 steps can flip a spike between batch sizes (ONNX Runtime's kernels round
    differently), so the reference uses the batch size the server's tests use."""
    t_max = pkg.manifest["timesteps"]
    z = np.concatenate([pkg.logits(x[i:i + 1], t_max) for i in range(len(x))])
    exit_t, pred = seenn.confidence_exit(z, alpha, temp)
    actions = np.concatenate([pkg.actions(x[i:i + 1]) for i in range(len(x))]) if pkg.policy is not None else None
    learned = None
    if pkg.exit is not None and threshold is not None:
        from .exit_head import score_exit

        scores = pkg.exit_scores(z, batch=1)
        learned = (scores, *score_exit(z, scores, threshold))
    samples = []
    for i, f in enumerate(files):
        entry = {"file": f, "label": int(labels[i]), "logits": z[i].tolist(), "exit_timestep": int(exit_t[i]),
                 "class_id": int(pred[i])}
        if actions is not None:
            entry["policy_timesteps"] = int(actions[i])
        if learned is not None:
            entry["learned_scores"] = [float(v) for v in learned[0][i]]
            entry["learned_exit_timestep"] = int(learned[1][i])
            entry["learned_class_id"] = int(learned[2][i])
        samples.append(entry)
    golden = {"rule": "confidence", "alpha": alpha, "temperature": temp, "atol": PARITY_ATOL, "batch_size": 1,
              "samples": samples}
    if learned is not None:
        golden["learned_threshold"] = threshold
        # How close any golden score comes to the threshold (a rounding difference larger than this
        # could flip an exit step).
        golden["learned_min_margin"] = float(np.abs(learned[0][:, :-1] - threshold).min())
    return golden


def _manifest(meta: dict, net, info: data.DatasetInfo, state_shapes: list, feat_shape: list, has_policy: bool,
              name: str, version: str, default_alpha: float, has_exit: bool = False) -> dict:
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
    if has_exit:
        from .exit_head import EXIT_INPUTS, EXIT_OUTPUT

        graphs["exit"] = {"file": "exit.onnx", "aggregate_input": EXIT_INPUTS[0], "timestep_input": EXIT_INPUTS[1],
                          "output": EXIT_OUTPUT}
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


def _pareto(rows: list) -> list:
    """The rows no other row beats on both accuracy and average timesteps, by average timesteps."""
    rows = sorted(rows, key=lambda r: (r["avg_timesteps"], -r["accuracy"]))
    out, best = [], -1.0
    for r in rows:
        if r["accuracy"] > best:
            out.append(r)
            best = r["accuracy"]
    return out


def _plot(path: Path, report: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 5.2))
    sweep = report["seenn_i_sweep"]
    ax.plot([r["avg_timesteps"] for r in sweep], [100 * r["accuracy"] for r in sweep], "-o", ms=3, color="tab:blue",
            label="SEENN-I (α sweep)")
    acc = report["accuracy_per_t"]
    ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], "s--", color="gray", label="fixed t")
    colors = ["tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "tab:gray"]
    variants = report.get("seenn_ii_variants") or []
    for i, v in enumerate(variants):
        pts = _pareto(v["test_curve"])
        label = f"SEENN-II {v['variant']}" + (f" β={v['beta']}" if v.get("beta") is not None else "") + " (bias sweep)"
        ax.plot([r["avg_timesteps"] for r in pts], [100 * r["accuracy"] for r in pts], "-", lw=1,
                color=colors[i % len(colors)], alpha=0.8, label=label)
    if report.get("seenn_ii"):
        s2 = report["seenn_ii"]
        ax.plot([s2["avg_timesteps"]], [100 * s2["accuracy"]], "^", color="tab:red", ms=9, label="SEENN-II default")
    if report.get("learned_sweep"):
        pts = _pareto(report["learned_sweep"])
        ax.plot([r["avg_timesteps"] for r in pts], [100 * r["accuracy"] for r in pts], "-", lw=2, color="tab:purple",
                label="learned exit (threshold sweep)")
        lr = report["learned"]
        ax.plot([lr["avg_timesteps"]], [100 * lr["accuracy"]], "*", color="tab:purple", ms=13, label="learned default")
    if report.get("oracle_curve"):
        pts = report["oracle_curve"]
        ax.plot([r["avg_timesteps"] for r in pts], [100 * r["accuracy"] for r in pts], ":", lw=2, color="tab:green",
                label="oracle: exits chosen with the labels")
    si = report["seenn_i"]
    ax.plot([si["avg_timesteps"]], [100 * si["accuracy"]], "D", color="tab:blue", ms=7, label="SEENN-I default")
    ax.plot([report["aet"]], [100 * acc[-1]], "P", color="tab:green", ms=10, label=f"AET = {report['aet']:.3f}")
    ax.set_xlabel("average timesteps")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(100 * acc[-1] - 3.0, 100 * max(acc) + 0.6)
    ax.set_xlim(0.95, len(acc) + 0.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save_png(img_u8: np.ndarray, path: Path):
    arr = img_u8[0] if img_u8.shape[0] == 1 else np.transpose(img_u8, (1, 2, 0))
    Image.fromarray(arr).save(path)


def export_package(net: nn.Module, meta: dict, val: data.Split, test: data.Split, out: Path, *, name: str,
                   policy: nn.Module | None, run_dir: Path | None, golden_count: int, version: str,
                   exit_head: nn.Module | None = None) -> dict:
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
        if exit_head is not None:
            from .exit_head import EXIT_INPUTS, EXIT_OUTPUT

            k = len(info.labels)
            onnx_export(ExitGraph(exit_head.eval()), (torch.randn(2, k), torch.ones(2, 1)), tmp / "exit.onnx",
                        list(EXIT_INPUTS), [EXIT_OUTPUT])
        manifest = _manifest(meta, net, info, state_shapes, list(feats.shape[1:]), policy is not None, name,
                             version, default_alpha=0.9, has_exit=exit_head is not None)
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
        t_exit, t_pred = seenn.confidence_exit(z_test, chosen["alpha"], temp)
        test_exit = {**seenn.summarize(t_exit, t_pred, test.labels, t_max),
                     "agreement_with_full_t": seenn.agreement_with_full_t(z_test, t_pred)}
        report = {
            "split": "test", "samples": int(len(test)), "accuracy_per_t": seenn.accuracy_per_t(z_test, test.labels),
            "aet": seenn.aet(z_test, test.labels), "empirical_earliest": seenn.empirical_earliest(z_test, test.labels),
            "seenn_i": {"alpha": chosen["alpha"], **test_exit}, "seenn_i_sweep": seenn.alpha_sweep(z_test, test.labels, temp),
            "oracle_curve": seenn.oracle_curve(z_test, test.labels),
            "parity": parity,
        }
        if policy is not None:
            l_val, l_test = ort_action_logits(pkg, val, meta["dataset"]), ort_action_logits(pkg, test, meta["dataset"])
            a_val, a_test = l_val.argmax(1) + 1, l_test.argmax(1) + 1
            calibration["policy"] = seenn.summarize(*seenn.fixed_exit(z_val, a_val), val.labels, t_max)
            calibration["policy"]["agreement_with_full_t"] = seenn.agreement_with_full_t(
                z_val, seenn.fixed_exit(z_val, a_val)[1])
            report["seenn_ii"] = seenn.summarize(*seenn.fixed_exit(z_test, a_test), test.labels, t_max)
            # The exported graph already adds the default bias: the sweep's biases are relative to it.
            base = float(getattr(policy, "bias_scale", 0.0))
            rel = [round(sc - base, 6) for sc in seenn.BIAS_SCALES]
            calibration["policy"]["bias_sweep"] = seenn.bias_sweep(z_val, val.labels, l_val, rel)
            report["seenn_ii_bias_sweep"] = seenn.bias_sweep(z_test, test.labels, l_test, rel)
            if run_dir is not None and (run_dir / "policy_sweep.json").exists():
                ps = json.loads((run_dir / "policy_sweep.json").read_text())
                report["seenn_ii"]["variant"] = ps.get("chosen_variant")
                report["seenn_ii"]["beta"] = ps.get("chosen_beta")
                report["seenn_ii"]["bias_scale"] = base
                report["seenn_ii_variants"] = ps.get("variants")
        if exit_head is not None:
            from .exit_head import fine_thresholds, score_exit, threshold_sweep

            s_val, s_test = pkg.exit_scores(z_val), pkg.exit_scores(z_test)
            l_sweep = threshold_sweep(z_val, val.labels, s_val, fine_thresholds(s_val))
            l_best = seenn.fewest_steps_at(l_sweep, chosen["accuracy"])
            l_by = "fewest validation timesteps with validation accuracy at least SEENN-I's at the default alpha"
            if l_best is None:
                l_best = max(l_sweep, key=lambda r: (r["accuracy"], -r["avg_timesteps"]))
                l_by = "no threshold reaches SEENN-I's validation accuracy: the most accurate"
            threshold = l_best["threshold"]
            manifest["exit"]["default_threshold"] = threshold
            calibration["learned"] = {"chosen_threshold": threshold, "chosen_by": l_by, "threshold_sweep": l_sweep}
            t_exit, t_pred = score_exit(z_test, s_test, threshold)
            report["learned"] = {"threshold": threshold, **seenn.summarize(t_exit, t_pred, test.labels, t_max),
                                 "agreement_with_full_t": seenn.agreement_with_full_t(z_test, t_pred)}
            report["learned_sweep"] = threshold_sweep(z_test, test.labels, s_test, fine_thresholds(s_test))
            if run_dir is not None and (run_dir / "exit_sweep.json").exists():
                es = json.loads((run_dir / "exit_sweep.json").read_text())
                report["learned"]["target"] = es["variants"][es["chosen"]]["target"]
                report["learned_variants"] = es["variants"]
                calibration["learned"]["trained_on"] = (f"held-out split of the training file, {es['holdout_rows']} "
                                                        "rows with augmented copies")

        # Golden samples: PNGs and their ONNX Runtime logits at every t.
        (tmp / "samples").mkdir()
        gold_split = test.subset(min(golden_count, len(test)))
        files = []
        for i in range(len(gold_split)):
            label = info.labels[gold_split.labels[i]].replace("/", "-").replace(" ", "-").lower()
            files.append(f"samples/{i:03d}_{label}.png")
            _save_png(gold_split.images[i], tmp / files[-1])
        golden = make_golden(pkg, norm(gold_split.images).numpy(), gold_split.labels, files, chosen["alpha"], temp,
                             threshold=manifest["exit"].get("default_threshold"))

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
        out.chmod(0o755)  # mkdtemp makes it private; a package is read by the server's user
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(json.dumps({"package": str(out), "parity": parity, "seenn_i": report["seenn_i"],
                      "seenn_ii": report.get("seenn_ii")}, indent=1))
    return report
