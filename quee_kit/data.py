"""Dataset registry: small image-classification sets split into train / calib / test.

Every dataset is a pair of raw arrays (x, y) shuffled once with a fixed seed
(``np.random.default_rng(split_seed).permutation(N)``) and cut into three
disjoint parts:

- train: fits the classifier;
- calib: trains the error predictors and picks lambda;
- test:  only reported.

Names: ``mnist10k`` (data/mnist10k.npz, see data/README.md), ``digits``
(scikit-learn's bundled 8x8 UCI digits) and ``npz:PATH`` (your own file with
keys ``x`` and ``y``). Nothing here touches the network.

Datasets that come with an official train/test split (``cifar10``, ``cifar100``,
``svhn``, ``imagenet``: :mod:`quee_kit.real_data`) return :class:`OfficialSplits`
instead: calib is carved from the official train part with ``split_seed``, and
test is the official test part (``sizes`` caps each part).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset_files import (DATASET_CHECKS, DATASETS, DataError, OfficialSplits, check_dataset_available,  # noqa: F401
                            default_data_dir, register_dataset, validate_dataset_name)
from .dials import apply_dials, check_dial, dial_recipe

MNIST10K_SHA256 = "c127f28ba6587b035da58af9c862de40ecd72470e8f3396f0cf542242845222b"
# Package data (inside the wheel too), so an installed kit runs its default without a checkout.
MNIST10K_PATH = Path(__file__).resolve().parent / "embedded" / "mnist10k.npz"
REBUILD_HINT = "rebuild it with `python data/build_mnist10k.py`"
MIN_SAMPLES = 10


# eq=False: dataclass equality would compare tensors elementwise and fail;
# compare datasets by ``digest`` instead.
@dataclass(frozen=True, eq=False)
class Split:
    """One part of a dataset.

    x: (N, C, H, W) float32, pixel intensities in [0, 1] (npz floats kept as given); for image
       folders a lazy :class:`~quee_kit.real_data.ImageFiles` that returns such tensors when indexed.
    y: (N,) int64 class labels in [0, num_classes).
    """
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split into train / calib / test.

    digest: sha256 hex of the name, the raw arrays and the split indices (and, for data derived by the
    dials, their recipe: :func:`quee_kit.dials.dial_recipe`); equal digests mean the same splits of the
    same data (used as a cache key).
    """
    name: str
    train: Split
    calib: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    digest: str

    def split(self, name: str) -> Split:
        """Return the split called 'train', 'calib' or 'test'."""
        if name not in ("train", "calib", "test"):
            raise DataError(f"unknown split {name!r} (allowed: train, calib, test)")
        return getattr(self, name)


@register_dataset("mnist10k")
def _load_mnist10k(data_dir: Path, **_) -> tuple[np.ndarray, np.ndarray]:
    """10,000 MNIST digits: x uint8 (10000, 28, 28), y uint8 (10000,), in class order. Always the embedded
    file :data:`MNIST10K_PATH` (checksummed), whatever ``data.root`` says: that root is for real datasets."""
    path = MNIST10K_PATH
    if not path.is_file():
        raise DataError(f"mnist10k: file not found: {path}; {REBUILD_HINT}")
    raw = path.read_bytes()
    got = hashlib.sha256(raw).hexdigest()
    if got != MNIST10K_SHA256:
        raise DataError(f"mnist10k: {path} is corrupted (sha256 {got[:12]}..., "
                         f"expected {MNIST10K_SHA256[:12]}...); {REBUILD_HINT}")
    with np.load(path, allow_pickle=False) as f:
        return f["x"], f["y"]


@register_dataset("digits")
def _load_digits(data_dir: Path, **_) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled UCI digits: x float (1797, 8, 8) in [0, 1] (0..16 / 16), y (1797,)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target


