"""Quantization backends: integer GEMMs and compiled blocks against the fake-quant reference, and the
dynamic engine against the path-cache simulation when both run the ``int`` backend."""

import pytest
import torch
import torch.nn.functional as F

from quee_kit.backends import BACKENDS, INT_NUMERICS, IntLinear, act_scale, int_mm_available, quant_key, to_backend
from quee_kit.config import ConfigError, QuantConfig, key_fields, load_config
from quee_kit.models import ViTBlock, stored_once
from quee_kit.quant import ActQuant, QuantLinear, apply_level, fake_quant_act
from tests.engine_check import assert_engine_equals_simulation

pytestmark = pytest.mark.skipif(not int_mm_available(), reason="torch._int_mm does not run on this CPU")


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 8), (3, 8), (4, 4)])
@pytest.mark.parametrize("granularity,clip", [("token", None), ("tensor", None), ("token", 99.0)])
def test_int_linear_equals_fake_quant_linear(w_bits, a_bits, granularity, clip):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 40)
    act = ActQuant(a_bits, granularity, clip)
    fake = QuantLinear(layer, w_bits, act)
    x = torch.randn(5, 9, 48) * torch.linspace(0.1, 3, 9)[None, :, None]  # tokens of different ranges
    il = IntLinear(fake)
    # the integer codes are the fake quantizer's: scale x code reproduces its output exactly
    x2 = x.reshape(-1, 48)
    s = act_scale(x2, act, 9)
    codes = torch.clamp(torch.round(x2 / s), -(2 ** (a_bits - 1) - 1), 2 ** (a_bits - 1) - 1)
    assert torch.equal(codes * s, fake_quant_act(x, a_bits, granularity, clip).reshape(-1, 48))
    assert torch.equal(il.weight_int.float() * il.weight_scale[:, None], fake.weight)
    assert il.weight_int.dtype == torch.int8 and int(il.weight_int.abs().max()) <= 2 ** (w_bits - 1) - 1
    # the same products, summed exactly in int32 instead of float32
    ref = F.linear(fake_quant_act(x, a_bits, granularity, clip), fake.weight, fake.bias)
    torch.testing.assert_close(il(x), ref, rtol=1e-5, atol=1e-5)
    assert il(x[:0]).shape == (0, 9, 40)                                # an empty batch is an empty answer


def other_attention(block):
    """The attention module of a backend's block (inside a CompiledBlock or not)."""
    return next(m for m in block.modules() if hasattr(m, "probs_scale_from_sum"))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "fake"])
@pytest.mark.parametrize("level", ["w8a8", "w4a4"])
def test_block_outputs_match_fake_quant(backend, level):
    # Float rounding differs, and a low level's activation rounding can turn such a difference into one
    # quantization step of a few values: max error within 2% of the block's range, mean within 1e-3.
    torch.manual_seed(1)
    block = ViTBlock(32, 2, 2).eval()
    fake = apply_level(block, level)
    other = to_backend(fake, backend)
    assert to_backend(apply_level(block, "w16a16"), backend) is not None
    x = torch.randn(6, 17, 32)
    with torch.no_grad():
        ref, out = fake(x), other(x)
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
    assert (out - ref).abs().mean() <= 1e-3 * ref.abs().mean()
    if backend.startswith("int"):
        assert any(isinstance(m, IntLinear) for m in other.modules())
        assert not any(isinstance(m, IntLinear) for m in fake.modules())  # the fake block is untouched
        assert other_attention(other).probs_scale_from_sum and not fake.attn.probs_scale_from_sum


def test_float_blocks_stay_float_and_unknown_backend_is_refused():
    block = apply_level(ViTBlock(32, 2, 2), "w16a16")
    for b in BACKENDS:
        assert to_backend(block, b) is block
    with pytest.raises(ValueError, match="quant.backend"):
        to_backend(block, "int4")
    with pytest.raises(ConfigError, match="quant.backend"):
        load_config("configs/digits.yaml", ["quant.backend=int4"])


@pytest.fixture(scope="module")
def int_study(digits_cfg):
    from quee_kit.study_run import run_study
    cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", "model.epochs=15",
                                              "quant.backend=int", "predictor.folds=3",
                                              "eval.lambda_grid=40"])
    return run_study(cfg, progress=False, variants={"quee": ({}, "all")})


def test_int_path_cache_is_its_own_artifact_and_close_to_fake(int_study, digits_prep):
    prep = int_study.prep
    assert any(isinstance(m, IntLinear) for m in prep.qblocks[1][0].modules())
    fake, ints = digits_prep.caches["test"], prep.caches["test"]
    assert torch.equal(fake.logits[0], ints.logits[0])                 # the float root is shared exactly
    assert not torch.equal(fake.logits, ints.logits)                   # the int cache is not the fake one
    # the predicted classes of every node agree for nearly all samples
    agree = (fake.pred == ints.pred).float().mean(1)
    assert agree.min() >= 0.9 and agree.mean() >= 0.99


def test_int_engine_matches_int_cache_simulation(int_study):
    assert_engine_equals_simulation(int_study, [(0, 0.5), (2, 3.0), (4, 20.0), (1, 0.0)])


def test_integer_backends_key_their_arithmetic_so_older_caches_are_rebuilt():
    # the fake (default) and compiled keys stay the config fields, so stored default caches keep their names;
    # an integer backend's key carries the version of its arithmetic
    for backend in ("fake", "compiled"):
        q = QuantConfig(backend=backend)
        assert quant_key(q) == key_fields(q)
    for backend in ("int", "int-compiled"):
        q = QuantConfig(backend=backend)
        assert quant_key(q) == {**key_fields(q), "int_numerics": INT_NUMERICS}


@pytest.mark.parametrize("bits", [4, 8])
def test_compiled_attention_quantizes_q_k_v_one_by_one_to_the_same_values(bits):
    # Compiled, the attention quantizes q, k and v each into its matmul's layout; with one scale per token and
    # head these are the groups of quantizing the whole (B, N, 3, H, dh) product at once: the same bits.
    torch.manual_seed(2)
    mq = ActQuant(bits, "token")
    qkv = torch.randn(5, 17, 3, 4, 16) * torch.linspace(0.05, 4, 17)[None, :, None, None, None]
    joint = mq(qkv).permute(2, 0, 3, 1, 4)
    one_by_one = torch.compile(lambda t: [mq(p.transpose(1, 2)) for p in t.unbind(2)], dynamic=True)(qkv)
    for a, b in zip(joint, one_by_one):
        assert torch.equal(a, b)


def test_storing_a_value_once_changes_no_value_compiled_or_not():
    # The compiled MLP stores the GELU's output before its per-token rounding, where the compiler would
    # otherwise compute it twice: the same bits either way, and an eager no-op (a view of the same geometry).
    torch.manual_seed(3)
    x = torch.randn(7, 17, 48) * 3
    act = ActQuant(4, "token")
    assert torch.equal(stored_once(x), x) and stored_once(x).stride() == x.stride()
    plain = torch.compile(lambda t: act(F.gelu(t)), dynamic=True)(x)
    once = torch.compile(lambda t: act(stored_once(F.gelu(t))), dynamic=True)(x)
    assert torch.equal(plain, once)
