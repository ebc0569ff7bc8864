"""Real datasets by name: ``cifar10``, ``cifar100``, ``svhn`` and ``imagenet`` (an image folder).

Each is read from ``data.root`` in the layout torchvision's dataset classes download to:

- ``cifar10``:  ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- ``cifar100``: ``ROOT/cifar-100-python/{train, test, meta}``
- ``svhn``:     ``ROOT/{train_32x32.mat, test_32x32.mat}``
- ``imagenet``: ``ROOT/imagenet/{train,val}/<class>/<image>`` (``ImageFolder`` layout; the
  official validation set, sorted into class folders, is the test split)

Nothing downloads unless ``data.download: true`` (then torchvision's own classes fetch
the files into ``data.root``). A missing dataset fails in the config check, before any
compute, with one line saying how to get it.

**Reading and integrity checks (a choice).** The kit parses the files with its own small
readers (the CIFAR python pickle batches and their ``batches.meta``/``meta``, SVHN's
MATLAB ``.mat`` via :func:`scipy.io.loadmat`), which read exactly the files torchvision's
classes read. With ``data.verify: true`` (the default) every file's md5 must equal the md5
of the official release (the values torchvision's dataset classes check; ``tests``
compare this table with theirs), so users get the same protection. Stand-ins written by the
tests have other bytes and are read with ``data.verify: false`` — an explicit switch, never a
fallback. Own readers also keep the data path independent of torchvision's compiled ops.

CIFAR and SVHN are held in memory at their native 32x32 (uint8 on disk, float32 in the
:class:`~quee_kit.data.Split`); the backbone's stem resizes them to its input size. ImageNet is
never held in memory: :class:`ImageFiles` decodes images per batch (worker threads, or a
``DataLoader`` with workers for full passes), resized and centre-cropped with the backbone's
own eval transform (input size, crop fraction, interpolation); normalization is the stem's job.
"""
from __future__ import annotations

import hashlib
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .dataset_files import DataError, OfficialSplits, register_dataset
from .vision_import import import_torchvision
from .dataset_files import CIFAR as _CIFAR
from .dataset_files import check_cifar as _check_cifar
from .dataset_files import check_imagenet as _check_imagenet
from .dataset_files import check_svhn as _check_svhn
from .dataset_files import cifar_files as _cifar_files

__all__ = ["ImageFiles", "OFFICIAL_MD5", "read_cifar", "read_svhn", "scan_image_folder"]

# md5 of the files of the official releases, as checked by torchvision's dataset classes.
OFFICIAL_MD5 = {
    "cifar10": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d",
                 "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                 "meta": "7973b15100ade9c7d40fb424638fde48"},
    "svhn": {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
             "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"},
}

_SVHN_CALIB = 5000
_IMAGENET_CALIB = 10000
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(name: str, folder: Path, files: list[str]) -> None:
    for f in files:
        got = _md5(folder / f)
        if got != OFFICIAL_MD5[name][f]:
            raise DataError(f"data.verify: {name} file {folder / f} is not the official release (md5 {got}, "
                             f"expected {OFFICIAL_MD5[name][f]}); re-download it, or set data.verify: false "
                             f"to read a copy in the same format")


def _download(name: str, root: Path) -> None:
    """Fetch with torchvision's own dataset classes (only when data.download is true)."""
    datasets = import_torchvision().datasets
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        if name == "svhn":
            datasets.SVHN(str(root), split="train" if train else "test", download=True)
        else:
            (datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100)(str(root), train=train, download=True)


class ArraysUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, bytes, numbers and numpy arrays: what the CIFAR
    batches hold. Any other global (a function to call, a class to build) is refused, so a planted
    file (e.g. read with ``data.verify: false``) cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}   # how a Python 3 writer's protocol-2 pickle spells bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}"[:120])
        return super().find_class(module, name)


def read_cifar(name: str, root: Path, verify: bool = True) -> OfficialSplits:
    """Read the CIFAR python pickle batches: data (N, 3072) uint8 rows -> (N, 3, 32, 32)."""
    folder_name, train_files, test_files, meta, label_key, names_key, calib = _CIFAR[name]
    folder = Path(root) / folder_name
    if verify:
        _verify(name, folder, _cifar_files(name))

    def load(path: Path) -> dict:
        # The official files are Python 2 pickles: latin1 turns their str keys into str (as torchvision
        # reads them); bytes keys (a Python 3 writer's) are decoded to the same names.
        try:
            with open(path, "rb") as f:
                d = ArraysUnpickler(f, encoding="latin1").load()
            return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
            raise DataError(f"data.root: {path} is not a CIFAR python pickle ({type(e).__name__}"
                            f"{': ' + str(e) if isinstance(e, pickle.UnpicklingError) else ''})") from None

    def read(files):
        xs, ys = [], []
        for fname in files:
            d = load(folder / fname)
            if "data" not in d or label_key not in d:
                raise DataError(f"data.root: {folder / fname} lacks the keys 'data' and {label_key!r}")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    tx, ty = read(train_files)
    vx, vy = read(test_files)
    classes = load(folder / meta).get(names_key)
    if not classes:
        raise DataError(f"data.root: {folder / meta} lacks {names_key!r}")
    return OfficialSplits(tx, ty, vx, vy, calib=calib, num_classes=len(classes))


