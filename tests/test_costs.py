"""MAC counts against FlopCounterMode, known values, and the promised cost ordering."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from quee_kit.config import ModelConfig
from quee_kit.costs import CostModel, OpCounts, count_ops, level_bops
from quee_kit.models import BACKBONES, build_model
from quee_kit.quant import sorted_levels

LEVELS = sorted_levels(["w16a16", "w8a8", "w4a8", "w3a8", "w4a4"])


def _flop_macs(module, x):
    with FlopCounterMode(display=False) as fc:
        out = module(x)
    return fc.get_total_flops() // 2, out  # FlopCounterMode counts 2 FLOPs per MAC


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_macs_match_flop_counter(arch):
    model = build_model(ModelConfig(arch=arch), (1, 28, 28), 10).eval()
    h = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        for part in [model.stem] + [m for pair in zip(model.blocks, model.heads) for m in pair]:
            ops, _ = count_ops(part, h)
            macs, out = _flop_macs(part, h)
            assert ops.macs == macs, part.__class__.__name__
            if part in list(model.blocks) or part is model.stem:
                h = out


def test_default_vit_block_known_macs():
    # N = 16 patches + CLS = 17 tokens, D = 64, MLP hidden 128:
    # qkv 17*64*192 + proj 17*64*64 + fc1 17*64*128 + fc2 17*128*64 = 557,056; q k^T + att v = 2*17*17*64
    model = build_model(ModelConfig(), (1, 28, 28), 10).eval()
    h = model.stem(torch.zeros(1, 1, 28, 28))
    ops, _ = count_ops(model.blocks[0], h)
    assert ops.linear == 557_056 and ops.matmul == 36_992
    # elementwise: 2 LayerNorms (17*64 each), GELU (17*128), softmax (4*17*17)
    assert ops.elementwise == 2 * 17 * 64 + 17 * 128 + 4 * 17 * 17


def test_level_bops_formula():
    ops = OpCounts(linear=100, matmul=10, elementwise=5)
    ref = LEVELS[0]
    assert level_bops(ops, LEVELS[-1], ref) == 100 * 4 * 4 + 10 * 4 * 4 + 5 * 256  # w4a4
    assert level_bops(ops, LEVELS[2], ref, quantize_attention=False) == 100 * 4 * 8 + 10 * 256 + 5 * 256


def test_cost_model_normalization_and_ordering():
    model = build_model(ModelConfig(), (1, 28, 28), 10)
    cm = CostModel(model, (1, 28, 28), LEVELS, LEVELS[0])
    L = cm.depth
    full_ref = cm.stem + sum(cm.block(t, LEVELS[0]) for t in range(1, L + 1)) + cm.head(L)
    assert full_ref == pytest.approx(1.0, abs=1e-12)
    # costs grow with depth and with bits
    for lv in LEVELS:
        assert all(cm.path([lv] * (t + 1)) < cm.path([lv] * (t + 2)) for t in range(L - 1))
    for t in range(1, L + 1):
        costs = [cm.block(t, lv) for lv in LEVELS]
        assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    # the stem is not free: on the default model it costs more than a w4a4 block
    assert cm.stem > cm.block(1, LEVELS[-1])
    with pytest.raises(IndexError, match="1-based"):
        cm.head(0)
    with pytest.raises(AttributeError, match="immutable"):
        cm.stem = 0.0
    assert cm.call_cost(1000) == pytest.approx(1000 * 256 / cm.total_bops)
