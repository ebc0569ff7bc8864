"""Fake quantization against PyTorch's own fake_quantize ops, and per-sample independence."""
import pytest
import torch

from quee_kit.models import ViTBlock
import torch.nn.functional as F
from torch import nn

from quee_kit.quant import (ActQuant, QuantConv2d, Level, apply_level, fake_quant_act, fake_quant_weight, parse_level,
                             softmax_fake_quant)


def _qmax(b):
    return 2 ** (b - 1) - 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_quant_matches_torch_per_channel(bits):
    torch.manual_seed(bits)
    w = torch.randn(48, 32) * torch.rand(48, 1) * 3
    ours = fake_quant_weight(w, bits)
    scale = (w.abs().amax(1) / _qmax(bits)).float()
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(48, dtype=torch.int32), 0,
                                                 -_qmax(bits), _qmax(bits))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # symmetric per channel: at most 2^b - 1 distinct values in each row
    assert max(len(torch.unique(r)) for r in ours) <= 2 * _qmax(bits) + 1


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_act_quant_per_sample_matches_torch_per_tensor(bits):
    torch.manual_seed(0)
    x = torch.randn(5, 17, 64) * torch.tensor([0.1, 1, 3, 10, 0.5]).view(5, 1, 1)
    ours = fake_quant_act(x, bits, "tensor")
    for i in range(5):
        s = float(x[i].abs().max()) / _qmax(bits)
        ref = torch.fake_quantize_per_tensor_affine(x[i], s, 0, -_qmax(bits), _qmax(bits))
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=1e-6)


def test_act_quant_per_token_matches_torch_per_channel():
    torch.manual_seed(1)
    x = torch.randn(3, 7, 16) * torch.rand(3, 7, 1) * 5
    ours = fake_quant_act(x, 4, "token")
    flat = x.reshape(-1, 16)
    scale = flat.abs().amax(1) / _qmax(4)
    ref = torch.fake_quantize_per_channel_affine(flat, scale, torch.zeros(21, dtype=torch.int32), 0, -7, 7)
    torch.testing.assert_close(ours, ref.reshape(3, 7, 16), rtol=0, atol=1e-6)


def test_clip_percentile_bounds_values():
    torch.manual_seed(2)
    x = torch.randn(4, 1000)
    x[:, 0] = 100.0  # an outlier per sample
    out = fake_quant_act(x, 8, "tensor", clip_percentile=99.0)
    assert float(out.abs().max()) < 10  # the outlier is clipped, not the scale's anchor
    plain = fake_quant_act(x, 8, "tensor")
    assert float(plain.abs().max()) == pytest.approx(100.0, rel=1e-5)


def test_float_levels_pass_through():
    x = torch.randn(2, 5)
    assert fake_quant_act(x, 16) is x and fake_quant_weight(x, 32) is x


@pytest.mark.parametrize("level", ["w4a4", "w3a8", "w8a8"])
def test_block_output_independent_of_batch_mates(level):
    torch.manual_seed(0)
    block = ViTBlock(64, 4, 2).eval()
    qb = apply_level(block, level)
    x = torch.randn(64, 17, 64)
    x[1:] *= torch.rand(63, 1, 1) * 20  # batch-mates with very different ranges
    with torch.no_grad():
        alone = qb(x[:1])
        batched = qb(x)[:1]
    torch.testing.assert_close(alone, batched, rtol=0, atol=1e-5)


def test_batch_wide_scale_would_depend_on_batch_mates():
    # The failure mode the per-sample scale avoids: with one scale over the batch the
    # first sample's quantized input changes when a large batch-mate joins.
    torch.manual_seed(0)
    x = torch.randn(2, 17, 64)
    x[1] *= 50
    batch_scale = x.abs().max() / 7
    wide = torch.round(x[0] / batch_scale).clamp(-7, 7) * batch_scale
    assert not torch.allclose(wide, fake_quant_act(x, 4)[0])
    torch.testing.assert_close(fake_quant_act(x, 4)[0], fake_quant_act(x[:1], 4)[0])


def test_apply_level_quantizes_copy_and_attention_switch():
    torch.manual_seed(0)
    block = ViTBlock(32, 2, 2).eval()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        ref = block(x)
        with_att = apply_level(block, "w4a4")(x)
        no_att = apply_level(block, "w4a4", quantize_attention=False)(x)
        float_copy = apply_level(block, "w16a16")(x)
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k])
    torch.testing.assert_close(float_copy, ref)
    assert not torch.allclose(with_att, no_att)
    assert not torch.allclose(with_att, ref, atol=1e-3)


def test_parse_level():
    assert parse_level("w4a8") == Level(4, 8) and parse_level("w16a16").name == "w16a16"
    for bad in ["w1a8", "4a8", "w4", "w40a8"]:
        with pytest.raises(ValueError, match="level"):
            parse_level(bad)


