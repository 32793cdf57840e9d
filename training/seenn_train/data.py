"""Datasets: IDX (Fashion-MNIST / MNIST layout) and CIFAR-10 python batches.

Images are returned as uint8 arrays ``[N, C, H, W]`` and int64 labels; normalisation happens in the
model input pipeline so the exact same numbers can be written to the model manifest.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Per-channel statistics of the training images (pixel values scaled to [0, 1]).
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Layout: two zero bytes, a dtype code, the number of dimensions, one big-endian u32 per dimension,
    then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - header < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX data: expected {count} items of shape {dims}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims).copy()


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = data_dir / name
        if p.exists():
            return p
    raise FileNotFoundError(
        f"{data_dir}: no {stem}[.gz]; install Debian's dataset-fashion-mnist or pass --data-dir"
    )


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n])


def load_idx_dataset(data_dir: str | os.PathLike, train: bool) -> Split:
    """Fashion-MNIST or MNIST in IDX layout: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""
    data_dir = Path(data_dir)
    prefix = "train" if train else "t10k"
    images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{data_dir}: images {images.shape} and labels {labels.shape} do not match")
    return Split(images[:, None, :, :].astype(np.uint8), labels.astype(np.int64))


def load_cifar10(data_dir: str | os.PathLike, train: bool) -> Split:
    """CIFAR-10 "python version" batches (``data_batch_1..5``, ``test_batch``)."""
    data_dir = Path(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = data_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing CIFAR-10 batch")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Split(np.concatenate(images), np.concatenate(labels))


def train_val_split(split: Split, val_size: int = 5000, seed: int = 0) -> tuple[Split, Split]:
    """A fixed, seeded split of the training file: the test set is never used to choose anything."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(split))
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return (Split(split.images[train_idx], split.labels[train_idx]),
            Split(split.images[val_idx], split.labels[val_idx]))


def train_holdout_val_split(split: Split, val_size: int = 5000, holdout_size: int = 5000,
                            seed: int = 0) -> tuple[Split, Split, Split]:
    """Three disjoint parts of the training file from one seeded permutation: ``order[:val_size]`` is the
    validation split (the same images as :func:`train_val_split` with the same seed), the next
    ``holdout_size`` images are held out of SNN training (the exit head and the SEENN-II policy learn
    from the SNN's outputs on them), the rest trains the SNN."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(split))
    val_idx = np.sort(order[:val_size])
    hold_idx = np.sort(order[val_size:val_size + holdout_size])
    train_idx = np.sort(order[val_size + holdout_size:])
    return (Split(split.images[train_idx], split.labels[train_idx]),
            Split(split.images[hold_idx], split.labels[hold_idx]),
            Split(split.images[val_idx], split.labels[val_idx]))


def split_indices(n: int, val_size: int = 5000, holdout_size: int = 5000, seed: int = 0) -> dict:
    """The row indices (into the training file) of each part of :func:`train_holdout_val_split`."""
    order = np.random.RandomState(seed).permutation(n)
    return {"val": np.sort(order[:val_size]), "holdout": np.sort(order[val_size:val_size + holdout_size]),
            "train": np.sort(order[val_size + holdout_size:])}


@dataclass
class DatasetInfo:
    name: str
    labels: list
    mean: tuple
    std: tuple
    channels: int
    size: int


DATASETS = {
    "fashion-mnist": DatasetInfo("fashion-mnist", FASHION_LABELS, FASHION_MEAN, FASHION_STD, 1, 28),
    "mnist": DatasetInfo("mnist", [str(i) for i in range(10)], (0.1307,), (0.3081,), 1, 28),
    "cifar10": DatasetInfo("cifar10", CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, 3, 32),
}


def load(name: str, data_dir: str | None, train: bool) -> Split:
    if name in ("fashion-mnist", "mnist"):
        return load_idx_dataset(data_dir or DEFAULT_FASHION_DIR, train)
    if name == "cifar10":
        if not data_dir:
            raise ValueError("cifar10 needs --data-dir pointing at the python batches")
        return load_cifar10(data_dir, train)
    raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
