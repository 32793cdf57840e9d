"""MODEL_CARD.md from the manifest, the calibration table and the test report."""

from __future__ import annotations


def _pct(x) -> str:
    return f"{100 * x:.2f}%"


def model_card(manifest: dict, calibration: dict, report: dict) -> str:
    t_max = manifest["timesteps"]
    train = report.get("training", {})
    meta = train.get("meta", {})
    lines = [
        f"# {manifest['name']} (version {manifest['version']})",
        "",
        f"- Kind: {manifest['kind']} ({manifest['architecture']}), T = {t_max}, neuron: {manifest['neuron']['kind']}",
        f"- Input: {manifest['input']['channels']}×{manifest['input']['height']}×{manifest['input']['width']} "
        f"{manifest['input']['color']}, scaled by 1/255, normalised with mean {manifest['input']['mean']} "
        f"and std {manifest['input']['std']}",
        f"- Labels: {', '.join(manifest['labels'])}",
        f"- Exit score: max softmax of the cumulative {manifest['exit']['aggregation']} of logits / "
        f"{manifest['exit']['temperature']}; default rule {manifest['exit']['default_rule']}, "
        f"α = {manifest['exit']['default_alpha']} (chosen on validation: {calibration['chosen_by']})",
    ]
    if meta.get("command"):
        lines.append(f"- Made by: `python -m seenn_train {meta['command']}`")
    if train.get("train_seconds"):
        lines.append(f"- Training time on this project's 2-core CPU machine: {train['train_seconds'] / 60:.1f} min "
                     f"({meta.get('epochs')} epochs, {meta.get('train_samples')} training images)")
    if manifest["kind"] == "benchmark":
        lines += ["", "**For speed measurements only: untrained (random) weights; its accuracy means nothing.**"]
    lines += ["", "All numbers below were computed by ONNX Runtime on the exported graphs "
              "(the same graphs the server runs).", "",
              "## Results (test set; nothing was chosen on it)", "",
              "| t | " + " | ".join(str(t) for t in range(1, t_max + 1)) + " |",
              "|---|" + "---|" * t_max,
              "| accuracy | " + " | ".join(_pct(a) for a in report["accuracy_per_t"]) + " |", ""]
    si = report["seenn_i"]
    lines += ["| method | setting | accuracy | avg timesteps |", "|---|---|---|---|",
              f"| full T | T = {t_max} | {_pct(report['accuracy_per_t'][-1])} | {t_max} |",
              f"| AET (oracle, paper's formula) | | {_pct(report['accuracy_per_t'][-1])} | {report['aet']:.3f} |",
              f"| empirical earliest-correct | | | {report['empirical_earliest']:.3f} |",
              f"| SEENN-I | α = {si['alpha']} | {_pct(si['accuracy'])} | {si['avg_timesteps']:.3f} |"]
    if "seenn_ii" in report:
        s2 = report["seenn_ii"]
        lines.append(f"| SEENN-II | β = {s2.get('beta', '?')} | {_pct(s2['accuracy'])} | {s2['avg_timesteps']:.3f} |")
    if "seenn_ii" in report:
        s2 = report["seenn_ii"]
        same = [r for r in report["seenn_i_sweep"] if r["accuracy"] >= s2["accuracy"]]
        if same:
            best = min(same, key=lambda r: r["avg_timesteps"])
            lines += ["", f"At SEENN-II's accuracy ({_pct(s2['accuracy'])}) SEENN-I needs {best['avg_timesteps']:.3f} "
                      f"average timesteps (α = {best['alpha']}, {_pct(best['accuracy'])}); SEENN-II uses "
                      f"{s2['avg_timesteps']:.3f}. The policy network's own cost (one small ANN pass) is not counted "
                      "in timesteps."]
    lines += ["", f"SEENN-I exits per t at the default α: {si['exits_per_t']}", "",
              "### SEENN-I α sweep (test)", "", "| α | accuracy | avg timesteps | exits per t |", "|---|---|---|---|"]
    lines += [f"| {r['alpha']} | {_pct(r['accuracy'])} | {r['avg_timesteps']:.3f} | {r['exits_per_t']} |"
              for r in report["seenn_i_sweep"]]
    if report.get("seenn_ii_sweep"):
        lines += ["", "### SEENN-II β sweep", "", "| β | val accuracy | val avg t | test accuracy | test avg t |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['beta']} | {_pct(r['val']['accuracy'])} | {r['val']['avg_timesteps']:.3f} | "
                  f"{_pct(r['test']['accuracy'])} | {r['test']['avg_timesteps']:.3f} |" for r in report["seenn_ii_sweep"]]
    if meta.get("ann_val_accuracy") is not None:
        lines += ["", f"QCFS ANN validation accuracy: {_pct(meta['ann_val_accuracy'])} "
                  f"(L = {meta.get('levels')}); thresholds θ = λ: {meta.get('thresholds')}"]
    p = report["parity"]
    lines += ["", "## Export check (PyTorch with BN folded vs ONNX Runtime, validation set, all T steps)", "",
              f"{p['samples']} samples: {_pct(p['fraction_over_atol'])} have a logit off by more than {p['atol']} at some "
              f"step (a membrane within float rounding of the threshold spiked in one and not the other; allowed "
              f"{_pct(p.get('allowed_fraction_over_atol', 0.005))}), same class on {_pct(p['same_class'])}; median of the "
              f"per-sample largest difference {p['max_abs_diff_median']:.1e}.", "",
              "![accuracy vs timesteps](accuracy_vs_timesteps.png)", ""]
    return "\n".join(lines)
