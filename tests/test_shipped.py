"""Shipped models: the lookup by model key, the refusal of a damaged file, --retrain, and the manifest of
the models the kit commits (every entry's file intact and its key the one its listed config computes)."""
import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from quee_kit import shipped
from quee_kit.build_models import shipped_list
from quee_kit.config import UserError, load_config
from quee_kit.models import build_model
from quee_kit.prepare import load_data, model_key, prepare


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    """A digits config that trains in a second, and an empty folder of shipped models in place of the kit's."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(shipped, "MODELS_DIR", folder)
    cfg = load_config("configs/digits.yaml", [f"cache_dir={tmp_path / 'cache'}", "model.epochs=1"])
    return cfg, folder


def _random_weights(cfg, data, seed):
    torch.manual_seed(seed)
    return build_model(cfg.model, data.image_shape, data.num_classes).state_dict()


def test_a_shipped_model_is_used_instead_of_training_and_retrain_trains(tiny):
    cfg, folder = tiny
    data = load_data(cfg.data, cfg.model)
    weights = _random_weights(cfg, data, 123)   # not what 1 epoch of training gives: tells the two apart
    shipped.ship_model(weights, key=model_key(cfg, data), study="tiny", seed=cfg.seed, data_digest=data.digest,
                       train={"seconds": 1.5})
    prep = prepare(cfg, splits=(), progress=False)
    assert prep.model_source == "shipped model"
    got = prep.model.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    assert prep.timings["train_seconds"] == 1.5
    assert not list(Path(cfg.cache_dir).glob("model-*"))   # nothing trained, nothing cached
    again = prepare(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, retrain=True)), splits=(),
                    progress=False)
    assert again.model_source == "trained here"
    assert not all(torch.equal(again.model.state_dict()[k], weights[k]) for k in weights)
    # another seed has another key: nothing shipped for it, so it trains
    assert prepare(dataclasses.replace(cfg, seed=1), splits=(), progress=False).model_source == "trained here"


def test_retrain_does_not_change_the_model_key(tiny):
    cfg, _ = tiny
    data = load_data(cfg.data, cfg.model)
    assert model_key(cfg, data) == model_key(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, retrain=True)), data)
    assert model_key(cfg, data) != model_key(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, epochs=2)), data)


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_shipped_file_is_refused_in_one_line(tiny, damage):
    cfg, folder = tiny
    data = load_data(cfg.data, cfg.model)
    entry = shipped.ship_model(_random_weights(cfg, data, 1), key=model_key(cfg, data), study="tiny", seed=0,
                               data_digest=data.digest, train={"seconds": 1.0})
    path = folder / entry.file
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0x01
        path.write_bytes(bytes(raw))
    else:
        path.unlink()
    with pytest.raises(UserError, match=entry.file) as e:
        prepare(cfg, splits=(), progress=False)
    assert "\n" not in str(e.value) and "--retrain" in str(e.value)


def test_the_kits_shipped_models_match_their_files_and_configs():
    """Every committed model: its file's sha256 is the manifest's, and its key is the one the listed config
    and seed compute today (a config edit that changes the weights' key fails here: run `make models`)."""
    models = shipped.shipped_models()
    listed = {(e["name"], s) for e in shipped_list() for s in e["seeds"]}
    assert {(m.study, m.seed) for m in models.values()} == listed
    for e in shipped_list():
        cfg0 = load_config(e["config"], e.get("overrides", []), fast=bool(e.get("fast", False)))
        for seed in e["seeds"]:
            cfg = dataclasses.replace(cfg0, seed=seed)
            m = shipped.find_shipped(model_key(cfg, load_data(cfg.data, cfg.model)))
            assert m is not None and (m.study, m.seed) == (e["name"], seed)
            assert hashlib.sha256((shipped.MODELS_DIR / m.file).read_bytes()).hexdigest() == m.sha256


# Shipped MLP predictors: an MLP fit amplifies last-bit kernel differences as training does, so the fits
# whose numbers the reference tables hold are shipped and used in place of fitting.

@pytest.fixture()
def tiny_mlp(tiny, tmp_path, monkeypatch):
    """``tiny`` with the MLP predictor (2 folds, few epochs), an empty folder of shipped predictors, and
    a shipped model (so the predictor key does not depend on this machine's training)."""
    cfg, folder = tiny
    pfolder = tmp_path / "predictors"
    pfolder.mkdir()
    monkeypatch.setattr(shipped, "PREDICTORS_DIR", pfolder)
    cfg = load_config("configs/digits.yaml", [f"cache_dir={tmp_path / 'cache'}", "model.epochs=1",
                                               "predictor.kind=mlp", "predictor.folds=2", "predictor.epochs=2"])
    data = load_data(cfg.data, cfg.model)
    shipped.ship_model(_random_weights(cfg, data, 7), key=model_key(cfg, data), study="tiny", seed=cfg.seed,
                       data_digest=data.digest, train={"seconds": 1.0})
    return cfg, pfolder


def _fit_and_ship(cfg, perturb: float):
    """Fit the config's predictor here, then ship it with its final MLP's last bias moved by ``perturb``
    (so a shipped fit and a fit made here are told apart); returns (prep, opts, pcfg, shipped artifact)."""
    from quee_kit.options import OptionSpace
    from quee_kit.safe_codec import encode
    from quee_kit.study_run import predictor_artifact_keys, predictor_artifacts
    prep = prepare(cfg, splits=("calib",), progress=False)
    opts = OptionSpace(prep.tree, prep.caches["calib"].node_cost)
    pcfg = cfg.predictor
    (art,) = predictor_artifacts(prep, opts, [pcfg], cfg.seed, progress=False)
    bias = [k for k in art["final"]["weights"] if k.endswith("bias")][-1]
    art["final"]["weights"][bias] = art["final"]["weights"][bias] + perturb
    (key,) = predictor_artifact_keys(prep, [pcfg], cfg.seed)
    shipped.ship_bytes(encode(art), name="tiny-seed0-quee.qkit", key=key, study="tiny", seed=cfg.seed,
                       data_digest=prep.data.digest, train={"variant": "quee"}, folder=shipped.PREDICTORS_DIR)
    return prep, opts, pcfg, art, bias


def test_a_shipped_predictor_is_used_instead_of_fitting_and_retrain_refits(tiny_mlp, tmp_path):
    import shutil
    from quee_kit.study_run import predictor_artifacts
    cfg, _ = tiny_mlp
    prep, opts, pcfg, art, bias = _fit_and_ship(cfg, perturb=0.25)
    for f in Path(cfg.cache_dir).glob("predictors-*"):   # a fresh cache: only the shipped fit is left
        f.unlink()
    (got,) = predictor_artifacts(prep, opts, [pcfg], cfg.seed, progress=False)
    assert torch.equal(got["final"]["weights"][bias], art["final"]["weights"][bias])
    for f in Path(cfg.cache_dir).glob("predictors-*"):
        f.unlink()
    retrain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, retrain=True))
    prep_r = dataclasses.replace(prep, cfg=retrain)      # same weights and caches, retrain asked for
    (refit,) = predictor_artifacts(prep_r, opts, [pcfg], cfg.seed, progress=False)
    assert torch.allclose(refit["final"]["weights"][bias] + 0.25, art["final"]["weights"][bias])