def read_svhn(root: Path, verify: bool = True) -> OfficialSplits:
    """Read SVHN's cropped-digit .mat files: X (32, 32, 3, N) -> (N, 3, 32, 32); label 10 means digit 0."""
    from scipy.io import loadmat
    files = ["train_32x32.mat", "test_32x32.mat"]
    if verify:
        _verify("svhn", Path(root), files)
    parts = []
    for fname in files:
        try:
            m = loadmat(str(Path(root) / fname))
            x = np.ascontiguousarray(np.transpose(m["X"], (3, 2, 0, 1)), dtype=np.uint8)
            y = np.asarray(m["y"], dtype=np.int64).reshape(-1) % 10
        except Exception as e:  # noqa: BLE001
            raise DataError(f"data.root: {Path(root) / fname} is not an SVHN .mat file with X (32,32,3,N) "
                             f"and y (N,1) ({type(e).__name__}: {e})") from None
        parts += [x, y]
    return OfficialSplits(*parts, calib=_SVHN_CALIB, num_classes=10)


def _cifar_loader(name):
    def load(root: Path, download: bool = False, verify: bool = True, **_) -> OfficialSplits:
        if download and any(not (root / _CIFAR[name][0] / f).is_file() for f in _cifar_files(name)):
            _download(name, root)
        return read_cifar(name, root, verify)
    return load


register_dataset("cifar10", check=_check_cifar("cifar10"))(_cifar_loader("cifar10"))
register_dataset("cifar100", check=_check_cifar("cifar100"))(_cifar_loader("cifar100"))


@register_dataset("svhn", check=_check_svhn)
def _load_svhn(root: Path, download: bool = False, verify: bool = True, **_) -> OfficialSplits:
    if download and not all((root / f).is_file() for f in ("train_32x32.mat", "test_32x32.mat")):
        _download("svhn", root)
    return read_svhn(root, verify)


# ---------------------------------------------------------------- image folders (ImageNet)

def scan_image_folder(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """``folder/<class>/<image>`` -> (sorted class names, image paths, labels), as ImageFolder orders them."""
    classes = sorted(d.name for d in Path(folder).iterdir() if d.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((Path(folder) / c).rglob("*")):
            if p.suffix.lower() in _IMAGE_EXT:
                paths.append(p)
                labels.append(i)
    return classes, paths, np.asarray(labels, dtype=np.int64)


class ImageFiles:
    """A lazy list of images: indexing with an int array, a tensor or a slice decodes those images.

    ``x[idx]`` -> (B, 3, S, S) float32 in [0, 1]: RGB, shorter side resized to ``S / crop_pct`` with
    ``interpolation``, centre crop ``S`` (timm's eval transform without its normalization, which the
    backbone's stem applies). ``batches(batch_size, workers)`` streams in order through a DataLoader.
    """

    def __init__(self, paths: list[Path], size: int = 224, crop_pct: float = 0.875,
                 interpolation: str = "bilinear", workers: int = 4):
        self.paths, self.size, self.crop_pct = list(paths), int(size), float(crop_pct)
        # workers: DataLoader processes for full passes (0 = in this process); threads for indexed batches
        self.interpolation, self.workers, self.threads = interpolation, int(workers), max(1, int(workers))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    def digest(self) -> str:
        """sha256 of the file names, sizes and transform (not the pixels: hashing ImageNet would take hours)."""
        h = hashlib.sha256(f"{self.size}|{self.crop_pct}|{self.interpolation}".encode())
        for p in self.paths:
            h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size}|".encode())
        return h.hexdigest()

    def take(self, idx) -> "ImageFiles":
        return ImageFiles([self.paths[int(i)] for i in np.asarray(idx)], self.size, self.crop_pct,
                          self.interpolation, self.workers)

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
                    "nearest": Image.NEAREST}.get(self.interpolation, Image.BILINEAR)
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = max(self.size, round(self.size / self.crop_pct)) / min(w, h)
            new = (max(self.size, round(w * scale)), max(self.size, round(h * scale)))
            if new != (w, h):
                im = im.resize(new, resample)
            w, h = im.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        idx = [int(i) for i in (idx.tolist() if hasattr(idx, "tolist") else idx)]
        with ThreadPoolExecutor(self.threads) as pool:
            return torch.stack(list(pool.map(self.load, idx))) if idx else torch.empty(0, *self.image_shape)

    def batches(self, batch_size: int, workers: int | None = None):
        """Yield (B, 3, S, S) batches in order, decoded by ``workers`` DataLoader processes
        (default: ``data.workers``; 0 decodes in this process)."""
        from torch.utils.data import DataLoader
        workers = self.workers if workers is None else workers
        loader = DataLoader(_Indexed(self), batch_size=batch_size, shuffle=False, num_workers=workers)
        yield from loader


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.files.load(i)


@register_dataset("imagenet", check=_check_imagenet)
def _load_imagenet(root: Path, workers: int = 4, input_config=None, image_size: int | None = None,
                   **_) -> OfficialSplits:
    """Decoded with the backbone's eval transform (``input_config``: a dict, or a callable returning one);
    ``image_size`` overrides its side."""
    ic = input_config() if callable(input_config) else input_config
    cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear", **(ic or {})}
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    classes, tr_paths, tr_y = scan_image_folder(root / "imagenet" / "train")
    val_classes, te_paths, te_y = scan_image_folder(root / "imagenet" / "val")
    if val_classes != classes:
        raise DataError(f"data.root: imagenet train/ and val/ have different class folders "
                         f"({len(classes)} vs {len(val_classes)})")
    args = (int(cfg["input_size"][-1]), float(cfg["crop_pct"]), str(cfg["interpolation"]), workers)
    return OfficialSplits(ImageFiles(tr_paths, *args), tr_y, ImageFiles(te_paths, *args), te_y,
                          calib=min(_IMAGENET_CALIB, len(tr_y) // 5), num_classes=len(classes))
