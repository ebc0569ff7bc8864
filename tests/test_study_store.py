"""A study's stored evaluation: loaded with the bits it was computed with, recomputed when anything it was
computed from changes, never stored for methods from outside the kit."""
import dataclasses

import numpy as np
import pytest

from quee_kit.config import cache_dir, load_config
from quee_kit.explorer import build_explorer_data
from quee_kit.methods import METHODS, register_method
from quee_kit.study_run import run_study
from quee_kit.study_store import study_artifact

from conftest import STUDY_OVERRIDES

VARIANTS = {"quee": ({}, "all"), "quee-mlp": ({"kind": "mlp"}, "all"), "quee-exit-only": ({}, "exit-only")}


@pytest.fixture(scope="module")
def cfg(digits_cfg):
    return load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", *STUDY_OVERRIDES,
                                               "predictor.epochs=5"])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_a_stored_study_loads_the_computed_bits(cfg, digits_prep):
    fresh = run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep, store=False)
    run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep)   # computes and stores (or loads)
    loaded = run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep)
    assert not fresh.timings["stored"] and loaded.timings["stored"]
    assert list(loaded.points) == list(fresh.points) and list(loaded.methods) == list(fresh.methods)
    for name in fresh.points:
        assert loaded.points[name].equals(fresh.points[name]), name
    for name in VARIANTS:
        for split in ("calib", "test"):   # every element, NaN at the leaves and invalid options included
            assert _same_bits(loaded.predictors[name][split], fresh.predictors[name][split]), (name, split)
        assert loaded.quality[name] == fresh.quality[name]
        assert loaded.predictors[name]["call_cost"] == fresh.predictors[name]["call_cost"]
    # variants sharing a fit still share one (the estimates are stored once)
    assert loaded.predictors["quee"] is loaded.predictors["quee-exit-only"]
    # the refitted predictor comes back whole: the engine runs the same on new inputs
    x = digits_prep.data.test.x[:64]
    for name in ("quee", "quee-mlp"):
        a, b = fresh.engine(name, 0.3)(x), loaded.engine(name, 0.3)(x)
        assert a.pred.equal(b.pred) and np.array_equal(a.cost, b.cost) and np.array_equal(a.node, b.node), name
    i = len(fresh.methods["quee-mlp"].knobs) // 2
    knob = fresh.methods["quee-mlp"].knobs[i]
    oa, ob = fresh.methods["quee-mlp"].outcome("test", knob), loaded.methods["quee-mlp"].outcome("test", knob)
    assert np.array_equal(oa.node, ob.node) and np.array_equal(oa.cost, ob.cost)
    # every knob's test nodes, kept by the evaluation: what the explorer shows without running them again
    assert set(fresh.test_nodes) == set(loaded.test_nodes) == set(fresh.methods)
    for name in fresh.methods:
        assert np.array_equal(loaded.test_nodes[name], fresh.test_nodes[name]), name
    assert np.array_equal(loaded.test_nodes["quee-mlp"][i], oa.node)
    kept = build_explorer_data(loaded, fast=False, config="configs/digits.yaml")
    rerun = build_explorer_data(dataclasses.replace(fresh, test_nodes={}), fast=False, config="configs/digits.yaml")
    for name in fresh.methods:
        assert np.array_equal(kept.methods[name].nodes, rerun.methods[name].nodes), name


def test_what_a_study_is_computed_from_is_in_its_key(cfg, digits_prep):
    run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep)
    assert run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep).timings["stored"]
    other_grid = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, lambda_grid=cfg.eval.lambda_grid + 1))
    assert not run_study(other_grid, progress=False, variants=VARIANTS, prep=digits_prep).timings["stored"]
    fewer = {k: VARIANTS[k] for k in ("quee", "quee-mlp")}
    study = run_study(cfg, progress=False, variants=fewer, prep=digits_prep)
    assert list(study.points)[:2] == list(fewer) and "quee-exit-only" not in study.points
    other_fit = dataclasses.replace(cfg, predictor=dataclasses.replace(cfg.predictor, hidden=16))
    assert not run_study(other_fit, progress=False, variants=fewer, prep=digits_prep).timings["stored"]


def test_a_corrupt_stored_study_is_computed_again(cfg, digits_prep):
    folder = cache_dir(digits_prep.cfg)
    for p in folder.glob("study-*.pt"):
        p.unlink()
    run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep)
    (path,) = folder.glob("study-*.pt")
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        again = run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep)
    assert not again.timings["stored"]
    assert run_study(cfg, progress=False, variants=VARIANTS, prep=digits_prep).timings["stored"]   # written anew


def test_a_study_that_cannot_be_stored_is_still_returned(cfg, digits_prep, monkeypatch):
    import quee_kit.study_store as store

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store, "save_artifact", disk_full)
    for p in cache_dir(digits_prep.cfg).glob("study-*.pt"):   # none to load: it is computed, then not stored
        p.unlink()
    with pytest.warns(UserWarning, match="could not be stored.*No space left"):
        study = run_study(cfg, progress=False, variants={"quee": VARIANTS["quee"]}, prep=digits_prep)
    assert not study.timings["stored"] and "quee" in study.points


def test_a_method_from_outside_the_kit_is_never_stored(digits_prep):
    class Outside:   # defined here, in a test module: its code is in no key
        pass
    register_method("outside")(Outside)
    try:
        assert study_artifact(digits_prep, {}, [], {}, 10, 0) == (None, None)
    finally:
        METHODS.pop("outside")
    path, key = study_artifact(digits_prep, {}, [], {}, 10, 0)
    assert key and path.name == f"study-{key[:16]}.pt"
