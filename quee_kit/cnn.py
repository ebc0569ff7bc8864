"""A small BatchNorm CNN backbone (``model.arch: cnn``): ResNet-8-like, an exit after every residual block.

Stem: conv 3x3 (``model.dim`` channels) + BatchNorm + ReLU. Blocks: ``model.depth`` residual blocks
conv-BN-ReLU-conv-BN + skip, then ReLU; the width doubles (and the stride is 2) at the first block of each
third of the depth, so with ``dim: 16`` and 6 blocks the widths are 16/16/32/32/64/64 on 28/28/14/14/7/7
pixels; a block that changes the shape has a 1x1 conv + BN on its skip. Heads: global average pool + Linear.

Unlike the LayerNorm backbones, the activations of a BatchNorm network scale with the input (a ReLU net is
positively homogeneous up to the BN shifts), which is the hypothesis this backbone tests (issue 29).

Quantization: every BatchNorm of a block is **folded into the conv before it** (:meth:`BasicBlock.folded`,
the deployment form: an integer kernel has no BN); :func:`quee_kit.quant.apply_level` quantizes the folded
block at every level, the reference included, and :class:`quee_kit.costs.CostModel` costs it (the BNs cost
nothing). With weights quantized per output channel, folding before or after rounding gives the same
integers (the fold scales each output channel). The stem and heads run in float, unfolded. A quantized
conv's "token" (``quant.act_granularity: token``) is a pixel: one activation scale per pixel's channel vector
of each sample (:class:`quee_kit.quant.QuantConv2d`). The heads read the whole state (no ``reads_cls``), so
the path cache and the engine run every block in full (no ``first_token`` shortcut is needed).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .config_rules import ConfigError
from .models import EarlyExitModel, register_backbone

__all__ = ["ConvStem", "BasicBlock", "PoolHead", "fold_conv_bn", "cnn_widths", "build_cnn"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` computing ``bn(conv(x))`` of an eval-mode BN: each output channel's weight times
    ``gamma / sqrt(var + eps)``, the bias ``(b - mean) * gamma / sqrt(var + eps) + beta``."""
    out = copy.deepcopy(conv)
    with torch.no_grad():
        g = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
        out.weight = nn.Parameter(conv.weight.detach() * g.view(-1, 1, 1, 1))
        out.bias = nn.Parameter((b - bn.running_mean) * g + bn.bias.detach())
    return out


class ConvStem(nn.Module):
    """conv 3x3 + BN + ReLU: (B, C, H, W) -> (B, dim, H, W)."""

    def __init__(self, in_ch: int, dim: int):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(in_ch, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ReLU(BN(conv(ReLU(BN(conv(x))))) + skip(x)); skip = 1x1 conv + BN where the shape changes, else x."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.skip(x))

    def folded(self) -> "BasicBlock":
        """An eval-mode copy with every BN folded into the conv before it (:func:`fold_conv_bn`) and replaced
        by ``Identity``: the same function as ``self.eval()`` up to float rounding."""
        if self.training:
            raise ValueError("BasicBlock.folded needs an eval-mode block (BatchNorm running statistics)")
        out = copy.deepcopy(self)
        out.conv1, out.bn1 = fold_conv_bn(self.conv1, self.bn1), nn.Identity()
        out.conv2, out.bn2 = fold_conv_bn(self.conv2, self.bn2), nn.Identity()
        if isinstance(self.skip, nn.Sequential):
            out.skip = nn.Sequential(fold_conv_bn(self.skip[0], self.skip[1]))
        return out.eval()


class PoolHead(nn.Module):
    """Global average pool + Linear: (B, C, H, W) -> (B, num_classes)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h):
        return self.fc(h.mean((2, 3)))


def cnn_widths(dim: int, depth: int) -> list[int]:
    """Block widths: ``dim``, doubled at the first block of each third of ``depth`` (16/16/32/32/64/64)."""
    return [dim * 2 ** (t * 3 // depth) for t in range(depth)]


@register_backbone("cnn")
def build_cnn(cfg, image_shape: tuple[int, int, int], num_classes: int) -> EarlyExitModel:
    """The ResNet-8-like BatchNorm CNN (uses dim, depth; see the module docstring)."""
    c, h, w = image_shape
    widths = cnn_widths(cfg.dim, cfg.depth)
    n_down = sum(a != b for a, b in zip([cfg.dim] + widths, widths))
    if min(h, w) < 2 ** n_down:
        raise ConfigError(f"config: model.arch=cnn halves the image {n_down} times; {h}x{w} is too small")
    blocks, cin = [], cfg.dim
    for cout in widths:
        blocks.append(BasicBlock(cin, cout, 2 if cout != cin else 1))
        cin = cout
    return EarlyExitModel(ConvStem(c, cfg.dim), blocks, [PoolHead(wd, num_classes) for wd in widths])