def test_conv_blocks_quantize_weights_and_input_per_sample():
    """A Conv2d inside a block becomes a QuantConv2d: per-channel weights at w_bits, the input at the
    level's a_bits with its granularity and clipping (here one scale per sample, clipped at 99%)."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    level = Level(4, 8, "tensor", 99.0)
    q = apply_level(block, level)
    assert isinstance(q[0], QuantConv2d)
    x = torch.randn(2, 3, 5, 5)
    conv = block[0]
    ref = F.conv2d(fake_quant_act(x, 8, "tensor", 99.0), fake_quant_weight(conv.weight.detach(), 4), conv.bias,
                   padding=1)
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref)
    assert parse_level("w4a8", "tensor", 99.0) == level and parse_level("w4a8") != level


def test_quantize_residual_quantizes_the_block_input_only_below_float():
    from quee_kit.quant import quantize_residual
    torch.manual_seed(0)
    block = torch.nn.Linear(8, 8)
    x = torch.randn(3, 5, 8) * 4
    assert quantize_residual(block, "w16a16") is block                 # the float reference is untouched
    wrapped = quantize_residual(block, "w8a4")                          # a level's granularity: token
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), block(fake_quant_act(x, 4, "token")))
        assert not torch.allclose(wrapped(x), block(x))                 # 4-bit input: the output changes


@pytest.mark.parametrize("last", [1, 5, 16, 17, 33])
def test_per_token_scale_of_short_and_strided_last_dims_is_the_exact_max(last):
    # short last dims (a head's channels, an attention row) fold halves with maximum: the same maxima,
    # so the same quantized values as the plain abs().amax reference, also on a permuted (strided) view
    torch.manual_seed(2)
    x = (torch.randn(3, 6, 4, last) * torch.rand(3, 6, 4, 1) * 4).permute(0, 2, 1, 3)
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / _qmax(4)
    ref = (x / scale).round().clamp(-7, 7) * scale
    assert torch.equal(fake_quant_act(x, 4, "token"), ref)


@pytest.mark.parametrize("level,granularity", [("w16a16", "token"), ("w8a8", "token"), ("w4a4", "token"),
                                               ("w4a8", "tensor")])
@pytest.mark.parametrize("wrap", ["none", "residual", "int"])
def test_first_token_state_is_the_full_forward_sliced(level, granularity, wrap):
    # The last block of the path cache and the engine computes only the CLS token for a CLS exit: it must
    # give the bits of the full forward, or fall back to it (a per-sample scale mixes every token's values)
    from quee_kit.backends import to_backend
    from quee_kit.models import first_token_state
    from quee_kit.quant import quantize_residual
    torch.manual_seed(3)
    lv = parse_level(level, granularity)
    block = apply_level(ViTBlock(32, 4, 2).eval(), lv)
    block = quantize_residual(block, lv) if wrap == "residual" else to_backend(block, "int") if wrap == "int" else block
    x = torch.randn(40, 17, 32) * torch.rand(40, 17, 1) * 4
    shortcut = hasattr(block, "first_token") and block.first_token(x) is not None
    assert shortcut == (granularity == "token")
    with torch.no_grad():
        for n in (40, 17, 3):           # below 17 samples the full forward runs (few-row products round otherwise)
            assert torch.equal(first_token_state(block, x[:n]), block(x[:n])[:, :1])


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 12])
def test_per_max_scale_needs_no_clamp(bits):
    # fake_quant_act skips the clamp when the scale comes from the max |x|: x / scale never rounds past q.
    # The same bits as the clamped form, on rows whose extremes sit exactly at +-max and on tiny rows.
    torch.manual_seed(bits)
    x = torch.randn(200, 17, 64) * torch.rand(200, 17, 1) * 10
    x[:20] *= 1e-14                                   # below the 1e-12 floor of the scale
    x[20:40, :, 0] = -x[20:40].abs().amax(-1) * 1.0   # the extreme is a negative value
    q = _qmax(bits)
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / q
    ref = (x / scale).round().clamp(-q, q) * scale
    assert torch.equal(fake_quant_act(x, bits, "token"), ref)
    flat = x.reshape(200, -1)
    scale = flat.abs().amax(-1, keepdim=True).clamp_min(1e-12) / q
    assert torch.equal(fake_quant_act(x, bits, "tensor").reshape(200, -1), (flat / scale).round().clamp(-q, q) * scale)


@pytest.mark.parametrize("bits", [4, 8])
def test_softmax_scale_from_its_sum_is_the_quantizer_max(bits):
    # a row's largest probability is exp(0) / z: taking the scale from the sum must give exactly what the
    # per-token quantizer finds by its own pass over the row, also with -inf entries, ties and one-hot rows
    torch.manual_seed(0)
    s = torch.randn(64, 4, 17, 17) * 6
    s[0, 0, 0, 3:] = float("-inf")                       # masked entries
    s[0, 1] = 2.5                                        # all tied
    s[0, 2, :, 5] = 1e4                                  # one-hot after the softmax
    act = ActQuant(bits, "token")
    e = (s - s.amax(-1, keepdim=True)).exp()
    probs = e / e.sum(-1, keepdim=True)
    ref = fake_quant_act(probs, bits, "token")
    out = softmax_fake_quant(s, act)
    assert torch.equal(out, ref)
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert ((out - probs).abs() <= probs.amax(-1, keepdim=True) / (2 * (2 ** (bits - 1) - 1)) + 1e-7).all()
    with pytest.raises(ValueError):
        softmax_fake_quant(s, ActQuant(bits, "tensor"))       # one scale per sample: not the row's max
