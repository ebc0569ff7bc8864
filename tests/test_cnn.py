"""The BatchNorm CNN backbone (quee_kit/cnn.py): against plain torch functional references, BN folding against
torch's own fusion, its costs against FlopCounterMode, its quantized blocks against a hand-written fake
quantization, and the dynamic engine against the path-cache simulation on a tiny trained CNN."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.flop_counter import FlopCounterMode

from quee_kit.cnn import BasicBlock, build_cnn, cnn_widths, fold_conv_bn
from quee_kit.config import ConfigError, ModelConfig, load_config
from quee_kit.costs import CostModel, count_ops
from quee_kit.models import BACKBONES
from quee_kit.quant import Level, apply_level, fake_quant_weight, sorted_levels


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BN (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _ref_block(x, b: BasicBlock):
    """The block written with functional ops: relu(bn2(conv2(relu(bn1(conv1 x))))) + skip(x))."""
    s = b.conv1.stride
    h = F.relu(_bn(F.conv2d(x, b.conv1.weight, None, s, 1), b.bn1))
    h = _bn(F.conv2d(h, b.conv2.weight, None, 1, 1), b.bn2)
    skip = x if isinstance(b.skip, nn.Identity) else _bn(F.conv2d(x, b.skip[0].weight, None, s), b.skip[1])
    return F.relu(h + skip)


def test_cnn_shapes_and_every_exit_equal_a_functional_reference():
    cfg = ModelConfig(arch="cnn", dim=8, depth=6)
    torch.manual_seed(0)
    model = _randomize_bn(build_cnn(cfg, (1, 28, 28), 10))
    assert "cnn" in BACKBONES and cnn_widths(16, 6) == [16, 16, 32, 32, 64, 64]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        outs = model(x)
        st = model.stem
        h = F.relu(_bn(F.conv2d(x, st.conv.weight, None, 1, 1), st.bn))
        sides = []
        for t, (b, head) in enumerate(zip(model.blocks, model.heads)):
            h = _ref_block(h, b)
            sides.append(h.shape[1:])
            torch.testing.assert_close(outs[t], h.mean((2, 3)) @ head.fc.weight.T + head.fc.bias)
    assert len(outs) == 6 and all(o.shape == (3, 10) for o in outs)
    assert sides == [(8, 28, 28), (8, 28, 28), (16, 14, 14), (16, 14, 14), (32, 7, 7), (32, 7, 7)]


def test_bn_folding_equals_torch_fusion_and_the_unfolded_block():
    torch.manual_seed(1)
    block = _randomize_bn(BasicBlock(8, 16, 2), seed=3)
    ref = fuse_conv_bn_eval(block.conv1, block.bn1)       # PyTorch's own fold
    mine = fold_conv_bn(block.conv1, block.bn1)
    torch.testing.assert_close(mine.weight, ref.weight)
    torch.testing.assert_close(mine.bias, ref.bias)
    folded = block.folded()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in block.modules())   # the original is untouched
    x = torch.randn(4, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), _ref_block(x, block), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval"):
        block.train().folded()


def test_folding_commutes_with_per_channel_weight_rounding():
    """What lets the kit fold before quantizing: per-output-channel rounding of the folded weight gives the
    rounded unfolded weight times the fold's per-channel factor (negative factors included)."""
    torch.manual_seed(2)
    block = _randomize_bn(BasicBlock(8, 8, 1), seed=5)
    bn = block.bn1
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(-1, 1, 1, 1)
    assert (g < 0).any()
    folded_q = fake_quant_weight(fold_conv_bn(block.conv1, bn).weight.detach(), 4)
    torch.testing.assert_close(folded_q, fake_quant_weight(block.conv1.weight.detach(), 4) * g)


def _fq_pixel(x, bits):
    """One scale per pixel's channel vector of each sample, by hand."""
    q = 2 ** (bits - 1) - 1
    s = x.abs().amax(1, keepdim=True) / q
    return torch.round(x / s) * s


def test_quantized_cnn_block_equals_a_hand_written_fake_quant():
    torch.manual_seed(3)
    block = _randomize_bn(BasicBlock(8, 16, 2), seed=7)
    q = apply_level(block, Level(4, 4, "token"))
    f = block.folded()
    x = torch.relu(torch.randn(2, 8, 10, 10)) + 0.01
    w = {k: fake_quant_weight(c.weight.detach(), 4) for k, c in
         [("c1", f.conv1), ("c2", f.conv2), ("s", f.skip[0])]}
    with torch.no_grad():
        h = F.relu(F.conv2d(_fq_pixel(x, 4), w["c1"], f.conv1.bias, 2, 1))
        ref = F.relu(F.conv2d(_fq_pixel(h, 4), w["c2"], f.conv2.bias, 1, 1)
                     + F.conv2d(_fq_pixel(x, 4), w["s"], f.skip[0].bias, 2))
        torch.testing.assert_close(q(x), ref)
        # the float reference level is the folded block itself
        torch.testing.assert_close(apply_level(block, "w16a16")(x), f(x))


