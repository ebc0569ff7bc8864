"""Tiny stand-ins written in the exact on-disk formats of the real datasets (no download).

- CIFAR-10: ``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``: pickled dicts with
  ``data`` (N, 3072) uint8 rows (R plane, G plane, B plane, each 32x32 row-major), ``labels``,
  and ``label_names`` in the meta file (protocol 2, str keys: what torchvision's reader expects).
- CIFAR-100: ``cifar-100-python/train, test, meta`` with ``fine_labels``/``coarse_labels`` and
  ``fine_label_names``.
- SVHN: ``train_32x32.mat``/``test_32x32.mat`` (MATLAB v5): ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1)
  with labels 1..10 (10 = digit 0).
- ImageNet: ``imagenet/{train,val}/<wnid>/*.png``.

Every writer returns the arrays it wrote as (N, 3, 32, 32) uint8 and labels, for exact comparisons.
Images carry their class as a brightness offset so that tiny models can learn something.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _images(rng, y, side=32):
    base = rng.integers(0, 120, (len(y), 3, side, side))
    return (base + 12 * y[:, None, None, None]).clip(0, 255).astype(np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 12, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        y = rng.integers(0, 10, per_batch)
        x = _images(rng, y)
        _dump(d / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y.tolist(),
                                      "data": x.reshape(len(y), -1), "filenames": [f"{j}.png" for j in range(len(y))]})
        xs.append(x)
        ys.append(y)
    ty = rng.integers(0, 10, n_test)
    tx = _images(rng, ty)
    _dump(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": ty.tolist(),
                             "data": tx.reshape(n_test, -1), "filenames": [f"{j}.png" for j in range(n_test)]})
    _dump(d / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                               "num_vis": 3072})
    return np.concatenate(xs), np.concatenate(ys), tx, ty


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 100, n)
        x = _images(rng, y % 10)
        _dump(d / name, {"filenames": [f"{j}.png" for j in range(n)], "batch_label": name,
                         "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x.reshape(n, -1)})
        out += [x, y]
    _dump(d / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                       "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return tuple(out)


def write_svhn(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0):
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n)
        x = _images(rng, y)
        mat_y = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)  # SVHN stores digit 0 as 10
        savemat(str(Path(root) / f"{name}_32x32.mat"), {"X": np.transpose(x, (2, 3, 1, 0)), "y": mat_y})
        out += [x, y]
    return tuple(out)


def write_image_folder(root: Path, classes: int = 3, per_class=(8, 4), side: int = 32, seed: int = 0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for part, n in zip(("train", "val"), per_class):
        xs, ys = [], []
        for c in range(classes):
            d = Path(root) / "imagenet" / part / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            y = np.full(n, c)
            x = _images(rng, y * 3, side)
            for j in range(n):
                Image.fromarray(np.transpose(x[j], (1, 2, 0))).save(d / f"img_{j:03d}.png")
            xs.append(x)
            ys.append(y)
        out += [np.concatenate(xs), np.concatenate(ys)]
    return tuple(out)
