"""A cache directory others can write to: a planted file runs no code and is rebuilt; files are shareable."""
import hashlib
import io
import json
import pickle
import struct
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from quee_kit.artifacts import MAGIC, OLD_MAGIC, ArtifactError, load_artifact, load_or_build, save_artifact
from quee_kit.config import load_config
from quee_kit.safe_codec import decode, encode


class Planted:
    """What a hostile neighbour plants, harmlessly: unpickling it creates ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path, key, marker, magic=MAGIC, fmt="pickle"):
    """A file at ``path`` whose header matches ``key`` and checksum, with a code-running payload."""
    obj = {"state_dict": Planted(marker), "logits": Planted(marker)}
    if fmt == "torch":
        buf = io.BytesIO()
        torch.save(obj, buf)
        body = buf.getvalue()
    else:
        body = pickle.dumps(obj)
    header = json.dumps({"key": key, "sha256": hashlib.sha256(body).hexdigest(), "format": fmt}).encode()
    path.write_bytes(magic + struct.pack("<I", len(header)) + header + body)
    return body


@pytest.mark.parametrize("magic", [MAGIC, OLD_MAGIC])
@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_a_planted_payload_runs_nothing_and_is_rebuilt(tmp_path, magic, fmt):
    path, marker = tmp_path / "model-x.pt", tmp_path / "ran"
    body = plant(path, "k", marker, magic, fmt)
    with pytest.raises(ArtifactError):
        load_artifact(path, "k")
    with pytest.warns(UserWarning, match="rebuilding"):
        got = load_or_build(path, "k", lambda: {"w": torch.ones(2)})
    assert not marker.exists()
    assert torch.equal(got["w"], torch.ones(2)) and torch.equal(load_artifact(path, "k")["w"], torch.ones(2))
    # the payload was live: an unsafe loader would have run it (so the test above could fail)
    pickle.loads(body) if fmt == "pickle" else torch.load(io.BytesIO(body), weights_only=False)
    assert marker.exists()


def test_the_codec_restores_types_and_bits_and_refuses_the_rest():
    df = pd.DataFrame({"entry": ["w16a16", "per-sample"], "tau": [0.5, np.nan], "n": np.array([1, 2], np.int16),
                       "knob": [("w8a8", 0.1), ("w4a4", 2)], "ok": [True, False]}, index=[3, 1])
    obj = {"f": [1, 2.5, float("nan"), float("-inf"), -0.0, None, True, "x", 2 ** 70], 3: (1, (2, "y")),
           ("k", 1): np.float32(1.5), "bf16": torch.randn(3, 4).to(torch.bfloat16),
           "view": torch.arange(12).reshape(3, 4)[:, 1:], "fortran": np.arange(12.0).reshape(3, 4).T,
           "df": df, "empty": np.zeros((0, 3), np.float16)}
    out = decode(encode(obj))
    assert list(out) == list(obj)
    assert repr(out["f"]) == repr(obj["f"]) and out[3] == obj[3]
    assert type(out[("k", 1)]) is np.float32 and out[("k", 1)] == 1.5
    for k in ("bf16", "view"):
        assert out[k].dtype == obj[k].dtype and torch.equal(out[k], obj[k])
    assert out["fortran"].dtype == np.float64 and np.array_equal(out["fortran"], obj["fortran"])
    assert out["empty"].shape == (0, 3) and out["empty"].dtype == np.float16
    pd.testing.assert_frame_equal(out["df"], df, check_exact=True)
    assert out["df"]["knob"].iloc[0] == ("w8a8", 0.1)
    out["fortran"][0, 0] = 1.0                     # writable, as a loaded pickle was
    for bad in (object(), {"x": Planted("m")}, np.array(["a"]), pd.Series([1.0])):
        with pytest.raises(TypeError, match="cannot store"):
            encode(bad)


def test_every_artifact_kind_refuses_a_planted_payload(tmp_path):
    """Every file a study and the explorer store (model, path caches, predictors, study, explorer points)
    replaced by a payload with a matching header: nothing runs, each is rebuilt, the numbers are the same."""
    from quee_kit.explorer.points import load_explorer_data
    from quee_kit.study_run import run_study
    over = [f"cache_dir={tmp_path / 'cache'}", "model.epochs=2", "predictor.folds=2", "predictor.epochs=2",
            "eval.lambda_grid=10", "jobs=1"]
    cfg = load_config("configs/digits.yaml", over)
    first = run_study(cfg, progress=False)
    load_explorer_data("configs/digits.yaml", fast=False, overrides=over, progress=False)
    files = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_file())
    kinds = {p.name.split("-")[0] for p in files}
    assert {"model", "cache", "predictors", "study", "explorer"} <= kinds
    keys, marker = {}, tmp_path / "ran"
    for p in files:
        raw = p.read_bytes()
        (n,) = struct.unpack("<I", raw[8:12])
        keys[p] = json.loads(raw[12:12 + n])["key"]
        plant(p, keys[p], marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_study(cfg, progress=False)
        data = load_explorer_data("configs/digits.yaml", fast=False, overrides=over, progress=False)
    assert not marker.exists()
    for p in files:
        assert p.read_bytes()[:8] == MAGIC and load_artifact(p, keys[p]) is not None   # rebuilt, readable
    for name, pts in first.points.items():
        pd.testing.assert_frame_equal(again.points[name], pts, check_exact=True)
        pd.testing.assert_frame_equal(data.methods[name].points, pts.reset_index(drop=True), check_exact=True)


def test_a_planted_cifar_batch_runs_nothing(tmp_path):
    from quee_kit.data import load_dataset
    from standins import write_cifar10
    write_cifar10(tmp_path)
    batch, marker = tmp_path / "cifar-10-batches-py" / "data_batch_1", tmp_path / "ran"
    with open(batch, "wb") as f:
        pickle.dump({"data": Planted(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR python pickle .*refused global io.open"):
        load_dataset("cifar10", sizes=(45, 15, 20), data_dir=tmp_path, verify=False)
    assert not marker.exists()


def test_files_get_the_umask_permissions(tmp_path, monkeypatch):
    from quee_kit import artifacts
    for mask, mode in ((0o002, 0o664), (0o077, 0o600)):   # a group-shared cache; a private one
        monkeypatch.setattr(artifacts, "_UMASK", mask)
        save_artifact(tmp_path / f"{mask}.pt", "k", {"x": 1})
        assert (tmp_path / f"{mask}.pt").stat().st_mode & 0o777 == mode