def test_cnn_costs_match_flop_counter_and_known_values():
    model = _randomize_bn(build_cnn(ModelConfig(arch="cnn", dim=8, depth=6), (1, 28, 28), 10))
    levels = sorted_levels(["w16a16", "w8a8", "w4a4", "w3a3"])
    cm = CostModel(model, (1, 28, 28), levels, levels[0])
    h = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        for part in [model.stem] + [m for pair in zip(model.blocks, model.heads) for m in pair]:
            with FlopCounterMode(display=False) as fc:
                out = part(h)
            assert count_ops(part, h)[0].macs == fc.get_total_flops() // 2, part.__class__.__name__
            if part is model.stem or part in list(model.blocks):
                h = out
    # block 1: two 3x3 convs 8 -> 8 on 28x28; block 3: 3x3 8 -> 16 and 16 -> 16 on 14x14 + the 1x1 skip
    assert cm.block_ops[0].linear == 2 * 784 * 8 * 8 * 9
    assert cm.block_ops[2].linear == 196 * 16 * 8 * 9 + 196 * 16 * 16 * 9 + 196 * 16 * 8
    # costed folded: the BNs cost nothing, the two ReLUs one op per element
    assert cm.block_ops[0].elementwise == 2 * 8 * 784
    full = cm.stem + sum(cm.block(t, levels[0]) for t in range(1, 7)) + cm.head(6)
    assert full == pytest.approx(1.0, abs=1e-12)
    # w3a3 against w16a16 on block 1: 3 x 3 bits per MAC vs 16 x 16, the ReLUs at 16 x 16 at both levels
    relu = 2 * 8 * 784 * 256
    assert cm.block(1, levels[-1]) / cm.block(1, levels[0]) == pytest.approx(
        (903_168 * 9 + relu) / (903_168 * 256 + relu), rel=1e-12)


def test_config_accepts_cnn_and_rejects_an_unknown_arch_in_one_line():
    assert load_config("configs/cnn.yaml").model.arch == "cnn"
    with pytest.raises(ConfigError) as e:
        load_config("configs/cnn.yaml", ["model.arch=cnnn"])
    msg = str(e.value)
    assert "\n" not in msg and "model.arch" in msg and "cnn" in msg and "vit" in msg


def test_engine_equals_the_simulation_on_a_tiny_cnn(tmp_path):
    from quee_kit.engine import DynamicModel
    from quee_kit.policy import simulate
    from quee_kit.study_run import run_study
    cfg = load_config("configs/digits.yaml", [f"cache_dir={tmp_path}", "model.arch=cnn", "model.dim=4",
                                              "model.epochs=3", "predictor.folds=3", "eval.lambda_grid=20",
                                              "eval.variants=[quee]"])
    study = run_study(cfg, progress=False)
    prep, opts = study.prep, study.opts
    assert isinstance(prep.model.blocks[0], BasicBlock)
    q, fitted = study.methods["quee"], study.predictors["quee"]
    x = prep.data.test.x
    visited = set()
    for entry, lam in [(0, 0.3), (2, 2.0), (1, 0.0), (4, 10.0)]:
        sim = simulate(fitted["test"], prep.caches["test"], opts, lam, entry, q.mask, q.call_cost)
        eng = DynamicModel(prep.model, prep.qblocks, prep.costs, fitted["final"], opts, entry, lam, q.mask,
                           q.call_cost)
        parts = [eng(x[s:e]) for s, e in [(0, 1), (1, 9), (9, len(x))]]
        node = np.concatenate([r.node for r in parts])
        np.testing.assert_array_equal(node, sim.node)
        np.testing.assert_array_equal(torch.cat([r.pred for r in parts]).numpy(),
                                      prep.caches["test"].pred.numpy()[sim.node, np.arange(len(x))])
        np.testing.assert_allclose(np.concatenate([r.cost for r in parts]), sim.cost, rtol=1e-12)
        visited |= set(prep.tree.depth[node].tolist())
    assert len(visited) > 1   # samples exited at more than one depth: the engine really regrouped
