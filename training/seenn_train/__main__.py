"""``seenn-train <command>`` (or ``python -m seenn_train``): train, policy, convert, evaluate, export,
bench-model, import-nir."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data, seenn
from .models import VGG16, VGG28, BiasedPolicy, PolicyNet, ResNet19, convert_qcfs
from .train import (
    augmented_copies,
    collect_logits,
    evaluate_accuracy,
    fit,
    policy_logits,
    pretrain_policy_backbone,
    save_checkpoint,
    tet_loss,
    train_joint,
    train_policy,
)


def build_model(meta: dict) -> torch.nn.Module:
    arch, info = meta["arch"], data.DATASETS[meta["dataset"]]
    if arch == "vgg28":
        return VGG28(info.channels, len(info.labels), meta["width"], neuron=meta.get("neuron", "lif"),
                     surrogate=meta.get("surrogate", "dspike"), size=info.size, levels=meta.get("levels", 8))
    if arch == "resnet19":
        return ResNet19(info.channels, len(info.labels), meta["width"], meta.get("surrogate", "dspike"))
    if arch == "vgg16":
        return VGG16(info.channels, len(info.labels), meta["width"], meta.get("surrogate", "dspike"))
    raise ValueError(f"unknown arch {arch!r}; accepted: vgg28, resnet19, vgg16")


def load_splits(args, holdout_size: int | None = None):
    """(train, holdout, val, test). Validation is always the same 5 000 images of the training file;
    ``holdout_size`` more images are kept out of SNN training for the exit head and the SEENN-II policy
    (0: none, the pre-holdout layout used by the QCFS package)."""
    full = data.load(args.dataset, args.data_dir, train=True)
    hold = args.holdout_size if holdout_size is None else holdout_size
    train, holdout, val = data.train_holdout_val_split(full, args.val_size, hold or 0, seed=0)
    test = data.load(args.dataset, args.data_dir, train=False)
    if args.limit:
        train, holdout, val, test = (train.subset(args.limit), holdout.subset(args.limit // 4), val.subset(args.limit // 4),
                                     test.subset(args.limit // 4))
    return train, holdout, val, test


def load_run(run: Path):
    meta = json.loads((run / "run.json").read_text())
    model = build_model(meta)
    ckpt = torch.load(run / "snn.pt", map_location="cpu")
    model.load_state_dict(ckpt["model"])
    if "train_seconds" not in meta and "elapsed_s" in ckpt:  # a run stopped between epochs (--stop-after)
        meta.update(train_seconds=ckpt["elapsed_s"], history=ckpt.get("history"), epochs_done=ckpt.get("epoch"))
    return meta, model.eval()


def write_run(run: Path, meta: dict):
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps(meta, indent=2))


def cmd_train(args):
    torch.set_num_threads(args.threads)
    if args.resume is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.resume:  # a checkpoint kept elsewhere (e.g. the committed one): continue it in --out
            src = Path(args.resume)
            if src.resolve() != (args.out / "snn.pt").resolve():
                shutil.copyfile(src, args.out / "snn.pt")
    holdout_size = 5000 if args.holdout_size is None else args.holdout_size
    train, holdout, val, _ = load_splits(args, holdout_size)
    meta = {"kind": "direct", "arch": args.arch, "dataset": args.dataset, "width": args.width,
            "timesteps": args.timesteps, "surrogate": args.surrogate, "neuron": "lif", "seed": args.seed,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "train_samples": len(train), "holdout_size": holdout_size, "val_size": args.val_size,
            "temperature": 1.0, "command": " ".join(a for a in sys.argv[1:] if a != "--resume") if not args.resume
            else None}
    if args.resume is not None and (args.out / "run.json").exists():
        old = json.loads((args.out / "run.json").read_text())
        meta["command"] = old.get("command") or meta["command"]
    if meta["command"] is None:
        meta["command"] = " ".join(sys.argv[1:])
    write_run(args.out, meta)
    torch.manual_seed(args.seed)  # the initial weights depend on --seed only
    model = build_model(meta)
    result = fit(model, tet_loss, train, val, args.dataset, args.out, "snn", epochs=args.epochs,
                 batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                 forward=lambda m, x: m(x, args.timesteps), meta=meta, resume=args.resume is not None,
                 stop_after=args.stop_after, anneal_to=args.anneal_to)
    meta["train_seconds"] = result["elapsed_s"]
    meta["history"] = result["history"]
    meta["epochs_done"] = len(result["history"])
    anneal = torch.load(args.out / "snn.pt", map_location="cpu").get("anneal")
    if anneal:
        meta["anneal"] = anneal
    write_run(args.out, meta)


def cmd_convert(args):
    """Train a QCFS ANN, then convert it to an IF SNN (θ = λ, v₀ = 0.5θ, soft reset)."""
    torch.set_num_threads(args.threads)
    holdout_size = args.holdout_size or 0
    train, _, val, _ = load_splits(args, holdout_size)
    meta = {"kind": "converted", "arch": "vgg28", "dataset": args.dataset, "width": args.width,
            "timesteps": args.timesteps, "neuron": "qcfs", "levels": args.levels, "seed": args.seed,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "train_samples": len(train),
            "holdout_size": holdout_size, "temperature": 8.0, "command": " ".join(sys.argv[1:])}
    write_run(args.out, meta)
    torch.manual_seed(args.seed)
    ann = build_model(meta)
    result = fit(ann, torch.nn.functional.cross_entropy, train, val, args.dataset, args.out, "ann",
                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                 seed=args.seed, forward=lambda m, x: m(x, 1)[0], meta=meta, resume=args.resume)
    ann.eval()
    meta["ann_val_accuracy"] = evaluate_accuracy(ann, val, args.dataset, lambda m, x: m(x, 1)[0])
    snn = convert_qcfs(ann)
    meta.update(neuron="if", train_seconds=result["elapsed_s"], history=result["history"],
                thresholds=[float(getattr(snn, n).threshold) for n in ("act1", "act2", "act3")])
    save_checkpoint(args.out / "snn.pt", model=snn.state_dict(), epoch=args.epochs, meta=meta)
    write_run(args.out, meta)
    print(json.dumps({"ann_val_accuracy": meta["ann_val_accuracy"]}))


def seenn_report(z: np.ndarray, y: np.ndarray, temperature: float) -> dict:
    acc = seenn.accuracy_per_t(z, y)
    sweep = seenn.alpha_sweep(z, y, temperature)
    return {"samples": int(len(y)), "accuracy_per_t": acc, "aet": seenn.aet(z, y),
            "empirical_earliest": seenn.empirical_earliest(z, y), "alpha_sweep": sweep}


def cmd_evaluate(args):
    meta, model = load_run(args.run)
    torch.set_num_threads(args.threads)
    args.dataset = meta["dataset"]
    _, _, val, test = load_splits(args, meta.get("holdout_size", 0))
    split = val if args.split == "val" else test
    t = args.timesteps or meta["timesteps"]
    z = collect_logits(model, split, meta["dataset"], t, desc=f"{args.split} logits")
    report = seenn_report(z, split.labels, meta["temperature"])
    print(json.dumps({k: v for k, v in report.items() if k != "alpha_sweep"}, indent=2))
    for r in report["alpha_sweep"]:
        print(f"alpha={r['alpha']:<9} acc={r['accuracy'] * 100:6.2f}%  avg_t={r['avg_timesteps']:.3f}  "
              f"exits={r['exits_per_t']}")


def cached_logits(run: Path, model, split: data.Split, dataset: str, timesteps: int, name: str) -> np.ndarray:
    """PyTorch logits ``[N, T, K]`` of ``split``, kept in ``run/logits/name.npy`` until snn.pt changes."""
    folder = run / "logits"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.npy"
    ckpt = run / "snn.pt"
    if path.exists() and path.stat().st_mtime > ckpt.stat().st_mtime:
        z = np.load(path)
        if len(z) == len(split):
            return z
    z = collect_logits(model, split, dataset, timesteps, desc=f"{name} logits")
    np.save(path, z)
    return z


def seenn_i_reference(z_val: np.ndarray, y_val: np.ndarray, temperature: float) -> dict:
    """SEENN-I's default operating point on validation (the α the exporter chooses): the learned rule
    and the policy are tuned to reach at least its validation accuracy with fewer timesteps."""
    full = seenn.accuracy_per_t(z_val, y_val)[-1]
    return seenn.choose_alpha(seenn.alpha_sweep(z_val, y_val, temperature), full, 0.001)


def _exit_data(args, meta, model):
    """(held-out split with augmented copies, its logits, val, z_val, test, z_test, train)."""
    train, holdout, val, test = load_splits(args, meta.get("holdout_size", 0))
    if len(holdout) == 0:
        raise SystemExit(f"{args.run}: this run has no held-out split (holdout_size 0); retrain it with --holdout-size")
    t_max, ds = meta["timesteps"], meta["dataset"]
    hold = augmented_copies(holdout, args.holdout_copies, seed=args.seed)
    tag = f"_limit{args.limit}" if args.limit else ""
    z_hold = cached_logits(args.run, model, hold, ds, t_max, f"holdout_x{args.holdout_copies}{tag}")
    z_val = cached_logits(args.run, model, val, ds, t_max, f"val{tag}")
    z_test = cached_logits(args.run, model, test, ds, t_max, f"test{tag}")
    return train, hold, z_hold, val, z_val, test, z_test


def _policy_variant(name, policy, val, z_val, test, z_test, ds, target_acc, **info) -> dict:
    lv, lt = policy_logits(policy, val.images, ds), policy_logits(policy, test.images, ds)
    vrows, trows = seenn.bias_sweep(z_val, val.labels, lv), seenn.bias_sweep(z_test, test.labels, lt)
    best = seenn.fewest_steps_at(vrows, target_acc)
    chosen_by = "fewest validation timesteps at SEENN-I's validation accuracy"
    if best is None:
        best = max(vrows, key=lambda r: (r["accuracy"], -r["avg_timesteps"]))
        chosen_by = "no bias reaches SEENN-I's validation accuracy: the most accurate"
    i = vrows.index(best)
    row = {"variant": name, **info, "bias_scale": best["bias_scale"], "chosen_by": chosen_by,
           "val": {k: best[k] for k in ("accuracy", "avg_timesteps", "exits_per_t", "agreement_with_full_t")},
           "test": {k: trows[i][k] for k in ("accuracy", "avg_timesteps", "exits_per_t", "agreement_with_full_t")},
           "val_curve": vrows, "test_curve": trows}
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("_curve")}), flush=True)
    return row


def cmd_policy(args):
    """SEENN-II variants on the frozen SNN's outputs on the held-out images; per-action biases tuned on
    validation turn each policy into a curve; the variant and bias with the fewest validation
    timesteps at SEENN-I's validation accuracy is kept."""
    meta, model = load_run(args.run)
    torch.set_num_threads(args.threads)
    args.dataset = meta["dataset"]
    t_max, ds = meta["timesteps"], meta["dataset"]
    info = data.DATASETS[ds]
    if args.joint:
        train, _, _, _ = load_splits(args, meta.get("holdout_size", 0))
        joint_policy = PolicyNet(info.channels, t_max, args.policy_width)
        model, joint_policy = train_joint(model, joint_policy, train, ds, args.betas[0], t_max, epochs=args.epochs,
                                          seed=args.seed)
        save_checkpoint(args.run / "snn.pt", model=model.state_dict(), epoch=meta["epochs"], meta=meta)
        meta["joint_beta"] = args.betas[0]
        write_run(args.run, meta)
    train, hold, z_hold, val, z_val, test, z_test = _exit_data(args, meta, model)
    ref = seenn_i_reference(z_val, val.labels, meta["temperature"])
    target_acc = ref["accuracy"]
    rate = float(seenn.correct_per_t(z_hold, hold.labels)[:, 0].mean())
    print(f"SEENN-I on validation: alpha={ref['alpha']} acc={target_acc:.4f} avg_t={ref['avg_timesteps']:.3f}; "
          f"held-out rows {len(hold)} (t=1 accuracy {rate:.4f})")
    variants, policies = [], {}

    def new_policy():
        torch.manual_seed(args.seed)
        return PolicyNet(info.channels, t_max, args.policy_width)

    def keep(row, policy):
        variants.append(row)
        policies[len(variants) - 1] = policy

    kw = dict(epochs=args.epochs, seed=args.seed, pad=0)
    if args.joint:
        keep(_policy_variant("joint", joint_policy, val, z_val, test, z_test, ds, target_acc, beta=args.betas[0],
                             trained_on="train (SNN fine-tuned with it)"), joint_policy)
    wanted = set(args.variants)
    if "rl-train" in wanted:  # the earlier recipe: the SNN's outputs on its own training images
        z_train = cached_logits(args.run, model, train, ds, t_max, "train" + (f"_limit{args.limit}" if args.limit else ""))
        r_train = float(seenn.correct_per_t(z_train, train.labels)[:, 0].mean())
        for beta in args.train_betas or args.betas:
            p = train_policy(new_policy(), train.images, z_train, train.labels, ds, beta, epochs=args.epochs,
                             seed=args.seed, rate=r_train, pad=1, desc="rl-train")
            keep(_policy_variant("rl-train", p, val, z_val, test, z_test, ds, target_acc, beta=beta,
                                 trained_on="train"), p)
    best_beta = args.betas[0]
    if "rl-holdout" in wanted:
        rl_rows = []
        for beta in args.betas:
            p = train_policy(new_policy(), hold.images, z_hold, hold.labels, ds, beta, rate=rate, desc="rl-holdout", **kw)
            keep(_policy_variant("rl-holdout", p, val, z_val, test, z_test, ds, target_acc, beta=beta,
                                 trained_on="holdout"), p)
            rl_rows.append(variants[-1])
        best_beta = min(rl_rows, key=lambda r: (r["val"]["accuracy"] < target_acc, r["val"]["avg_timesteps"]))["beta"]
    if "sup-holdout" in wanted or "sup-rl-holdout" in wanted:
        p = train_policy(new_policy(), hold.images, z_hold, hold.labels, ds, 0.0, loss="sup", desc="sup-holdout", **kw)
        keep(_policy_variant("sup-holdout", p, val, z_val, test, z_test, ds, target_acc, trained_on="holdout"), p)
        if "sup-rl-holdout" in wanted:
            p2 = copy.deepcopy(p)
            train_policy(p2, hold.images, z_hold, hold.labels, ds, best_beta, rate=rate, desc="sup-rl-holdout",
                         **{**kw, "epochs": max(1, args.epochs // 2)})
            keep(_policy_variant("sup-rl-holdout", p2, val, z_val, test, z_test, ds, target_acc, beta=best_beta,
                                 trained_on="holdout"), p2)
    if "supmulti-holdout" in wanted:
        p = train_policy(new_policy(), hold.images, z_hold, hold.labels, ds, 0.0, loss="sup-multi",
                         desc="supmulti-holdout", **kw)
        keep(_policy_variant("supmulti-holdout", p, val, z_val, test, z_test, ds, target_acc, trained_on="holdout"), p)
    if "pretrained-sup" in wanted:
        p = new_policy()
        pretrain_policy_backbone(p, train, ds, len(info.labels), epochs=args.backbone_epochs, seed=args.seed)
        train_policy(p, hold.images, z_hold, hold.labels, ds, 0.0, loss="sup", desc="pretrained-sup", **kw)
        keep(_policy_variant("pretrained-sup", p, val, z_val, test, z_test, ds, target_acc,
                             trained_on="features: train images (labels); head: holdout"), p)
    if "pretrained-supmulti" in wanted:
        p = new_policy()
        pretrain_policy_backbone(p, train, ds, len(info.labels), epochs=args.backbone_epochs, seed=args.seed)
        train_policy(p, hold.images, z_hold, hold.labels, ds, 0.0, loss="sup-multi", desc="pretrained-supmulti", **kw)
        keep(_policy_variant("pretrained-supmulti", p, val, z_val, test, z_test, ds, target_acc,
                             trained_on="features: train images (labels); head: holdout"), p)
    if not variants:
        raise SystemExit("no policy variant selected")
    ok = [i for i, r in enumerate(variants) if r["val"]["accuracy"] >= target_acc - 1e-12]
    best = (min(ok, key=lambda i: variants[i]["val"]["avg_timesteps"]) if ok
            else max(range(len(variants)), key=lambda i: variants[i]["val"]["accuracy"]))
    chosen = variants[best]
    bias = seenn.bias_vector(chosen["bias_scale"], t_max).tolist()
    torch.save({"model": policies[best].state_dict(), "width": args.policy_width, "bias": bias,
                "variant": chosen["variant"], "beta": chosen.get("beta"), "bias_scale": chosen["bias_scale"]},
               args.run / "policy.pt")
    summary = {"chosen": best, "chosen_variant": chosen["variant"], "chosen_beta": chosen.get("beta"),
               "seenn_i_val": ref, "rate_t1_holdout": rate, "holdout_rows": len(hold),
               "epochs": args.epochs, "policy_width": args.policy_width, "variants": variants}
    (args.run / "policy_sweep.json").write_text(json.dumps(summary, indent=1))
    print(f"chosen: {chosen['variant']} beta={chosen.get('beta')} bias_scale={chosen['bias_scale']}: val "
          f"{chosen['val']['accuracy']:.4f} at {chosen['val']['avg_timesteps']:.3f}; test {chosen['test']['accuracy']:.4f} "
          f"at {chosen['test']['avg_timesteps']:.3f}")


def cmd_exit_head(args):
    """The learned exit rule: train the exit head on the SNN's outputs on the held-out images (one
    head per target kind), calibrate the threshold on validation, keep the best on validation."""
    from .exit_head import fine_thresholds, head_scores, threshold_sweep, train_exit_head

    meta, model = load_run(args.run)
    torch.set_num_threads(args.threads)
    args.dataset = meta["dataset"]
    _, hold, z_hold, val, z_val, test, z_test = _exit_data(args, meta, model)
    ref = seenn_i_reference(z_val, val.labels, meta["temperature"])
    target_acc = ref["accuracy"]
    variants, heads = [], []
    for target in args.targets:
        head = train_exit_head(z_hold, hold.labels, meta["temperature"], target=target, epochs=args.epochs,
                               hidden=args.hidden, seed=args.seed)
        s_val, s_test = head_scores(head, z_val), head_scores(head, z_test)
        vrows = threshold_sweep(z_val, val.labels, s_val, fine_thresholds(s_val))
        best = seenn.fewest_steps_at(vrows, target_acc) or max(vrows, key=lambda r: r["accuracy"])
        from .exit_head import score_exit
        test_row = seenn.summarize(*score_exit(z_test, s_test, best["threshold"]), test.labels, meta["timesteps"])
        row = {"target": target, "hidden": args.hidden, "threshold": best["threshold"],
               "val": {k: best[k] for k in ("accuracy", "avg_timesteps", "exits_per_t")}, "test": test_row}
        print(json.dumps(row), flush=True)
        variants.append(row)
        heads.append(head)
    ok = [i for i, r in enumerate(variants) if r["val"]["accuracy"] >= target_acc - 1e-12]
    best = (min(ok, key=lambda i: variants[i]["val"]["avg_timesteps"]) if ok
            else max(range(len(variants)), key=lambda i: variants[i]["val"]["accuracy"]))
    h = heads[best]
    torch.save({"model": h.state_dict(), "target": variants[best]["target"], "hidden": args.hidden,
                "temperature": h.temperature, "timesteps": h.t_max, "num_classes": h.num_classes},
               args.run / "exit.pt")
    (args.run / "exit_sweep.json").write_text(json.dumps({"chosen": best, "seenn_i_val": ref, "holdout_rows": len(hold),
                                                          "epochs": args.epochs, "variants": variants}, indent=1))
    print(f"chosen exit head: target={variants[best]['target']}")


def cmd_export(args):
    from .export import export_package

    torch.set_num_threads(args.threads)
    meta, model = load_run(args.run)
    args.dataset = meta["dataset"]
    _, _, val, test = load_splits(args, meta.get("holdout_size", 0))
    policy = exit_head = None
    if (args.run / "policy.pt").exists() and not args.no_policy:
        p = torch.load(args.run / "policy.pt", map_location="cpu")
        net = PolicyNet(data.DATASETS[meta["dataset"]].channels, meta["timesteps"], p["width"])
        net.load_state_dict(p["model"])
        policy = BiasedPolicy(net.eval(), p.get("bias", [0.0] * meta["timesteps"])).eval()
        policy.bias_scale = p.get("bias_scale", 0.0)
    if (args.run / "exit.pt").exists() and not args.no_exit_head:
        from .exit_head import ExitHead

        e = torch.load(args.run / "exit.pt", map_location="cpu")
        exit_head = ExitHead(e["num_classes"], e["timesteps"], e["temperature"], e["hidden"])
        exit_head.load_state_dict(e["model"])
        exit_head.eval()
    export_package(model, meta, val, test, args.out, name=args.name or args.out.name, policy=policy,
                   exit_head=exit_head, run_dir=args.run, golden_count=args.golden, version=args.version)


def cmd_bench_model(args):
    """An untrained network exported for speed measurements only (random weights, random samples)."""
    from .export import export_package

    torch.manual_seed(args.seed)
    meta = {"kind": "benchmark", "arch": args.arch, "dataset": "cifar10", "width": args.width,
            "timesteps": args.timesteps, "surrogate": "dspike", "neuron": "lif", "temperature": 1.0,
            "command": " ".join(sys.argv[1:])}
    model = build_model(meta).eval()
    rng = np.random.RandomState(args.seed)
    n = 256
    fake = data.Split(rng.randint(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.randint(0, 10, n).astype(np.int64))
    export_package(model, meta, fake, fake, args.out, name=args.out.name, policy=None, run_dir=None,
                   golden_count=args.golden, version="1")


def cmd_import_nir(args):
    from . import nir_import as ni

    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    o = ni.ImportOptions(dialect=args.dialect, timesteps=args.timesteps, dtype=args.dtype, time=args.time,
                         aggregation=args.aggregation, labels=args.labels, name=args.name, input_shape=shape,
                         alpha=args.alpha, temperature=args.temperature, seed=args.seed, force=args.force)
    torch.set_num_threads(1)
    try:
        if args.module:
            m = ni.import_module(args.module, args.out, o)
        else:
            if args.graph is None:
                raise ni.NirImportError("give a NIR file (NET.nir) or --module pkg.mod:factory")
            m = ni.import_nir(args.graph, args.out, o)
    except ni.NirImportError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.out}: {m['input']['kind']} input {m['input']['shape']} ({m['input']['time']}), "
          f"{len(m['labels'])} outputs, {len(m['graphs']['step']['states'])} states, T = {m['timesteps']}; "
          f"next: seenn calibrate {args.out} --data DATA")


def main(argv=None):
    p = argparse.ArgumentParser(prog="seenn_train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--data-dir", default=None, help=f"dataset folder (default {data.DEFAULT_FASHION_DIR})")
        sp.add_argument("--val-size", type=int, default=5000)
        sp.add_argument("--limit", type=int, default=0, help="use only this many training samples (smoke runs)")
        sp.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
        sp.add_argument("--seed", type=int, default=1000)
        sp.add_argument("--holdout-size", type=int, default=None,
                        help="images of the training file kept out of SNN training for the exit head and policy "
                             "(train: default 5000; convert: default 0; other commands read it from the run)")

    sp = sub.add_parser("train", help="direct training with TET")
    common(sp)
    sp.add_argument("--dataset", default="fashion-mnist", choices=list(data.DATASETS))
    sp.add_argument("--arch", default="vgg28", choices=["vgg28", "resnet19", "vgg16"])
    sp.add_argument("--width", type=float, default=32)
    sp.add_argument("--timesteps", type=int, default=4)
    sp.add_argument("--epochs", type=int, default=10)
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--lr", type=float, default=2e-3)
    sp.add_argument("--weight-decay", type=float, default=1e-4)
    sp.add_argument("--surrogate", default="dspike", choices=["dspike", "triangle"])
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                    help="continue the run in --out from its last epoch (or from CHECKPOINT, copied into --out)")
    sp.add_argument("--anneal-to", type=int, default=None, metavar="EPOCH",
                    help="with --resume: finish early, the learning rate annealing from its current value to 0 at the "
                         "end of this epoch (the run's total becomes EPOCH)")
    sp.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                    help="stop this call after that many epochs in total; --resume later finishes the run")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("convert", help="train a QCFS ANN and convert it to an IF SNN")
    common(sp)
    sp.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    sp.add_argument("--width", type=int, default=32)
    sp.add_argument("--levels", type=int, default=8)
    sp.add_argument("--timesteps", type=int, default=32)
    sp.add_argument("--epochs", type=int, default=8)
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--lr", type=float, default=2e-3)
    sp.add_argument("--weight-decay", type=float, default=1e-4)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--resume", action="store_true", help="continue the ANN training in --out from its last epoch")
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("policy", help="SEENN-II: train policy variants (β sweep, supervised, pretrained)")
    common(sp)
    sp.add_argument("--run", type=Path, required=True)
    sp.add_argument("--betas", type=lambda s: [float(b) for b in s.split(",")], default=[0.5, 2.0, 10.0])
    sp.add_argument("--train-betas", type=lambda s: [float(b) for b in s.split(",")], default=None,
                    help="β values for the rl-train variant (default: --betas)")
    sp.add_argument("--variants", type=lambda s: s.split(","), default=["rl-holdout", "sup-holdout", "sup-rl-holdout",
                                                                       "pretrained-sup"],
                    help="comma list of rl-train, rl-holdout, sup-holdout, sup-rl-holdout, supmulti-holdout, "
                         "pretrained-sup, pretrained-supmulti")
    sp.add_argument("--epochs", type=int, default=8)
    sp.add_argument("--backbone-epochs", type=int, default=3)
    sp.add_argument("--holdout-copies", type=int, default=4, help="augmented copies of each held-out image")
    sp.add_argument("--policy-width", type=int, default=16)
    sp.add_argument("--joint", action="store_true", help="first fine-tune SNN and policy together on L_TET − R "
                    "(changes the SNN checkpoint)")
    sp.set_defaults(func=cmd_policy)

    sp = sub.add_parser("exit-head", help="the learned exit rule: train the exit head on held-out outputs")
    common(sp)
    sp.add_argument("--run", type=Path, required=True)
    sp.add_argument("--targets", type=lambda s: s.split(","), default=["no_regret", "correct"])
    sp.add_argument("--epochs", type=int, default=40)
    sp.add_argument("--hidden", type=int, default=32)
    sp.add_argument("--holdout-copies", type=int, default=4, help="augmented copies of each held-out image")
    sp.set_defaults(func=cmd_exit_head)

    sp = sub.add_parser("evaluate", help="SEENN-I report: accuracy per t, AET, α sweep")
    common(sp)
    sp.add_argument("--run", type=Path, required=True)
    sp.add_argument("--split", default="val", choices=["val", "test"])
    sp.add_argument("--timesteps", type=int, default=0)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("export", help="export a model package (ONNX + manifest + calibration + golden)")
    common(sp)
    sp.add_argument("--run", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--name", default=None)
    sp.add_argument("--version", default="1")
    sp.add_argument("--golden", type=int, default=64)
    sp.add_argument("--no-policy", action="store_true")
    sp.add_argument("--no-exit-head", action="store_true")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("bench-model", help="export an untrained CIFAR-shape network for speed tests")
    sp.add_argument("--arch", default="resnet19", choices=["resnet19", "vgg16"])
    sp.add_argument("--width", type=float, default=0.125)
    sp.add_argument("--timesteps", type=int, default=4)
    sp.add_argument("--golden", type=int, default=8)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", type=Path, required=True)
    sp.set_defaults(func=cmd_bench_model)

    sp = sub.add_parser("import-nir", help="a NIR graph (or a PyTorch step module) as a model package (format 3)",
                        description="Import a NIR graph trained in snnTorch, Norse or Sinabs, or a PyTorch step module, "
                                    "as a seenn model package; see docs/guides/your-own-snn.md.")
    sp.add_argument("graph", type=Path, nargs="?", help="the NIR file (HDF5, written by nir.write / export_to_nir)")
    sp.add_argument("--dialect", choices=["snntorch", "norse", "sinabs"], default=None,
                    help="the framework whose discretisation to apply (required for a NIR file)")
    sp.add_argument("--module", default=None, help="MODULE:FACTORY returning a torch module with "
                    "forward(x, *states) -> (out, *states) and a state_shapes attribute, instead of a NIR file")
    sp.add_argument("--out", type=Path, required=True, help="the package folder (written only when every check passes)")
    sp.add_argument("--name", default=None, help="the model's name (default: the folder's name)")
    sp.add_argument("--labels", default=None, help="comma-separated labels, or a file (one per line, or a JSON list)")
    sp.add_argument("--timesteps", type=int, default=16, help="T: the most steps (frames) a request runs (default 16)")
    sp.add_argument("--input-shape", default=None, help="one frame's shape, e.g. 2,34,34 (default: the Input node's)")
    sp.add_argument("--dtype", choices=["float32", "uint8", "bool"], default="float32",
                    help="what clients send natively (the server accepts all three)")
    sp.add_argument("--time", choices=["per_step", "static"], default="per_step",
                    help="per_step: a request carries one frame per step; static: the same input every step")
    sp.add_argument("--aggregation", choices=["sum", "mean", "last"], default=None,
                    help="how per-step outputs add up (default: last for an LI readout, else sum)")
    sp.add_argument("--alpha", type=float, default=0.9, help="the default α until seenn calibrate chooses one")
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    sp.add_argument("--force", action="store_true", help="replace an existing package at --out")
    sp.set_defaults(func=cmd_import_nir)

    args = p.parse_args(argv)
    if args.command == "import-nir" and args.graph is not None and args.dialect is None:
        p.error("import-nir: --dialect is required for a NIR file (snntorch, norse or sinabs): NIR stores no time "
                "step and no reset, so the framework that trained the network decides them")
    t0 = time.time()
    args.func(args)
    print(f"{args.command} done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
