"""MACs per op and BOPs (bit operations) per level; normalized path costs.

Convention (the BOPs of e.g. van Baalen et al. 2020, "Bayesian Bits"):
``BOPs = MACs x w_bits x a_bits`` for a quantized Linear/Conv, ``MACs x a_bits x a_bits``
for an attention matmul run at ``a_bits`` (``ref x ref`` when it runs in float), and one
op per element of every norm, activation and softmax at the reference precision
(residual and positional adds are not counted: < 0.5% of a block here). The stem, the exit
heads and the error predictor run in float and are costed at the reference bits.
Everything is normalized so that stem + all blocks at the reference + final head = 1.0.

MAC counts are taken per sample with forward hooks; ``tests/test_costs.py`` checks them
against ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import Attention, EarlyExitModel, input_dtype
from .quant import Level, deployed

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["OpCounts", "count_ops", "level_bops", "CostModel", "mlp_macs"]

_ELEMENTWISE = (nn.LayerNorm, nn.GELU, nn.ReLU, nn.SiLU, nn.Softmax, nn.BatchNorm2d)


@dataclass(frozen=True)
class OpCounts:
    """Per-sample op counts of one module."""
    linear: int       # MACs of Linear/Conv layers (quantized at w_bits x a_bits inside blocks)
    matmul: int       # MACs of attention matmuls (q k^T and att v)
    elementwise: int  # elements through norms, activations and softmax

    @property
    def macs(self) -> int:
        return self.linear + self.matmul


@torch.no_grad()
def count_ops(module: nn.Module, x: torch.Tensor) -> tuple[OpCounts, torch.Tensor]:
    """Count ops of ``module(x)`` for one sample (``x`` has batch size 1). Returns (counts, output)."""
    if x.shape[0] != 1:
        raise ValueError("count_ops expects a batch of one sample")
    c = {"linear": 0, "matmul": 0, "elementwise": 0}

    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            c["linear"] += out.numel() // mod.out_features * mod.in_features * mod.out_features
        elif isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            c["linear"] += out.numel() * k
        elif isinstance(mod, Attention):
            _, n, d = inp[0].shape
            c["matmul"] += 2 * n * n * d           # q k^T and att v over all heads
            c["elementwise"] += mod.heads * n * n  # softmax
        elif isinstance(mod, _ELEMENTWISE):
            c["elementwise"] += out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        out = module(x)
    finally:
        for h in handles:
            h.remove()
    return OpCounts(**c), out


def level_bops(ops: OpCounts, level: Level, ref: Level, quantize_attention: bool = True) -> float:
    """BOPs of a block with ``ops`` run at ``level`` (reference bits for elementwise ops)."""
    ref_aa = ref.a_bits * ref.a_bits            # elementwise ops, and float attention, at the reference's a x a
    mm_bits = level.a_bits * level.a_bits if quantize_attention else ref_aa
    return ops.linear * level.w_bits * level.a_bits + ops.matmul * mm_bits + ops.elementwise * ref_aa


def mlp_macs(sizes: list[int]) -> int:
    """MACs of an MLP with layer widths ``sizes`` (e.g. [in, 32, 32, out])."""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


class CostModel:
    """Normalized costs (1.0 = stem + every block at ``ref`` + final head) of a model's parts.

    ``block(t, level)``, ``stem``, ``head(t)`` and ``call_cost(macs)`` are normalized BOPs; ``t`` is the
    1-based depth, as everywhere in the kit (block 1 runs first, head t follows block t).
    """

    def __init__(self, model: EarlyExitModel, image_shape, levels: list[Level], ref: Level,
                 quantize_attention: bool = True):
        x = torch.zeros(1, *image_shape, dtype=input_dtype(model))
        was_training = model.training
        model.eval()
        self.stem_ops, h = count_ops(model.stem, x)
        self.block_ops, self.head_ops = [], []
        for block, head in zip(model.blocks, model.heads):
            ops, h = count_ops(deployed(block), h)   # as levels run it (e.g. BatchNorm folded)
            self.block_ops.append(ops)
            self.head_ops.append(count_ops(head, h)[0])
        model.train(was_training)
        self.levels, self.ref, self.quantize_attention = list(levels), ref, quantize_attention
        ref_wa = ref.w_bits * ref.a_bits            # float MACs (stem, heads) at the reference's w x a
        self._float_bops = lambda ops: (ops.linear + ops.matmul) * ref_wa + ops.elementwise * ref.a_bits ** 2
        self.total_bops = (self._float_bops(self.stem_ops)
                           + sum(level_bops(o, ref, ref, quantize_attention) for o in self.block_ops)
                           + self._float_bops(self.head_ops[-1]))
        self.stem = self._float_bops(self.stem_ops) / self.total_bops
        self._heads = [self._float_bops(o) / self.total_bops for o in self.head_ops]
        self._blocks = {(t, lv): level_bops(o, lv, ref, quantize_attention) / self.total_bops
                        for t, o in enumerate(self.block_ops, 1) for lv in self.levels}
        self._frozen = True

    def __setattr__(self, name, value):
        # Every cost is fixed at construction (the predictor's call cost included: call_cost(macs) is
        # a function of the MACs, not a setting), so that no stage can change what another one paid.
        if getattr(self, "_frozen", False):
            raise AttributeError(f"CostModel is immutable (tried to set {name!r})")
        super().__setattr__(name, value)

    @property
    def depth(self) -> int:
        return len(self.block_ops)

    def block(self, t: int, level: Level) -> float:
        """Normalized cost of block ``t`` (1-based depth) at ``level``."""
        return self._blocks[(t, level)]

    def head(self, t: int) -> float:
        """Normalized cost of exit head ``t`` (1-based depth)."""
        if t < 1:
            raise IndexError(f"head depth is 1-based (got {t})")
        return self._heads[t - 1]

    def call_cost(self, macs: int) -> float:
        """Normalized cost of one predictor call of ``macs`` float MACs (costed at reference bits)."""
        return macs * self.ref.w_bits * self.ref.a_bits / self.total_bops

    def path(self, levels: list[Level]) -> float:
        """Cost of running blocks 1..len(levels) at ``levels`` and evaluating every head on the way."""
        return self.stem + sum(self.block(t, lv) + self.head(t) for t, lv in enumerate(levels, 1))

    def table(self) -> list[dict]:
        """One row per block and level: MACs and normalized BOPs (for the README/notebooks)."""
        rows = [{"part": "stem", "level": self.ref.name, "macs": self.stem_ops.macs, "cost": self.stem}]
        for t, ops in enumerate(self.block_ops, 1):
            for lv in self.levels:
                rows.append({"part": f"block{t}", "level": lv.name, "macs": ops.macs,
                             "cost": self.block(t, lv)})
            rows.append({"part": f"head{t}", "level": self.ref.name, "macs": self.head_ops[t - 1].macs,
                         "cost": self.head(t)})
        return rows