def test_a_damaged_shipped_predictor_is_refused_in_one_line(tiny_mlp):
    from quee_kit.study_run import predictor_artifacts
    cfg, pfolder = tiny_mlp
    prep, opts, pcfg, _, _ = _fit_and_ship(cfg, perturb=0.0)
    for f in Path(cfg.cache_dir).glob("predictors-*"):
        f.unlink()
    path = pfolder / "tiny-seed0-quee.qkit"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="shipped predictor tiny-seed0-quee.qkit: sha256") as e:
        predictor_artifacts(prep, opts, [pcfg], cfg.seed, progress=False)
    assert "\n" not in str(e.value)


def test_the_kits_shipped_predictors_match_their_files_and_configs():
    """Every listed (entry, seed, variant) has a shipped predictor whose key is the one the listed config
    computes today on the shipped model, and whose file is intact (a change of the fitting code, features
    or predictor config fails here: run `make models`)."""
    from quee_kit.study import QUEE_VARIANTS, predictor_configs
    from quee_kit.study_run import predictor_artifact_keys
    entries = shipped.shipped_models(shipped.PREDICTORS_DIR)
    listed = {(e["name"], s, v) for e in shipped_list() for s in e["seeds"] for v in e.get("predictors", [])}
    assert listed and {(m.study, m.seed, m.train["variant"]) for m in entries.values()} == listed
    for e in shipped_list():
        cfg0 = load_config(e["config"], e.get("overrides", []), fast=bool(e.get("fast", False)))
        for seed in e["seeds"]:
            if not e.get("predictors"):
                continue
            prep = prepare(dataclasses.replace(cfg0, seed=seed), splits=(), progress=False)
            for v in e["predictors"]:
                (pcfg,) = predictor_configs(prep.cfg.predictor, {v: QUEE_VARIANTS[v]}).values()
                (key,) = predictor_artifact_keys(prep, [pcfg], seed)
                m = shipped.find_shipped_predictor(key)
                assert m is not None and (m.study, m.seed, m.train["variant"]) == (e["name"], seed, v)
                assert hashlib.sha256((shipped.PREDICTORS_DIR / m.file).read_bytes()).hexdigest() == m.sha256
