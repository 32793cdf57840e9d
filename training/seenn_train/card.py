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
    if "exit" in manifest["graphs"]:
        lines.append(f"- Learned exit rule (`exit.onnx`, stop probability from the running sum of logits and t): "
                     f"default threshold {manifest['exit']['default_threshold']} "
                     f"(chosen on validation: {calibration['learned']['chosen_by']})")
    if "policy" in manifest["graphs"] and report.get("seenn_ii", {}).get("variant"):
        s2 = report["seenn_ii"]
        lines.append(f"- SEENN-II policy (`policy.onnx`): variant {s2['variant']}"
                     + (f", β = {s2['beta']}" if s2.get("beta") is not None else "")
                     + f", per-action bias scale {s2.get('bias_scale')} built into the graph (chosen on validation)")
    if meta.get("command"):
        lines.append(f"- Made by: `python -m seenn_train {meta['command']}`"
                     + (", then `exit-head`, `policy` and `export` as in `scripts/make_models.sh`"
                        if "exit" in manifest["graphs"] or "policy" in manifest["graphs"] else ""))
    epochs = meta.get("epochs")
    if meta.get("anneal"):
        a = meta["anneal"]
        epochs = (f"{a['to_epoch']} epochs: the cosine schedule planned for {meta.get('epochs')} epochs was shortened "
                  f"after epoch {a['from_step'] * a['to_epoch'] // a['to_step']} to anneal to 0 by epoch {a['to_epoch']} "
                  "(`--resume --anneal-to`)")
    elif meta.get("epochs_done") is not None and meta["epochs_done"] != epochs:
        epochs = f"{meta['epochs_done']} of the planned {epochs}"
    if train.get("train_seconds"):
        lines.append(f"- Training time on this project's 2-core CPU machine (shared with other work): "
                     f"{train['train_seconds'] / 60:.1f} min ({epochs}{'' if meta.get('anneal') else ' epochs'}, "
                     f"{meta.get('train_samples')} "
                     "training images)")
    if meta.get("holdout_size"):
        lines.append(f"- Splits of the training file (fixed seed): {meta.get('train_samples')} images train the SNN, "
                     f"{meta['holdout_size']} held-out images (the SNN never saw them) train the exit head and the "
                     f"SEENN-II policy, {meta.get('val_size', 5000)} validation images choose every threshold; the "
                     "10 000 test images only report.")
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
    s2 = report.get("seenn_ii")
    if s2:
        setting = ", ".join(x for x in (s2.get("variant") and f"{s2['variant']}",
                                        s2.get("beta") is not None and f"β = {s2['beta']}",
                                        s2.get("bias_scale") is not None and f"bias scale {s2['bias_scale']}") if x)
        lines.append(f"| SEENN-II | {setting} | {_pct(s2['accuracy'])} | {s2['avg_timesteps']:.3f} |")
    lr = report.get("learned")
    if lr:
        lines.append(f"| learned exit | threshold {lr['threshold']} | {_pct(lr['accuracy'])} | {lr['avg_timesteps']:.3f} |")
    lines += ["", "The default settings (α, the policy's variant and bias, the learned threshold) were all chosen on the "
              "validation split; the test numbers above are what those settings give."]
    if lr:
        ratio = lr["avg_timesteps"] / si["avg_timesteps"]
        lines += ["", f"Learned exit against SEENN-I at their defaults: {_pct(lr['accuracy'])} vs {_pct(si['accuracy'])} "
                  f"({100 * (lr['accuracy'] - si['accuracy']):+.2f} pp) with {lr['avg_timesteps']:.3f} vs "
                  f"{si['avg_timesteps']:.3f} average timesteps ({ratio:.3f}×)."]
    if s2:
        ratio = s2["avg_timesteps"] / si["avg_timesteps"]
        lines += ["", f"SEENN-II against SEENN-I at their defaults: {_pct(s2['accuracy'])} vs {_pct(si['accuracy'])} "
                  f"({100 * (s2['accuracy'] - si['accuracy']):+.2f} pp) with {s2['avg_timesteps']:.3f} vs "
                  f"{si['avg_timesteps']:.3f} average timesteps ({ratio:.3f}×). The policy network's own cost (one "
                  "small ANN pass) is not counted in timesteps."]
    lines += ["", f"SEENN-I exits per t at the default α: {si['exits_per_t']}"]
    if lr:
        lines.append(f"Learned exit, exits per t at the default threshold: {lr['exits_per_t']}")
    if s2:
        lines.append(f"SEENN-II actions at the default: {s2['exits_per_t']}")
    if si.get("agreement_with_full_t") is not None:
        lines += ["", "Agreement with full T (exit-time class = class after all T steps, whatever the label): "
                  f"SEENN-I {_pct(si['agreement_with_full_t'])}"
                  + (f", learned {_pct(lr['agreement_with_full_t'])}" if lr else "") + "."]

    # Every curve read off the test set at SEENN-I's default test accuracy (descriptive only).
    target = si["accuracy"] - 0.0005
    curves = []
    if report.get("learned_sweep"):
        curves.append(("learned exit (threshold sweep)", report["learned_sweep"]))
    for v in report.get("seenn_ii_variants") or []:
        name = f"SEENN-II {v['variant']}" + (f", β = {v['beta']}" if v.get("beta") is not None else "")
        curves.append((name + " (bias sweep)", v["test_curve"]))
    if curves and report.get("oracle_curve"):
        # Not a rule: the bound. Samples never right cost 1 here, not T as in AET.
        curves.append(("oracle: exits chosen with the labels (the bound for any rule)", report["oracle_curve"]))
    if curves:
        lines += ["", "### Every curve at SEENN-I's accuracy (test, read off the curves)", "",
                  f"Fewest average timesteps at which each curve reaches SEENN-I's default test accuracy minus "
                  f"0.05 pp ({_pct(target)}); SEENN-I itself uses {si['avg_timesteps']:.3f}. These points are read "
                  "off the test curves to compare the curves, they are not operating points chosen on validation.", "",
                  "| curve | avg timesteps | × SEENN-I | accuracy there |", "|---|---|---|---|"]
        for name, rows in curves:
            ok = [r for r in rows if r["accuracy"] >= target - 1e-12]
            if ok:
                b = min(ok, key=lambda r: r["avg_timesteps"])
                lines.append(f"| {name} | {b['avg_timesteps']:.3f} | {b['avg_timesteps'] / si['avg_timesteps']:.3f} | "
                             f"{_pct(b['accuracy'])} |")
            else:
                top = max(rows, key=lambda r: r["accuracy"])
                lines.append(f"| {name} | never reached (best {_pct(top['accuracy'])} at {top['avg_timesteps']:.3f}) | | |")

    if report.get("seenn_ii_variants"):
        lines += ["", "### SEENN-II variants (every one tried)", "",
                  "Each policy gives a whole curve through a per-action logit bias `s·(a − 1)/(T − 1)`; the bias "
                  "scale s of each variant was chosen on validation (fewest timesteps at SEENN-I's validation "
                  "accuracy, else the most accurate).", "",
                  "| variant | β | trained on | bias scale | val accuracy | val avg t | test accuracy | test avg t |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in report["seenn_ii_variants"]:
            lines.append(f"| {v['variant']} | {v.get('beta', '') if v.get('beta') is not None else ''} | "
                         f"{v.get('trained_on', '')} | {v['bias_scale']} | {_pct(v['val']['accuracy'])} | "
                         f"{v['val']['avg_timesteps']:.3f} | {_pct(v['test']['accuracy'])} | {v['test']['avg_timesteps']:.3f} |")
    if report.get("learned_variants"):
        lines += ["", "### Learned exit heads (every one tried)", "",
                  "| stop target | threshold (val) | val accuracy | val avg t | test accuracy | test avg t |",
                  "|---|---|---|---|---|---|"]
        for v in report["learned_variants"]:
            lines.append(f"| {v['target']} | {v['threshold']} | {_pct(v['val']['accuracy'])} | {v['val']['avg_timesteps']:.3f} | "
                         f"{_pct(v['test']['accuracy'])} | {v['test']['avg_timesteps']:.3f} |")

    lines += ["", "### SEENN-I α sweep (test)", "", "| α | accuracy | avg timesteps | exits per t | agreement with full T |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['alpha']} | {_pct(r['accuracy'])} | {r['avg_timesteps']:.3f} | {r['exits_per_t']} | "
              f"{_pct(r['agreement_with_full_t']) if 'agreement_with_full_t' in r else ''} |"
              for r in report["seenn_i_sweep"]]
    if report.get("learned_sweep"):
        from .exit_head import THRESHOLD_GRID

        grid = set(THRESHOLD_GRID)
        lines += ["", "### Learned exit threshold sweep (test, the fixed grid; calibration.json has the fine one on "
                  "validation)", "", "| threshold | accuracy | avg timesteps | exits per t | agreement with full T |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['threshold']} | {_pct(r['accuracy'])} | {r['avg_timesteps']:.3f} | {r['exits_per_t']} | "
                  f"{_pct(r['agreement_with_full_t'])} |" for r in report["learned_sweep"] if r["threshold"] in grid]
    if train.get("history"):
        lines += ["", "### Training history", "", "| epoch | training loss | validation accuracy (T) | cumulative time |",
                  "|---|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['loss']:.4f} | {_pct(h['val_accuracy'])} | {h['elapsed_s'] / 60:.1f} min |"
                  for h in train["history"]]
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