def _load_npz(path_str: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a user npz with keys x and y; every problem is one ValueError line."""
    path = Path(path_str)
    where = f"npz:{path_str}"
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:  # zip/format errors come in many types
        raise DataError(f"{where}: not a valid npz file ({type(e).__name__})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{where}: not a valid npz file (a single .npy array, not a zip of x and y)")
    with f:
        for key in ("x", "y"):
            if key not in f.files:
                raise DataError(f"{where}: missing key {key!r} (found: {', '.join(f.files) or 'none'})")
        try:
            x, y = f["x"], f["y"]
        except Exception as e:
            raise DataError(f"{where}: cannot read arrays ({type(e).__name__}: {e})") from None
    if x.ndim not in (3, 4):
        raise DataError(f"{where}: x must have rank 3 (N,H,W) or 4 (N,C,H,W), got shape {x.shape}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: x must be uint8 or float, got dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{where}: y must be 1-D (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: y must have an integer dtype, got {y.dtype}")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}")
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        raise DataError(f"{where}: x contains NaN or inf")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: y contains negative labels (min {y.min()})")
    if len(y) < MIN_SAMPLES:
        raise DataError(f"{where}: too few samples ({len(y)} < {MIN_SAMPLES})")
    return x, y


def _check_sizes(sizes, n: int) -> tuple[int, int, int]:
    """sizes = (train, calib, test); None -> 60/20/20 of n with the remainder to train."""
    if sizes is None:
        calib = test = n // 5
        return n - calib - test, calib, test
    sizes = tuple(sizes)
    if (len(sizes) != 3 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in sizes)
            or sum(sizes) > n):
        raise DataError(f"data.sizes: need three ints >= 1 summing to <= {n} samples, got {list(sizes)}")
    return tuple(int(s) for s in sizes)


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 -> float32 / 255, float -> float32; add the channel axis to (N, H, W)."""
    xf = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if xf.ndim == 3:
        xf = xf[:, None]
    return torch.from_numpy(np.ascontiguousarray(xf))


def load_dataset(name: str, split_seed: int = 0, sizes: tuple[int, int, int] | None = None,
                 data_dir: str | Path | None = None, difficulty: float = 0.0, heterogeneity: float = 0.0,
                 **options) -> Dataset:
    """Load ``name`` and split it with a fixed-seed permutation.

    sizes: (train, calib, test) sample counts, default mnist10k 6000/2000/2000,
    else 60/20/20 of N. Samples beyond sum(sizes) are left unused. For datasets with an
    official split, sizes cap (train, calib, test) and default to (rest, dataset calib, all).
    data_dir: folder holding the data (default: $QUEE_KIT_DATA or data/).
    options: passed to the loader (real datasets: download, verify, workers, input_config).
    difficulty, heterogeneity: data dials in [0, 1] (:mod:`quee_kit.dials`), applied to the raw arrays
    before the split (so they enter the digest); in-memory datasets only (not official splits).
    """
    try:
        check_dial("data.difficulty", difficulty)
        check_dial("data.heterogeneity", heterogeneity)
    except ValueError as e:
        raise DataError(str(e)) from None
    if name.startswith("npz:"):
        x, y = _load_npz(name[4:])
    else:
        validate_dataset_name(name)
        check_dataset_available(name, data_dir, options.get("download", False))
        raw = DATASETS[name](Path(data_dir) if data_dir is not None else default_data_dir(), **options)
        if isinstance(raw, OfficialSplits):
            if difficulty or heterogeneity:
                raise DataError(f"data.difficulty/heterogeneity: {name} has an official split; the dials apply "
                                "to in-memory datasets (mnist10k, digits, npz:PATH)")
            return _split_official(name, raw, split_seed, sizes)
        x, y = raw
    raw_x, y = np.asarray(x), np.asarray(y)
    x = apply_dials(raw_x, difficulty, heterogeneity)
    n = len(y)
    if sizes is None and name == "mnist10k":
        sizes = (6000, 2000, 2000)
    n_train, n_calib, n_test = _check_sizes(sizes, n)

    perm = np.random.default_rng(split_seed).permutation(n)
    parts = {"train": perm[:n_train],
             "calib": perm[n_train:n_train + n_calib],
             "test": perm[n_train + n_calib:n_train + n_calib + n_test]}

    # dialled data are named by their recipe (the raw arrays, the dials, their code version), not by the
    # derived pixels, whose last bits depend on the CPU's kernels (quee_kit.dials.dial_recipe)
    h = hashlib.sha256(name.encode())
    for arr in (raw_x, y):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    if x is not raw_x:
        h.update(dial_recipe(difficulty, heterogeneity))
    for idx in parts.values():
        h.update(idx.astype(np.int64).tobytes() + b"|")

    xt = _to_tensor(x)
    yt = torch.from_numpy(y.astype(np.int64))
    splits = {k: Split(xt[torch.from_numpy(i)], yt[torch.from_numpy(i)]) for k, i in parts.items()}
    return Dataset(name=name, **splits, num_classes=int(y.max()) + 1,
                   image_shape=tuple(xt.shape[1:]), digest=h.hexdigest())


def _split_official(name: str, raw: OfficialSplits, split_seed: int, sizes) -> Dataset:
    """calib (and train) from a ``split_seed`` permutation of the official train part; test from
    the official test part (a ``split_seed`` subsample when capped, else all of it in order)."""
    n_tr, n_te = len(raw.train_y), len(raw.test_y)
    if sizes is None:
        if n_tr <= raw.calib:
            raise DataError(f"data.sizes: {name} has {n_tr} official train samples, not more than its default "
                             f"calib size {raw.calib}; set data.sizes: [train, calib, test]")
        sizes = (n_tr - raw.calib, raw.calib, n_te)
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or min(sizes) < 1 or sizes[0] + sizes[1] > n_tr or sizes[2] > n_te:
        raise DataError(f"data.sizes: {name} needs [train, calib, test] >= 1 with train + calib <= {n_tr} "
                         f"(official train) and test <= {n_te} (official test), got {list(sizes)}")
    rng = np.random.default_rng(split_seed)
    perm = rng.permutation(n_tr)
    test_idx = np.arange(n_te) if sizes[2] == n_te else np.sort(rng.permutation(n_te)[:sizes[2]])
    parts = {"train": ("train", perm[:sizes[0]]), "calib": ("train", perm[sizes[0]:sizes[0] + sizes[1]]),
             "test": ("test", test_idx)}
    h = hashlib.sha256(f"{name}|official".encode())
    for part in ("train", "test"):
        x, y = getattr(raw, f"{part}_x"), np.asarray(getattr(raw, f"{part}_y"))
        h.update(x.digest().encode() if hasattr(x, "digest") else
                 f"{x.dtype.str}{x.shape}".encode() + np.ascontiguousarray(x).tobytes())
        h.update(y.astype(np.int64).tobytes())
    splits = {}
    for key, (part, idx) in parts.items():
        h.update(idx.astype(np.int64).tobytes() + b"|")
        x, y = getattr(raw, f"{part}_x"), np.asarray(getattr(raw, f"{part}_y"))
        xs = x.take(idx) if hasattr(x, "take") and not isinstance(x, np.ndarray) else _to_tensor(x[idx])
        splits[key] = Split(xs, torch.from_numpy(y[idx].astype(np.int64)))
    shape = tuple(splits["test"].x.image_shape if hasattr(splits["test"].x, "image_shape")
                  else splits["test"].x.shape[1:])
    return Dataset(name=name, **splits, num_classes=raw.num_classes, image_shape=shape, digest=h.hexdigest())


# Registers cifar10, cifar100, svhn and imagenet (imported last: it uses register_dataset).
from . import real_data  # noqa: E402,F401
