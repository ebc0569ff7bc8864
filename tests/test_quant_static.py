"""Static activation scales (quant.act_scale: static): a reference fake quantization with fixed scales,
batch independence, clipping, calibration against torch.quantile, the engine against the cache, config."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quee_kit.config import ConfigError, QuantConfig, key_fields, load_config
from quee_kit.models import EarlyExitModel, ViTBlock
from quee_kit.quant_static import (StaticActQuant, StaticScales, act_scales_for, apply_level_static,
                                   calibrate_static, quantize_residual_static)
from tests.engine_check import assert_engine_equals_simulation


def _qmax(b):
    return 2 ** (b - 1) - 1


def _fq(x, scale, bits):
    """Reference symmetric fake quantization with one fixed scale, plain torch ops."""
    s = torch.tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(x / s), -_qmax(bits), _qmax(bits)) * s


def _wq(w, bits):
    s = w.abs().amax(1, keepdim=True) / _qmax(bits)
    return torch.clamp(torch.round(w / s), -_qmax(bits), _qmax(bits)) * s


def _ref_block(b: ViTBlock, x, wb, ab, S, residual=False):
    """ViTBlock forward written out, every activation point quantized with its fixed scale in ``S``."""
    if residual:
        x = _fq(x, S["input"], ab)
    B, N, D = x.shape
    H, dh = b.attn.heads, b.attn.dh
    lin = lambda h, m, key: F.linear(_fq(h, S[key], ab), _wq(m.weight, wb), m.bias)  # noqa: E731
    qkv = lin(b.norm1(x), b.attn.qkv, "attn.qkv").reshape(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)
    q, k, v = (_fq(t, S[f"attn.{r}"], ab) for t, r in zip(qkv, "qkv"))
    p = _fq(torch.softmax(q @ k.transpose(-2, -1) * dh ** -0.5, -1), 1.0 / _qmax(ab), ab)
    x = x + lin((p @ v).transpose(1, 2).reshape(B, N, D), b.attn.proj, "attn.proj")
    return x + lin(F.gelu(lin(b.norm2(x), b.fc1, "fc1")), b.fc2, "fc2")


POINTS = ("input", "attn.qkv", "attn.q", "attn.k", "attn.v", "attn.proj", "fc1", "fc2")


@pytest.mark.parametrize("wb,ab,residual", [(8, 8, False), (4, 4, False), (4, 4, True), (4, 8, True)])
def test_static_block_equals_reference_fake_quant_with_fixed_scales(wb, ab, residual):
    torch.manual_seed(wb * ab)
    block = ViTBlock(32, 2, 2).eval()
    amax = {k: float(a) for k, a in zip(POINTS, torch.rand(len(POINTS)) * 2 + 0.3)}  # small: some values clip
    S = act_scales_for(StaticScales([amax], 99.9, 1), f"w{wb}a{ab}", 0)
    assert S["probs"] == pytest.approx(1 / _qmax(ab)) and S["fc1"] == pytest.approx(amax["fc1"] / _qmax(ab))
    qb = apply_level_static(block, f"w{wb}a{ab}", S)
    if residual:
        qb = quantize_residual_static(qb, f"w{wb}a{ab}", S)
    x = torch.randn(3, 9, 32) * 2
    with torch.no_grad():
        torch.testing.assert_close(qb(x), _ref_block(block, x, wb, ab, S, residual), rtol=1e-5, atol=1e-5)
        # and it is not the float block: the fixed scales do quantize
        assert (qb(x) - block(x)).abs().max() > 1e-3


def test_prediction_does_not_depend_on_batch_mates():
    torch.manual_seed(1)
    block = ViTBlock(32, 2, 2).eval()
    S = act_scales_for(StaticScales([{k: 1.0 for k in POINTS}], 99.9, 1), "w4a4", 0)
    qb = quantize_residual_static(apply_level_static(block, "w4a4", S), "w4a4", S)
    x = torch.randn(1, 9, 32)
    mates = torch.randn(5, 9, 32) * torch.tensor([0.01, 1, 10, 100, 1000]).view(5, 1, 1)
    with torch.no_grad():
        alone = qb(x)
        for batch in (torch.cat([x, mates]), torch.cat([mates[:2], x, mates[2:]])):
            i = 0 if batch.shape[0] and torch.equal(batch[0], x[0]) else 2
            torch.testing.assert_close(qb(batch)[i:i + 1], alone, rtol=0, atol=1e-6)


def test_large_activation_clips_to_known_value_and_small_ones_round_to_zero():
    q = StaticActQuant(4, 0.5)          # qmax 7: the range is [-3.5, 3.5] in steps of 0.5
    x = torch.tensor([100.0, -100.0, 3.4, 0.2, -0.26, 1.24])
    torch.testing.assert_close(q(x.clone()), torch.tensor([3.5, -3.5, 3.5, 0.0, -0.5, 1.0]))
    assert float(q.scale_for(x)) == 0.5 and q.rowwise
    assert torch.equal(StaticActQuant(16, 0.5)(x), x)   # float passthrough
    # through a static block: an input 100x larger saturates fc1's input at qmax * scale
    block = ViTBlock(32, 2, 2).eval()
    S = act_scales_for(StaticScales([{k: 1.0 for k in POINTS}], 99.9, 1), "w8a4", 0)
    qb = apply_level_static(block, "w8a4", S)
    seen = []
    qb.fc1.register_forward_hook(lambda m, a, o: seen.append(m.act(a[0].clone())))
    with torch.no_grad():
        qb(torch.randn(2, 9, 32) * 100)
    assert float(seen[0].abs().max()) == pytest.approx(_qmax(4) * S["fc1"])


def test_calibration_is_the_percentile_of_the_float_model():
    torch.manual_seed(3)
    blocks = [ViTBlock(16, 2, 2).eval() for _ in range(2)]
    model = EarlyExitModel(nn.Identity(), blocks, [nn.Identity(), nn.Identity()]).eval()  # tokens in, no stem
    x = torch.randn(40, 7, 16) * 3
    sc = calibrate_static(model, x, 99.0, batch_size=16, residual=True)
    with torch.no_grad():
        h1 = blocks[0](x)
        ref = {"input": torch.quantile(x.abs().flatten(), 0.99),
               "attn.qkv": torch.quantile(blocks[0].norm1(x).abs().flatten(), 0.99),
               "fc2": torch.quantile(F.gelu(blocks[0].fc1(blocks[0].norm2(x + blocks[0].attn(blocks[0].norm1(x)))))
                                     .abs().flatten(), 0.99)}
        for k, v in ref.items():
            assert sc.amax[0][k] == pytest.approx(float(v), rel=1e-5)
        assert sc.amax[1]["input"] == pytest.approx(float(torch.quantile(h1.abs().flatten(), 0.99)), rel=1e-5)
    assert set(sc.amax[0]) == set(POINTS) and sc.samples == 40
    assert blocks[0].attn.matmul_quant is None   # the model is left as it was
    assert StaticScales.from_payload(sc.to_payload()).digest() == sc.digest()


def test_config_checks_and_default_keys():
    for over, key in [("quant.act_scale=minmax", "quant.act_scale"), ("quant.static_percentile=20", "quant.static_percentile"),
                      ("quant.static_samples=0", "quant.static_samples")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
            load_config("configs/digits.yaml", [over])
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"quant\.backend"):
        load_config("configs/digits.yaml", ["quant.act_scale=static", "quant.backend=int"])
    # the new fields are keyed only when set: every existing artifact key stays as it was
    assert not {"act_scale", "static_percentile", "static_samples"} & set(key_fields(QuantConfig()))
    assert key_fields(QuantConfig(act_scale="static"))["act_scale"] == "static"


@pytest.fixture(scope="module")
def static_study(digits_cfg):
    from quee_kit.study_run import run_study
    cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", "model.epochs=15",
                                              "quant.act_scale=static", "quant.residual=true", "predictor.folds=3",
                                              "eval.lambda_grid=40", "quant.static_samples=300"])
    return run_study(cfg, progress=False, variants={"quee": ({}, "all")})


def test_static_cache_uses_the_calibrated_scales_and_engine_matches_simulation(static_study, digits_prep):
    from quee_kit.prepare import cache_path
    prep = static_study.prep
    assert prep.act_scales is not None and prep.act_scales.samples == 300
    lv = prep.levels[-1]
    S = act_scales_for(prep.act_scales, lv, 1)
    qb = prep.qblocks[len(prep.levels) - 1][1]
    assert qb.act.scale == S["input"] and qb.block.fc2.act.scale == S["fc2"]
    assert prep.act_scales.digest()[:16] != "" and cache_path(prep, "test") != cache_path(digits_prep, "test")
    assert torch.equal(prep.caches["test"].logits[0], digits_prep.caches["test"].logits[0])  # float root shared
    assert not torch.equal(prep.caches["test"].logits, digits_prep.caches["test"].logits)
    assert_engine_equals_simulation(static_study, [(0, 0.5), (2, 3.0), (len(prep.levels) - 1, 0.0), (1, 0.0)])


def test_static_scales_and_quant_features_are_refused_together_in_one_line():
    from quee_kit.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="predictor.features") as e:
        load_config("configs/digits.yaml", ["quant.act_scale=static", "predictor.features=quant"])
    assert "\n" not in str(e.value)
