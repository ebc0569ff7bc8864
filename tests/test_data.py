"""Tests of quee_kit.data: the bundled mnist10k file, the split, digits and npz:PATH."""
import hashlib
import pathlib
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from quee_kit import data as qd
from quee_kit.data import MNIST10K_SHA256, load_dataset, validate_dataset_name

NPZ = qd.MNIST10K_PATH
CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


@pytest.fixture(scope="module")
def raw():
    with np.load(NPZ) as f:
        return f["x"], f["y"]


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist10k", split_seed=0)


def test_mnist10k_file_checksum_and_raw_arrays(raw):
    assert hashlib.sha256(NPZ.read_bytes()).hexdigest() == MNIST10K_SHA256
    x, y = raw
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y).tolist() == CLASS_COUNTS
    assert np.all(np.diff(y.astype(int)) >= 0)  # stored in class order
    assert x.max() == 255 and x.min() == 0


def test_mnist10k_shapes_dtypes_ranges(mnist):
    assert mnist.num_classes == 10 and mnist.image_shape == (1, 28, 28)
    for name, n in [("train", 6000), ("calib", 2000), ("test", 2000)]:
        s = mnist.split(name)
        assert len(s) == n
        assert s.x.shape == (n, 1, 28, 28) and s.x.dtype == torch.float32
        assert s.y.shape == (n,) and s.y.dtype == torch.int64
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0
    with pytest.raises(ValueError, match="unknown split"):
        mnist.split("val")


def test_mnist10k_splits_partition_the_file(mnist, raw):
    x, y = raw
    xs = torch.cat([mnist.split(s).x for s in ("train", "calib", "test")])
    ys = torch.cat([mnist.split(s).y for s in ("train", "calib", "test")])
    # The three splits together are exactly the file's images, each used once.
    x8 = (xs[:, 0].numpy() * 255).round().astype(np.uint8)
    assert np.abs(xs[:, 0].numpy() * 255 - x8).max() < 1e-3
    assert Counter(r.tobytes() for r in x8) == Counter(r.tobytes() for r in x)
    assert np.bincount(ys.numpy()).tolist() == CLASS_COUNTS
    # And they follow the documented permutation, images paired with their labels.
    perm = np.random.default_rng(0).permutation(10000)
    assert np.array_equal(x8, x[perm]) and np.array_equal(ys.numpy(), y[perm])


def test_split_deterministic_and_seed_dependent(mnist):
    again = load_dataset("mnist10k", split_seed=0)
    other = load_dataset("mnist10k", split_seed=1)
    assert torch.equal(again.test.x, mnist.test.x) and torch.equal(again.train.y, mnist.train.y)
    assert again.digest == mnist.digest
    assert not torch.equal(other.test.y, mnist.test.y)
    assert other.digest != mnist.digest
    # shuffled: labels not sorted, every class present in every split
    y = mnist.train.y
    assert not torch.all(y[1:] >= y[:-1])
    for s in ("train", "calib", "test"):
        assert set(mnist.split(s).y.tolist()) == set(range(10))


def test_custom_sizes(mnist):
    d = load_dataset("mnist10k", sizes=(100, 50, 30))
    assert (len(d.train), len(d.calib), len(d.test)) == (100, 50, 30)
    assert torch.equal(d.train.y, mnist.train.y[:100])  # same permutation, shorter cuts
    assert d.digest != mnist.digest


@pytest.mark.parametrize("sizes", [(9000, 1000, 1), (0, 10, 10), (10, 10), (10, 10, -1)])
def test_bad_sizes(sizes):
    with pytest.raises(ValueError, match="data.sizes"):
        load_dataset("mnist10k", sizes=sizes)


def test_digits():
    d = load_dataset("digits")
    n = len(d.train) + len(d.calib) + len(d.test)
    assert n == 1797 and len(d.calib) == len(d.test) == 359
    assert d.image_shape == (1, 8, 8) and d.num_classes == 10
    assert d.train.x.shape == (len(d.train), 1, 8, 8) and d.train.x.dtype == torch.float32
    assert d.train.x.min() >= 0 and d.train.x.max() == 1.0


def test_npz_uint8_nhw_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 5, 7), dtype=np.uint8)
    y = np.arange(20) % 3
    p = tmp_path / "tiny.npz"
    np.savez(p, x=x, y=y)
    d = load_dataset(f"npz:{p}", split_seed=3)
    assert (len(d.train), len(d.calib), len(d.test)) == (12, 4, 4)
    assert d.image_shape == (1, 5, 7) and d.num_classes == 3
    perm = np.random.default_rng(3).permutation(20)
    xs = torch.cat([d.train.x, d.calib.x, d.test.x]).numpy()
    assert np.allclose(xs[:, 0], x[perm] / 255.0, atol=1e-7)
    assert np.array_equal(torch.cat([d.train.y, d.calib.y, d.test.y]).numpy(), y[perm])


