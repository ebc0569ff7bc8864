"""Where each real dataset's files live and how to get them: cheap checks with no torch import.

The config check calls :func:`check_files` before anything imports torch, so a missing dataset fails
in a fraction of a second with one line; :mod:`quee_kit.real_data` reads the files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:   # annotations only: this module stays cheap to import (no numpy, no torch)
    import numpy as np

from .config_rules import UserError
from .locations import PROJECT_ROOT
from .registry import DATASETS


__all__ = ["DataError", "CIFAR", "cifar_files", "check_files", "default_data_dir", "DATASETS", "DATASET_CHECKS",
           "OfficialSplits", "register_dataset", "validate_dataset_name", "check_dataset_available"]


class DataError(UserError):
    """A dataset that cannot be loaded as asked (missing or malformed file, bad sizes): one line."""


def default_data_dir() -> Path:
    """Where real datasets are looked for: $QUEE_KIT_DATA if set, else ``data/`` of the project root (the
    repository in a checkout, the working directory for an installed package)."""
    env = os.environ.get("QUEE_KIT_DATA")
    return Path(env) if env else PROJECT_ROOT / "data"


# The dataset registry (quee_kit.registry.DATASETS) sits below both loaders' modules (quee_kit.data:
# mnist10k, digits, npz; quee_kit.real_data: cifar10/100, svhn, imagenet), and declares their names, so the
# config check knows them without importing either. A loader takes the data directory and returns raw (x, y): x (N, H, W) or
# (N, C, H, W) as uint8 (scaled by 1/255 later) or float (kept), y (N,) integers.
# Loaders also receive keyword options (``download``, ``verify``, ``workers``, ``input_config``)
# that only the real datasets use.
Loader = Callable[..., "tuple[np.ndarray, np.ndarray] | OfficialSplits"]
# name -> check(data_dir, download) raising ValueError with a how-to-get-it hint (cheap: no loading).
DATASET_CHECKS: dict[str, Callable] = {}


@dataclass(frozen=True, eq=False)
class OfficialSplits:
    """What a loader with an official split returns.

    train_x / test_x: uint8 arrays (N, C, H, W), or lazy image lists (see
    :class:`quee_kit.real_data.ImageFiles`) that return float tensors in [0, 1] when indexed;
    train_y / test_y: (N,) ints; calib: default calib size carved from train;
    num_classes: from the dataset's own metadata (not from the labels present).
    """
    train_x: object
    train_y: np.ndarray
    test_x: object
    test_y: np.ndarray
    calib: int
    num_classes: int


def register_dataset(name: str, check: Callable | None = None) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir, **options) -> (x, y) | OfficialSplits`` under ``name``.

    ``check(data_dir, download)`` (optional) tells cheaply, before any compute, whether the
    data is there; it raises ``ValueError('data.root: ... how to get it')`` when it is not.
    """
    def deco(fn: Loader) -> Loader:
        DATASETS.register(name)(fn)
        if check is not None:
            DATASET_CHECKS[name] = check
        return fn
    return deco


def validate_dataset_name(name: str) -> None:
    """Cheap check, no loading, no import of the loaders: a known name (:data:`~quee_kit.registry.DATASETS`)
    or 'npz:' + an existing file."""
    if isinstance(name, str) and name.startswith("npz:"):
        if not Path(name[4:]).is_file():
            raise DataError(f"data.name: npz file not found: {name[4:]!r}")
        return
    if name not in DATASETS.names():
        allowed = ", ".join([*DATASETS.names(), "npz:PATH"])
        raise DataError(f"data.name: unknown dataset {name!r} (allowed: {allowed})")


def check_dataset_available(name: str, data_dir: str | Path | None = None, download: bool = False) -> None:
    """Raise ValueError (one line, with a hint) if a registered dataset's files are not there."""
    if name in DATASET_CHECKS:
        DATASET_CHECKS[name](Path(data_dir) if data_dir is not None else default_data_dir(), download)


# folder, train files, test files, meta file, label key, label-names key, default calib size
# (calib sizes follow JEI-DNN: CIFAR-10 5,000, CIFAR-100 10,000, SVHN 5,000).
CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names", 5000),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 10000),
}
_GET = {"cifar10": "unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {root}",
        "cifar100": "unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into {root}",
        "svhn": "save http://ufldl.stanford.edu/housenumbers/{{train,test}}_32x32.mat in {root}"}


def _missing(name: str, root: Path, where: Path, files: list[str], download: bool) -> None:
    absent = [f for f in files if not (where / f).is_file()]
    if absent and not download:
        raise DataError(f"data.root: {name} not found: {where} lacks {', '.join(absent)}; "
                         f"{_GET[name].format(root=root)} (or run once with --set data.download=true, which uses "
                         f"torchvision and the network), or point data.root (or $QUEE_KIT_DATA) at the folder "
                         f"holding it")


def cifar_files(name: str) -> list[str]:
    _, train, test, meta, *_ = CIFAR[name]
    return [*train, *test, meta]


def check_cifar(name):
    def check(root: Path, download: bool) -> None:
        _missing(name, root, root / CIFAR[name][0], cifar_files(name), download)
    return check


def check_svhn(root: Path, download: bool) -> None:
    _missing("svhn", root, root, ["train_32x32.mat", "test_32x32.mat"], download)


def check_imagenet(root: Path, download: bool) -> None:
    where = root / "imagenet"
    for part in ("train", "val"):
        d = where / part
        if not d.is_dir() or not any(x.is_dir() for x in d.iterdir()):
            raise DataError(f"data.root: imagenet not found: {d} has no class folders; ImageNet cannot be "
                             f"downloaded automatically: get ILSVRC2012 from image-net.org and lay out "
                             f"{where}/train/<wnid>/*.JPEG and {where}/val/<wnid>/*.JPEG (val sorted into "
                             f"class folders), or point data.root at the folder holding imagenet/")


# the real datasets' checks, here with their files (quee_kit.real_data registers the same with its loaders)
DATASET_CHECKS.update({"cifar10": check_cifar("cifar10"), "cifar100": check_cifar("cifar100"), "svhn": check_svhn,
                       "imagenet": check_imagenet})


def check_files(name: str, root: str | Path | None = None, download: bool = False) -> None:
    """Raise ValueError('data.root: ... how to get it') if real dataset ``name``'s files are missing
    (:func:`check_dataset_available`, before any loader is imported)."""
    check_dataset_available(name, root, download)
