"""Real datasets (issue 11) on stand-ins in their exact on-disk formats; nothing downloads."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from quee_kit.config import ConfigError, load_config
from quee_kit.data import load_dataset
from quee_kit.real_data import OFFICIAL_MD5, ImageFiles
from standins import write_cifar10, write_cifar100, write_image_folder, write_svhn


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.numpy() * 255).round().astype(np.uint8)


def _check_official_split(ds, tx, ty, vx, vy, calib):
    """train and calib are disjoint parts of the official train set, test is the official test set."""
    assert len(ds.calib) == calib and len(ds.train) == len(ty) - calib and len(ds.test) == len(vy)
    np.testing.assert_array_equal(_as_uint8(ds.test.x), vx)  # test in official order, exact pixels
    np.testing.assert_array_equal(ds.test.y.numpy(), vy)
    rows = {r.tobytes(): i for i, r in enumerate(tx.reshape(len(tx), -1))}
    seen = []
    for split in (ds.train, ds.calib):
        idx = [rows[r.tobytes()] for r in _as_uint8(split.x).reshape(len(split), -1)]
        np.testing.assert_array_equal(split.y.numpy(), ty[idx])  # labels travel with their images
        seen += idx
    assert len(set(seen)) == len(seen) == len(ty)


def test_cifar10_pickle_batches(tmp_path):
    tx, ty, vx, vy = write_cifar10(tmp_path)
    # the default calib (5,000, as JEI-DNN) exceeds the stand-in: one line says to cap with data.sizes
    with pytest.raises(ValueError, match=r"^data.sizes: cifar10 has 60 official train samples, not more than its "
                                         r"default calib size 5000; set data.sizes"):
        load_dataset("cifar10", split_seed=0, sizes=None, data_dir=tmp_path, verify=False)
    ds = load_dataset("cifar10", split_seed=0, sizes=(45, 15, 20), data_dir=tmp_path, verify=False)
    assert ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    _check_official_split(ds, tx, ty, vx, vy, calib=15)
    other = load_dataset("cifar10", split_seed=1, sizes=(45, 15, 20), data_dir=tmp_path, verify=False)
    assert other.digest != ds.digest and not torch.equal(other.calib.y, ds.calib.y)


def test_cifar100_uses_fine_labels_and_meta(tmp_path):
    tx, ty, vx, vy = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", sizes=(50, 10, 20), data_dir=tmp_path, verify=False)
    assert ds.num_classes == 100  # from meta's fine_label_names, not from the labels present
    _check_official_split(ds, tx, ty, vx, vy, calib=10)


def test_svhn_mat_files(tmp_path):
    tx, ty, vx, vy = write_svhn(tmp_path)
    ds = load_dataset("svhn", sizes=(48, 12, 20), data_dir=tmp_path, verify=False)
    assert ds.num_classes == 10 and (vy == 0).any()  # label 10 on disk is digit 0
    _check_official_split(ds, tx, ty, vx, vy, calib=12)


def test_sizes_cap_every_part(tmp_path):
    write_cifar10(tmp_path)
    ds = load_dataset("cifar10", sizes=(7, 5, 3), data_dir=tmp_path, verify=False)
    assert (len(ds.train), len(ds.calib), len(ds.test)) == (7, 5, 3)
    with pytest.raises(ValueError, match=r"data.sizes: cifar10 .* train \+ calib <= 60"):
        load_dataset("cifar10", sizes=(50, 11, 3), data_dir=tmp_path, verify=False)


def test_verify_rejects_a_copy_that_is_not_the_official_release(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match=r"^data.verify: cifar10 file .*data_batch_1 is not the official release "
                                         r"\(md5 [0-9a-f]{32}, expected c99cafc152244af753f735de768cd75f\).*"
                                         r"data.verify: false"):
        load_dataset("cifar10", sizes=(7, 5, 3), data_dir=tmp_path)


def test_md5_table_equals_torchvisions():
    from quee_kit.timm_backbones import import_torchvision
    ds = import_torchvision().datasets
    assert dict(ds.CIFAR10.train_list + ds.CIFAR10.test_list
                + [[ds.CIFAR10.meta["filename"], ds.CIFAR10.meta["md5"]]]) == OFFICIAL_MD5["cifar10"]
    assert dict(ds.CIFAR100.train_list + ds.CIFAR100.test_list
                + [[ds.CIFAR100.meta["filename"], ds.CIFAR100.meta["md5"]]]) == OFFICIAL_MD5["cifar100"]
    assert {v[1]: v[2] for k, v in ds.SVHN.split_list.items() if k != "extra"} == OFFICIAL_MD5["svhn"]


def test_image_folder_streams_exact_pixels(tmp_path):
    tx, ty, vx, vy = write_image_folder(tmp_path)
    ds = load_dataset("imagenet", sizes=(18, 6, 12), data_dir=tmp_path, image_size=32,
                      input_config={"crop_pct": 1.0})
    assert isinstance(ds.train.x, ImageFiles) and ds.num_classes == 3 and ds.image_shape == (3, 32, 32)
    np.testing.assert_array_equal(_as_uint8(ds.test.x[0:len(ds.test)]), vx)  # side 32, crop 1.0: untouched
    np.testing.assert_array_equal(ds.test.y.numpy(), vy)
    streamed = torch.cat(list(ds.test.x.batches(5, workers=0)))
    assert torch.equal(streamed, ds.test.x[torch.arange(len(ds.test))])
    # the eval transform: shorter side to 32 / 0.5 = 64, centre crop 32 -> the middle of an upscaled image
    half = load_dataset("imagenet", sizes=(18, 6, 12), data_dir=tmp_path, image_size=32,
                        input_config={"crop_pct": 0.5, "interpolation": "nearest"})
    np.testing.assert_array_equal(_as_uint8(half.test.x[[0]])[0], vx[0][:, 8:24, 8:24].repeat(2, 1).repeat(2, 2))


@pytest.mark.parametrize("name,hint", [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python"),
                                       ("svhn", "train_32x32.mat"), ("imagenet", "image-net.org")])
def test_missing_dataset_fails_in_the_config_check(tmp_path, name, hint):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.name={name}", f"data.root={tmp_path}"])
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert msg.startswith(f"config: data.root: {name} not found") and hint in msg and "\n" not in msg


def test_cli_without_the_data_fails_fast_with_one_line(tmp_path):
    """The whole command, interpreter start included, fails before torch is even imported."""
    code = ("import sys; from quee_kit.cli import main; rc = main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "cache", "--config", "configs/cifar10_vit_s16.yaml",
                          "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and res.stdout.strip() == "torch imported: False"
    assert err.startswith("quee-kit: config: data.root: cifar10 not found") and "data.download=true" in err
    assert took < 1.0 and not (tmp_path / "out").exists()


def test_download_true_fetches_through_torchvision_then_reads(tmp_path, monkeypatch):
    """data.download: true hands the missing files to torchvision's own class (faked here: no network)."""
    from quee_kit.timm_backbones import import_torchvision
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py" / "test_batch").is_file():
                write_cifar10(Path(root))

    monkeypatch.setattr(import_torchvision().datasets, "CIFAR10", FakeCIFAR10)
    cfg = load_config(None, ["data.name=cifar10", f"data.root={tmp_path}", "data.download=true"])  # passes
    ds = load_dataset("cifar10", sizes=(7, 5, 3), data_dir=cfg.data.root, download=True, verify=False)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)] and len(ds.train) == 7
    load_dataset("cifar10", sizes=(7, 5, 3), data_dir=tmp_path, download=True, verify=False)
    assert len(calls) == 2  # files present: nothing fetched again