def test_npz_float_nchw_kept_as_is(tmp_path):
    x = np.linspace(-2, 3, 12 * 3 * 4 * 4).reshape(12, 3, 4, 4)  # float64, outside [0, 1]
    y = np.array([0, 4] * 6, dtype=np.int32)
    p = tmp_path / "f.npz"
    np.savez(p, x=x, y=y)
    d = load_dataset(f"npz:{p}", sizes=(8, 2, 2))
    assert d.image_shape == (3, 4, 4) and d.num_classes == 5
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    perm = np.random.default_rng(0).permutation(12)
    assert np.allclose(d.train.x.numpy(), x[perm[:8]].astype(np.float32))


GOOD_X = np.zeros((12, 4, 4), np.uint8)
GOOD_Y = np.arange(12) % 2


@pytest.mark.parametrize("arrays, match", [
    (None, "file not found"),
    ("garbage", "not a valid npz"),
    ({"x": GOOD_X}, "missing key 'y'"),
    ({"y": GOOD_Y}, "missing key 'x'"),
    ({"x": np.zeros((12, 16)), "y": GOOD_Y}, "x must have rank 3"),
    ({"x": np.zeros((12, 1, 1, 4, 4)), "y": GOOD_Y}, "x must have rank 3"),
    ({"x": GOOD_X, "y": GOOD_Y[:, None]}, "y must be 1-D"),
    ({"x": GOOD_X, "y": GOOD_Y.astype(float)}, "integer dtype"),
    ({"x": GOOD_X, "y": GOOD_Y[:11]}, "12 samples but y has 11"),
    ({"x": np.full((12, 4, 4), np.nan), "y": GOOD_Y}, "NaN or inf"),
    ({"x": np.full((12, 4, 4), np.inf, np.float32), "y": GOOD_Y}, "NaN or inf"),
    ({"x": GOOD_X, "y": GOOD_Y - 1}, "negative labels"),
    ({"x": GOOD_X[:5], "y": GOOD_Y[:5]}, "too few samples"),
])
def test_malformed_npz(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    if arrays == "garbage":
        p.write_bytes(b"this is not a zip file")
    elif arrays is not None:
        np.savez(p, **arrays)
    with pytest.raises(ValueError, match=match) as e:
        load_dataset(f"npz:{p}")
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


def test_corrupted_mnist10k_fails_checksum(tmp_path, monkeypatch):
    bad = tmp_path / "mnist10k.npz"
    shutil.copy(NPZ, bad)
    b = bytearray(bad.read_bytes())
    b[len(b) // 2] ^= 0xFF
    bad.write_bytes(bytes(b))
    monkeypatch.setattr(qd, "MNIST10K_PATH", bad)
    with pytest.raises(ValueError, match="corrupted.*build_mnist10k.py"):
        load_dataset("mnist10k")
    monkeypatch.setattr(qd, "MNIST10K_PATH", tmp_path / "empty" / "mnist10k.npz")
    with pytest.raises(ValueError, match="not found.*build_mnist10k.py"):
        load_dataset("mnist10k")


def test_mnist10k_is_package_data_whatever_the_data_root(tmp_path, monkeypatch):
    """The embedded digits load from the package (the wheel carries them), not from data.root, which is
    where real datasets live: an empty root changes nothing."""
    assert NPZ.parent.parent == pathlib.Path(qd.__file__).resolve().parent
    monkeypatch.setenv("QUEE_KIT_DATA", str(tmp_path))
    a = load_dataset("mnist10k", sizes=(10, 10, 10))
    b = load_dataset("mnist10k", sizes=(10, 10, 10), data_dir=tmp_path)
    assert a.digest == b.digest


def test_validate_dataset_name(tmp_path):
    validate_dataset_name("mnist10k")
    validate_dataset_name("digits")
    p = tmp_path / "a.npz"
    p.write_bytes(b"")  # existence only: the name check does not load
    validate_dataset_name(f"npz:{p}")
    msg = ("data.name: unknown dataset 'foo' (allowed: mnist10k, digits, cifar10, cifar100, svhn, imagenet, "
           "npz:PATH)")
    with pytest.raises(ValueError) as e:
        validate_dataset_name("foo")
    assert str(e.value) == msg
    with pytest.raises(ValueError, match="npz file not found"):
        validate_dataset_name(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("MNIST10k")


def test_register_dataset():
    @qd.register_dataset("toy")
    def toy(data_dir):
        return np.ones((10, 2, 2), np.float32), np.arange(10) % 2
    try:
        validate_dataset_name("toy")
        d = load_dataset("toy")
        assert (len(d.train), len(d.calib), len(d.test)) == (6, 2, 2) and d.num_classes == 2
        with pytest.raises(ValueError, match="already registered"):
            qd.register_dataset("toy")(toy)
    finally:   # the registry is global: leave it as the other tests expect it
        qd.DATASETS.pop("toy")
        qd.DATASETS.declared.pop("toy")
