"""Training loops: TET for direct-trained SNNs, plain CE for the QCFS ANN, and the SEENN-II policy."""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import seenn
from .data import DATASETS, Split

TET_LAMBDA = 1e-3
TET_MEANS = 1.0


def tet_loss(z: torch.Tensor, y: torch.Tensor, lamb: float = TET_LAMBDA, means: float = TET_MEANS) -> torch.Tensor:
    """TET (Deng et al., 2022) as in SEENN's code, z: [T, B, K]:
    L = (1 − λ)·(1/T)·Σ_t CE(z_t, y) + λ·MSE(z, φ), φ = 1.0, λ = 1e-3."""
    ce = sum(nn.functional.cross_entropy(z[t], y) for t in range(z.shape[0])) / z.shape[0]
    mse = nn.functional.mse_loss(z, torch.full_like(z, means))
    return (1 - lamb) * ce + lamb * mse


# The manifest's `scale`: pixel × scale, then (x − mean) / std, all in float32 and in this order, so
# that the server's preprocessing (src/preprocess.rs) gives the same bits.
PIXEL_SCALE = 1.0 / 255.0


class Normalizer:
    def __init__(self, dataset: str):
        info = DATASETS[dataset]
        self.scale = torch.tensor(PIXEL_SCALE, dtype=torch.float32)
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images_u8).float() * self.scale
        return (x - self.mean) / self.std


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (in normalised space the pad is the normalised black) + h-flip."""
    n, _, h, w = x.shape
    if pad:
        fill = x.amin(dim=(1, 2, 3), keepdim=True)
        padded = torch.nn.functional.pad(x - fill, (pad, pad, pad, pad)) + fill
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def batches(n: int, batch_size: int, gen: torch.Generator | None = None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def save_checkpoint(path: Path, **state):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state(gen: torch.Generator) -> dict:
    return {"generator": gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(gen: torch.Generator, state: dict):
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def fit(model: nn.Module, loss_fn, train: Split, val: Split, dataset: str, out: Path, name: str, *,
        epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int, forward,
        pad: int = 2, flip: bool = True, meta: dict | None = None, resume: bool = False,
        stop_after: int | None = None, anneal_to: int | None = None) -> dict:
    """Generic epoch loop: AdamW, cosine LR per iteration after a short linear warm-up (a ``LambdaLR``
    scheduler), random crop + flip. After every epoch ``out/name.pt`` holds everything needed to carry
    on exactly where it stopped: model, optimizer, scheduler, epoch, the RNG states (data order and
    augmentation generator, torch, numpy, python), elapsed training time and the per-epoch history.

    With ``resume`` the loop continues from that checkpoint (it must exist); a run resumed after k
    epochs ends with the same weights as one that ran straight through. Without ``resume`` an existing
    checkpoint is an error, so a finished run is never overwritten by accident.
    ``stop_after`` ends this call after that many epochs in total (a run finished in pieces).
    ``anneal_to`` (with ``resume``) shortens a run: from the checkpoint's epoch on, the learning rate
    follows a cosine from its current value down to 0 at the end of epoch ``anneal_to``; the
    shortened schedule is stored in the checkpoint, so later resumes follow it too.
    ``forward(model, x)`` returns what ``loss_fn(output, y)`` takes and ``evaluate`` reads
    (``[T, B, K]`` logits or ``[B, K]``)."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{name}.pt"
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    norm = Normalizer(dataset)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total, warmup = epochs * steps_per_epoch, min(200, steps_per_epoch)
    schedule = {"total_epochs": epochs, "anneal": None}

    def lr_factor(step: int) -> float:
        a = schedule["anneal"]
        if a is None or step < a["from_step"]:
            return cosine_lr(step, total, 1.0, warmup)
        progress = (step - a["from_step"]) / max(1, a["to_step"] - a["from_step"])
        return a["from_factor"] * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(seed)
    start_epoch, elapsed, history = 0, 0.0, []
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu")
        if ckpt.get("total_epochs", epochs) != epochs:
            raise ValueError(f"{ckpt_path} was started with --epochs {ckpt['total_epochs']}; the cosine schedule "
                             f"depends on it, so resume with the same --epochs")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        schedule["anneal"] = ckpt.get("anneal")
        if anneal_to is not None and schedule["anneal"] is None:
            if not ckpt["epoch"] < anneal_to <= epochs:
                raise ValueError(f"--anneal-to {anneal_to}: must be after the checkpoint's epoch {ckpt['epoch']} "
                                 f"and at most --epochs {epochs}")
            step = ckpt["epoch"] * steps_per_epoch
            schedule["anneal"] = {"from_step": step, "to_step": anneal_to * steps_per_epoch, "to_epoch": anneal_to,
                                  "from_factor": cosine_lr(step, total, 1.0, warmup)}
            print(f"shortening the run: cosine from lr {lr * schedule['anneal']['from_factor']:.2e} to 0 at the end of "
                  f"epoch {anneal_to}")
        if schedule["anneal"] is not None:
            epochs = schedule["anneal"]["to_epoch"]
            for g in opt.param_groups:  # the scheduler's lr for the next step under the stored schedule
                g["lr"] = lr * lr_factor(sched.last_epoch)
        set_rng_state(gen, ckpt["rng"])
        start_epoch, elapsed, history = ckpt["epoch"], ckpt["elapsed_s"], ckpt["history"]
        print(f"resuming {ckpt_path} at epoch {start_epoch}/{epochs} ({elapsed / 60:.1f} min trained so far)")
    x_all = norm(train.images)
    y_all = torch.as_tensor(train.labels)
    for epoch in range(start_epoch, min(epochs, stop_after or epochs)):
        model.train()
        t0 = time.time()
        bar = tqdm(batches(len(train), batch_size, gen), total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{epochs}")
        running = 0.0
        for i, idx in enumerate(bar):
            x = augment(x_all[idx], pad, flip, gen)
            loss = loss_fn(forward(model, x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = 0.98 * running + 0.02 * float(loss) if i else float(loss)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        elapsed += time.time() - t0
        val_acc = evaluate_accuracy(model, val, dataset, forward)
        history.append({"epoch": epoch + 1, "loss": running, "val_accuracy": val_acc, "elapsed_s": elapsed,
                        "epoch_s": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        rng=rng_state(gen), epoch=epoch + 1, total_epochs=schedule["total_epochs"],
                        anneal=schedule["anneal"], elapsed_s=elapsed, history=history,
                        meta=meta or {})
    return {"elapsed_s": elapsed, "history": history}


@torch.no_grad()
def evaluate_accuracy(model, split: Split, dataset: str, forward, batch_size: int = 500) -> float:
    model.eval()
    norm = Normalizer(dataset)
    correct = 0
    for idx in batches(len(split), batch_size):
        out = forward(model, norm(split.images[idx.numpy()]))
        if out.dim() == 3:
            out = out.sum(0)
        correct += int((out.argmax(-1) == torch.as_tensor(split.labels[idx.numpy()])).sum())
    return correct / max(1, len(split))


@torch.no_grad()
def collect_logits(model, split: Split, dataset: str, timesteps: int, batch_size: int = 500,
                   desc: str = "logits") -> np.ndarray:
    """Per-timestep logits ``[N, T, K]`` from PyTorch."""
    model.eval()
    norm = Normalizer(dataset)
    outs = []
    for idx in tqdm(list(batches(len(split), batch_size)), desc=desc):
        outs.append(model(norm(split.images[idx.numpy()]), timesteps).permute(1, 0, 2).numpy())
    return np.concatenate(outs)


def train_policy(policy: nn.Module, images: np.ndarray, z: np.ndarray, y: np.ndarray, dataset: str, beta: float,
                 *, epochs: int, batch_size: int = 256, lr: float = 2e-3, seed: int = 0, rate: float | None = None,
                 loss: str = "rl", pad: int = 1, desc: str = ""):
    """Train a SEENN-II policy with the SNN frozen: ``z`` holds the SNN's stored per-timestep logits on
    ``images``, so the targets are exact.

    - ``loss="rl"``: the paper's objective, the exact expected reward over all actions (no sampling);
    - ``loss="sup"``: cross-entropy towards the earliest timestep at which the SNN is right (one step
      for inputs it never gets right), i.e. supervised targets instead of the reward;
    - ``loss="sup-multi"``: one binary cross-entropy per action on "the SNN is right after a steps", so
      each action logit is the log-odds of being right there (the bias sweep then trades steps for it).
    ``pad`` is the random-crop augmentation applied on the fly (0 when ``images`` already holds
    augmented copies whose logits are in ``z``)."""
    torch.manual_seed(seed)
    norm = Normalizer(dataset)
    correct = torch.as_tensor(seenn.correct_per_t(z, y))
    target = torch.as_tensor(seenn.earliest_correct_action(correct.numpy()))
    rate = float(correct[:, 0].float().mean()) if rate is None else rate
    weight = seenn.class_balance_weight(correct[:, 0].float(), rate)
    x_all = norm(images)
    opt = torch.optim.Adam(policy.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    policy.train()
    for epoch in range(epochs):
        bar = tqdm(batches(len(y), batch_size, gen), total=steps_per_epoch, leave=False,
                   desc=f"policy {desc or loss} β={beta} {epoch + 1}/{epochs}")
        for i, idx in enumerate(bar):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(epoch * steps_per_epoch + i, total, lr, 0)
            x = augment(x_all[idx], pad, False, gen) if pad else x_all[idx]
            out = policy(x)
            if loss == "rl":
                objective = seenn.policy_loss(out, correct[idx], weight[idx], beta)
            elif loss == "sup":
                objective = nn.functional.cross_entropy(out, target[idx])
            elif loss == "sup-multi":
                objective = nn.functional.binary_cross_entropy_with_logits(out, correct[idx].float())
            else:
                raise ValueError(f"unknown policy loss {loss!r}; accepted: rl, sup, sup-multi")
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
    return policy.eval()


def pretrain_policy_backbone(policy: nn.Module, train: Split, dataset: str, num_classes: int, *, epochs: int,
                             batch_size: int = 128, lr: float = 2e-3, seed: int = 0):
    """Train the policy's convolutional features as an image classifier on the SNN's own training
    images (labels only, no SNN outputs), so that the action head starts from features that know how
    ambiguous an input looks; the action head is then trained on held-out SNN outcomes."""
    torch.manual_seed(seed)
    norm = Normalizer(dataset)
    head = nn.Linear(policy.fc.in_features, num_classes)
    params = list(policy.features.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = norm(train.images), torch.as_tensor(train.labels)
    policy.train()
    for epoch in range(epochs):
        for i, idx in enumerate(tqdm(batches(len(train), batch_size, gen), total=steps_per_epoch, leave=False,
                                     desc=f"policy backbone {epoch + 1}/{epochs}")):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(epoch * steps_per_epoch + i, total, lr, min(100, steps_per_epoch))
            x = augment(x_all[idx], 2, True, gen)
            loss = nn.functional.cross_entropy(head(policy.embed(x)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return policy.eval()


@torch.no_grad()
def policy_logits(policy: nn.Module, images: np.ndarray, dataset: str, batch_size: int = 1000) -> np.ndarray:
    policy.eval()
    norm = Normalizer(dataset)
    return np.concatenate([policy(norm(images[i:i + batch_size])).numpy() for i in range(0, len(images), batch_size)])


@torch.no_grad()
def augmented_copies(split: Split, copies: int, seed: int = 0, pad: int = 2, flip: bool = True) -> Split:
    """The split itself followed by ``copies`` randomly cropped/flipped versions of it (uint8), the same
    augmentation the SNN trained with: more (input, SNN outcome) pairs for the exit head and the policy."""
    if copies <= 0:
        return split
    rng = np.random.RandomState(seed)
    n, c, h, w = split.images.shape
    out = [split.images]
    for _ in range(copies):
        padded = np.pad(split.images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dx, dy = rng.randint(0, 2 * pad + 1, n), rng.randint(0, 2 * pad + 1, n)
        imgs = np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        if flip:
            mask = rng.rand(n) < 0.5
            imgs[mask] = imgs[mask][..., ::-1]
        out.append(imgs)
    return Split(np.ascontiguousarray(np.concatenate(out)), np.tile(split.labels, copies + 1))


def train_joint(model, policy, train: Split, dataset: str, beta: float, timesteps: int, *, epochs: int,
                batch_size: int = 128, lr: float = 2e-4, seed: int = 0):
    """``--joint``: fine-tune SNN and policy together on L_TET − R (R the exact expected reward)."""
    torch.manual_seed(seed)
    norm = Normalizer(dataset)
    params = list(model.parameters()) + list(policy.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = norm(train.images), torch.as_tensor(train.labels)
    model.train()
    policy.train()
    for epoch in range(epochs):
        for idx in tqdm(batches(len(train), batch_size, gen), desc=f"joint {epoch + 1}/{epochs}",
                        total=math.ceil(len(train) / batch_size)):
            x, y = augment(x_all[idx], 2, True, gen), y_all[idx]
            z = model(x, timesteps)
            correct = (z.detach().cumsum(0).argmax(-1) == y).T
            rate = float(correct[:, 0].float().mean())
            weight = seenn.class_balance_weight(correct[:, 0].float(), rate)
            loss = tet_loss(z, y) + seenn.policy_loss(policy(x), correct, weight, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval(), policy.eval()


@torch.no_grad()
def policy_actions(policy: nn.Module, images: np.ndarray, dataset: str, batch_size: int = 1000) -> np.ndarray:
    policy.eval()
    norm = Normalizer(dataset)
    out = [policy(norm(images[i:i + batch_size])).argmax(1).numpy() + 1 for i in range(0, len(images), batch_size)]
    return np.concatenate(out)
