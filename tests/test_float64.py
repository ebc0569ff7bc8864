"""``paths.dtype: float64``: the path cache and the engine computing in float64 (the conditions config's
setting), against direct float64 forward passes, the float32 cache and the cache simulation."""
import numpy as np
import pytest
import torch

from quee_kit.config import ConfigError, PathsConfig, key_fields, load_config
from quee_kit.models import input_dtype, widen
from quee_kit.quant import CastBlock
from tests.engine_check import assert_engine_equals_simulation


def test_widen_turns_float32_alone_and_keeps_rounded_weights_exact():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4)
    codes = torch.randint(-7, 8, (4, 8)).float()
    with torch.no_grad():
        lin.weight.copy_(codes * 0.0123)                       # a weight on a 4-bit grid, as a level leaves it
    ref = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model = torch.nn.Sequential(lin, CastBlock(ref, torch.bfloat16))
    model.register_buffer("codes", torch.ones(3, dtype=torch.int8))
    want = lin.weight.detach().double().clone()
    widen(model, torch.float64)
    assert lin.weight.dtype == lin.bias.dtype == torch.float64 and torch.equal(lin.weight, want)
    assert lin.weight.requires_grad                            # still a parameter
    assert model[1].block[0].weight.dtype == torch.bfloat16    # the bf16 reference block stays bf16
    assert model.codes.dtype == torch.int8
    assert input_dtype(model) == torch.float64
    out = model(torch.randn(2, 8, dtype=torch.float64))        # the bf16 block hands back the caller's dtype
    assert out.dtype == torch.float64


def test_paths_dtype_is_checked_defaults_to_float64_and_is_keyed():
    with pytest.raises(ConfigError, match=r"paths\.dtype.*'float32' or 'float64'"):
        load_config("configs/digits.yaml", ["paths.dtype=float16"])
    assert PathsConfig().dtype == "float64"                   # the built-in default, as configs/mnist10k.yaml
    assert load_config("configs/digits.yaml").paths.dtype == "float32"
    assert key_fields(PathsConfig(dtype="float32")) != key_fields(PathsConfig())   # caches of each are their own


@pytest.fixture(scope="module")
def f64_study(digits_cfg):
    from quee_kit.study_run import run_study
    cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", "model.epochs=15",
                                              "paths.dtype=float64", "predictor.folds=3", "eval.lambda_grid=40"])
    return run_study(cfg, progress=False, variants={"quee": ({}, "all")})


def test_float64_cache_is_the_float64_forward_rounded_to_float32(f64_study, digits_prep):
    prep, cache = f64_study.prep, f64_study.prep.caches["test"]
    assert prep.model_hash == digits_prep.model_hash                # the same trained weights
    assert input_dtype(prep.model) == torch.float64 and cache.logits.dtype == torch.float32
    x = prep.data.test.x[:prep.cfg.paths.batch_size]               # the cache's first chunk
    with torch.no_grad():
        for node in np.random.default_rng(0).choice(len(prep.tree), 10, replace=False):
            h = prep.model.stem(x.double())
            for t, q in enumerate(prep.tree.paths[node]):
                h = prep.qblocks[q][t](h)
            logits = prep.model.heads[len(prep.tree.paths[node]) - 1](h)
            assert torch.equal(cache.logits[node, :len(x)], logits.float())
    # the float reference path has no rounding grid to cross: float32 and float64 differ by float error only
    ref32 = digits_prep.caches["test"]
    for node in [prep.tree.entry[0], *[n for n in range(len(prep.tree)) if set(prep.tree.paths[n]) == {0}]]:
        torch.testing.assert_close(cache.logits[node], ref32.logits[node], rtol=1e-4, atol=1e-4)
    assert not torch.equal(cache.logits, ref32.logits)             # float64 really ran


def test_float64_engine_matches_float64_cache_simulation(f64_study):
    assert_engine_equals_simulation(f64_study, [(0, 0.5), (2, 3.0), (4, 20.0), (1, 0.0)])


def test_predictors_fitted_on_float64_caches_are_their_own_artifacts(f64_study, study):
    from quee_kit.study_run import predictor_artifact_keys
    pcfg = f64_study.prep.cfg.predictor
    k64 = predictor_artifact_keys(f64_study.prep, [pcfg], f64_study.prep.cfg.seed)
    k32 = predictor_artifact_keys(study.prep, [pcfg], f64_study.prep.cfg.seed)
    assert k64 != k32      # else a float32 fit would be loaded for float64 caches


def test_shape_probes_run_on_a_float64_model(f64_study, digits_prep):
    from quee_kit.costs import CostModel
    from quee_kit.quant_features import state_numel
    from quee_kit.tables import flop_check_table
    prep = f64_study.prep
    shape = prep.data.image_shape
    assert state_numel(prep.model, shape) == state_numel(digits_prep.model, shape)
    assert flop_check_table(prep.model, shape).match.all()
    c64 = CostModel(prep.model, shape, prep.levels, prep.levels[0], prep.cfg.quant.quantize_attention)
    assert c64.stem_ops == prep.costs.stem_ops and c64.block_ops == prep.costs.block_ops
