"""Train the example's snnTorch network on rate-coded Fashion-MNIST frames and export it to NIR.

    .venv/bin/python examples/snntorch-fashion-mnist/train.py --net feedforward
    .venv/bin/python examples/snntorch-fashion-mnist/train.py --net recurrent

Resumes from ``<out>/checkpoint.pt`` (written after every epoch); a finished run only re-exports.
Writes ``<out>/<net>.nir`` with snnTorch's own ``export_to_nir`` (edges sorted, so the file does not
depend on PYTHONHASHSEED) and ``<out>/<net>.json`` (the training history).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nir
import numpy as np
import snntorch.functional as SF
import torch
from snntorch.export_nir import export_to_nir
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import snn as ex  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=sorted(ex.NETS), default="feedforward")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (smoke tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / f"{args.net}.pt"

    net = ex.NETS[args.net]()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    history, start = [], 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        history, start = ck["history"], ck["epoch"]
        print(f"resuming {args.net} after epoch {start}")

    x, y = ex.load_fashion(train=True)
    tx, ty, vx, vy = ex.train_val_split(x, y)
    if args.limit:
        tx, ty, vx, vy = tx[:args.limit], ty[:args.limit], vx[:args.limit // 4], vy[:args.limit // 4]
    val_frames = torch.from_numpy(ex.encode(vx, seed=1).astype(np.float32))
    # Cross-entropy on the output spikes at every step (snnTorch's ce_rate_loss, as in its tutorials):
    # the right class learns to spike on every frame, the others not to (a loss on the membrane would
    # teach the output to stay below threshold, because a spike resets it to 0 in the same step).
    loss_fn = SF.ce_rate_loss()
    for epoch in range(start, args.epochs):
        t0 = time.time()
        # Fresh rate-coded frames every epoch (seeded by the epoch): the network sees new spike trains.
        frames = ex.encode(tx, seed=100 + epoch)
        order = np.random.default_rng(epoch).permutation(len(tx))
        net.train()
        total, n = 0.0, 0
        bar = tqdm(range(0, len(order), args.batch), desc=f"{args.net} epoch {epoch + 1}/{args.epochs}", unit="batch")
        for i in bar:
            idx = order[i:i + args.batch]
            xb = torch.from_numpy(frames[idx].astype(np.float32))
            yb = torch.from_numpy(ty[idx])
            spikes, _ = ex.run(net, xb)
            loss = loss_fn(spikes, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            n += len(idx)
            bar.set_postfix(loss=f"{total / n:.4f}")
        net.eval()
        with torch.no_grad():
            spikes, _ = ex.run(net, val_frames)
        acc = float((spikes.sum(0).argmax(1).numpy() == vy).mean())
        history.append({"epoch": epoch + 1, "loss": total / n, "val_accuracy_spike_count": acc, "seconds": time.time() - t0})
        print(json.dumps(history[-1]))
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "history": history, "epoch": epoch + 1}, ckpt_path)

    net.eval()
    graph = export_to_nir(net, torch.zeros(1, 1, 28, 28), ignore_dims=[0])
    graph.edges = sorted(graph.edges)
    nir.write(args.out / f"{args.net}.nir", graph)
    (args.out / f"{args.net}.json").write_text(json.dumps({"net": args.net, "frames": ex.FRAMES, "history": history}, indent=2))
    print(f"wrote {args.out / f'{args.net}.nir'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
