"""``python -m seenn_train <command>``: train, policy, convert, evaluate, export, bench-model."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data, seenn
from .models import VGG16, VGG28, PolicyNet, ResNet19, convert_qcfs
from .train import (
    collect_logits,
    evaluate_accuracy,
    fit,
    policy_actions,
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
                 stop_after=args.stop_after)
    meta["train_seconds"] = result["elapsed_s"]
    meta["history"] = result["history"]
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


def cmd_policy(args):
    """SEENN-II: train one policy per β on the frozen SNN's stored outputs; pick β on validation."""
    meta, model = load_run(args.run)
    torch.set_num_threads(args.threads)
    args.dataset = meta["dataset"]
    train, _, val, test = load_splits(args, meta.get("holdout_size", 0))
    t_max, ds = meta["timesteps"], meta["dataset"]
    info = data.DATASETS[ds]
    joint_policy = None
    if args.joint:
        joint_policy = PolicyNet(info.channels, t_max, args.policy_width)
        model, joint_policy = train_joint(model, joint_policy, train, ds, args.betas[0], t_max, epochs=args.epochs,
                                          seed=args.seed)
        save_checkpoint(args.run / "snn.pt", model=model.state_dict(), epoch=meta["epochs"], meta=meta)
        meta["joint_beta"] = args.betas[0]
        write_run(args.run, meta)
    z_train = collect_logits(model, train, ds, t_max, desc="train logits")
    z_val = collect_logits(model, val, ds, t_max, desc="val logits")
    z_test = collect_logits(model, test, ds, t_max, desc="test logits")
    rate = float(seenn.correct_per_t(z_train, train.labels)[:, 0].mean())
    full_val = seenn.accuracy_per_t(z_val, val.labels)[-1]
    sweep, policies = [], {}
    for beta in args.betas:
        if joint_policy is not None and beta == args.betas[0]:
            policy = joint_policy  # trained together with the SNN on L_TET - R
        else:
            policy = PolicyNet(info.channels, t_max, args.policy_width)
            train_policy(policy, train.images, z_train, train.labels, ds, beta, epochs=args.epochs,
                         seed=args.seed, rate=rate)
        row = {"beta": beta}
        for name, split, z in (("val", val, z_val), ("test", test, z_test)):
            a = policy_actions(policy, split.images, ds)
            row[name] = seenn.summarize(*seenn.fixed_exit(z, a), split.labels, t_max)
        print(json.dumps(row))
        sweep.append(row)
        policies[beta] = policy
    ok = [r for r in sweep if r["val"]["accuracy"] >= full_val - args.val_tolerance]
    chosen = min(ok, key=lambda r: r["val"]["avg_timesteps"]) if ok else max(sweep, key=lambda r: r["val"]["accuracy"])
    torch.save({"model": policies[chosen["beta"]].state_dict(), "beta": chosen["beta"], "width": args.policy_width,
                "rate_t1": rate}, args.run / "policy.pt")
    (args.run / "policy_sweep.json").write_text(json.dumps({"chosen_beta": chosen["beta"], "rate_t1": rate,
                                                            "sweep": sweep}, indent=2))
    why = (f"the fewest average timesteps with validation accuracy within {args.val_tolerance * 100:.2f} pp of full T"
           if ok else f"no beta came within {args.val_tolerance * 100:.2f} pp of full T on validation: the most accurate")
    print(f"chosen beta={chosen['beta']} ({why})")


def cmd_export(args):
    from .export import export_package

    torch.set_num_threads(args.threads)
    meta, model = load_run(args.run)
    args.dataset = meta["dataset"]
    _, _, val, test = load_splits(args, meta.get("holdout_size", 0))
    policy = None
    if (args.run / "policy.pt").exists() and not args.no_policy:
        p = torch.load(args.run / "policy.pt", map_location="cpu")
        policy = PolicyNet(data.DATASETS[meta["dataset"]].channels, meta["timesteps"], p["width"])
        policy.load_state_dict(p["model"])
        policy.eval()
    export_package(model, meta, val, test, args.out, name=args.name or args.out.name, policy=policy,
                   run_dir=args.run, golden_count=args.golden, version=args.version)


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

    sp = sub.add_parser("policy", help="SEENN-II: train the policy network (β sweep)")
    common(sp)
    sp.add_argument("--run", type=Path, required=True)
    sp.add_argument("--betas", type=lambda s: [float(b) for b in s.split(",")], default=[0.05, 0.1, 0.2, 0.5, 1.0])
    sp.add_argument("--epochs", type=int, default=4)
    sp.add_argument("--policy-width", type=int, default=16)
    sp.add_argument("--val-tolerance", type=float, default=0.002)
    sp.add_argument("--joint", action="store_true", help="fine-tune SNN and policy together on L_TET − R")
    sp.set_defaults(func=cmd_policy)

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
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("bench-model", help="export an untrained CIFAR-shape network for speed tests")
    sp.add_argument("--arch", default="resnet19", choices=["resnet19", "vgg16"])
    sp.add_argument("--width", type=float, default=0.125)
    sp.add_argument("--timesteps", type=int, default=4)
    sp.add_argument("--golden", type=int, default=8)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", type=Path, required=True)
    sp.set_defaults(func=cmd_bench_model)

    args = p.parse_args(argv)
    t0 = time.time()
    args.func(args)
    print(f"{args.command} done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
