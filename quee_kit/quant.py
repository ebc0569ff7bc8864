"""Precision levels and fake quantization.

A :class:`Level` ``w{W}a{A}`` fake-quantizes, inside the blocks only, every ``Linear``/``Conv2d``
weight symmetrically per output channel at ``W`` bits and the activations entering it
symmetrically and dynamically at ``A`` bits. The activation scale is computed **per
sample** (one scale per sample tensor, or one per token: the level's ``granularity``, with its
optional ``clip_percentile``), never over the batch, so a sample's output does not depend on its
batch-mates. Bits >= 16 mean "run in float" (the reference is costed at 16 bits but computed in
float32). Everything a level's numbers depend on is a field of the level; :func:`apply_level` is
the one verb that applies it to a block, :func:`config_levels` builds the levels of a config.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .gemm import linear
from .quant_levels import FLOAT_BITS, Level, config_levels, parse_level, sorted_levels

__all__ = ["Level", "parse_level", "sorted_levels", "config_levels", "fake_quant_weight", "fake_quant_act", "ActQuant",
           "QuantLinear", "QuantConv2d", "apply_level", "deployed", "FLOAT_BITS", "CastBlock", "REF_DTYPES", "ResidualQuant", "qmax",
           "quantize_residual", "softmax_fake_quant"]

def qmax(bits: int) -> int:
    # Restricted symmetric range [-(2^(b-1)-1), 2^(b-1)-1]: zero is exact, +/- symmetric.
    return 2 ** (bits - 1) - 1


def _round_clamp(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(round(x / scale), -q, q) * scale``, in place on the quotient (one new tensor, not four)."""
    q = qmax(bits)
    return (x / scale).round_().clamp_(-q, q).mul_(scale)


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel (dim 0) fake quantization; float passthrough for bits >= 16."""
    if bits >= FLOAT_BITS:
        return w
    amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    scale = (amax / qmax(bits)).view(-1, *([1] * (w.dim() - 1)))
    return _round_clamp(w, scale, bits)


def _abs_max_last(x: torch.Tensor) -> torch.Tensor:
    """``x.abs().amax(-1)``. For a short last dim (a head's 16 channels, a 17-token attention row) torch's
    reduction is slow, so the halves are folded with ``maximum`` instead: twice as fast, and a maximum is
    exact in any order, so the values are the same. Inside a ``torch.compile`` graph the plain reduction is
    kept: the compiler vectorizes it, while the folds become scalar loops over strided halves."""
    a = x.abs()
    if a.shape[-1] > 32 or a.shape[-1] == 0 or torch.compiler.is_compiling():
        return a.amax(-1)
    while a.shape[-1] > 1:
        h = a.shape[-1] // 2
        m = torch.maximum(a[..., :h], a[..., h:2 * h])
        if a.shape[-1] % 2:                         # odd: the last one joins the first
            m[..., :1] = torch.maximum(m[..., :1], a[..., 2 * h:])
        a = m
    return a[..., 0]


def fake_quant_act(x: torch.Tensor, bits: int, granularity: str = "tensor",
                   clip_percentile: float | None = None) -> torch.Tensor:
    """Symmetric dynamic fake quantization with a scale per sample (dim 0) or per token (last dim).

    ``granularity='tensor'``: one scale per sample from all its elements;
    ``'token'``: one scale per vector along the last dim. ``clip_percentile`` (e.g. 99.9)
    clips at that percentile of |x| within the same group instead of the max.
    """
    if bits >= FLOAT_BITS:
        return x
    if granularity == "tensor":
        flat = x.detach().reshape(x.shape[0], -1)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    elif granularity == "token":
        flat = x.detach()   # reduced over its last dim in place of a reshaped copy (the same maxima)
        shape = x.shape[:-1] + (1,)
    else:
        raise ValueError(f"granularity must be 'tensor' or 'token' (got {granularity!r})")
    by_max = clip_percentile is None or clip_percentile >= 100
    amax = _abs_max_last(flat) if by_max else torch.quantile(flat.abs(), clip_percentile / 100.0, dim=-1)
    scale = (amax.clamp_min(1e-12) / qmax(bits)).reshape(shape)
    x = torch.maximum(torch.minimum(x, scale * qmax(bits)), -scale * qmax(bits)) \
        if clip_percentile is not None else x
    if by_max:
        # No clamp needed: |x| <= amax, and scale is amax / q rounded once, so |x / scale| <= q (1 + 2^-23)
        # (or < q where amax < 1e-12), which rounds to at most q. The clamp would change no value.
        return (x / scale).round_().mul_(scale)
    return _round_clamp(x, scale, bits)


def softmax_fake_quant(scores: torch.Tensor, act: "ActQuant") -> torch.Tensor:
    """``act`` applied to the softmax of ``scores`` over the last dim, with each row's scale taken from the
    softmax's own sum instead of a second pass over the row.

    The probabilities are ``e / z`` with ``e = exp(scores - max)`` and ``z = e.sum()``; the row's largest is
    ``exp(0) / z = 1 / z`` exactly (the others are ``e / z`` with ``e <= 1``), so ``1 / z`` is the max the
    quantizer would find. Only for a per-token quantizer scaled by the max (no clipping, below FLOAT_BITS);
    the probabilities may differ from ``torch.softmax``'s in the last bit. Used by the integer backends.
    """
    if not act.token_max:
        raise ValueError("softmax_fake_quant needs a per-token quantizer scaled by the max |x|")
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    z = e.sum(-1, keepdim=True)
    scale = (1 / z).clamp_min(1e-12) / qmax(act.bits)
    return (e / z / scale).round() * scale


@dataclass(frozen=True)
class ActQuant:
    """How activations are quantized at one level (callable on a tensor)."""
    bits: int
    granularity: str = "tensor"
    clip_percentile: float | None = None

    @property
    def rowwise(self) -> bool:
        """Whether each token's quantized values depend on that token alone (per-token scales, or float)."""
        return self.granularity == "token" or self.bits >= FLOAT_BITS

    @property
    def token_max(self) -> bool:
        """Whether it quantizes with a scale per token from the max |x| (no clipping), below FLOAT_BITS."""
        return (self.granularity == "token" and self.bits < FLOAT_BITS
                and (self.clip_percentile is None or self.clip_percentile >= 100))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_act(x, self.bits, self.granularity, self.clip_percentile)


class QuantLinear(nn.Module):
    """A ``Linear`` whose weight is pre-quantized and whose input is quantized per sample."""

    def __init__(self, layer: nn.Linear, w_bits: int, act: ActQuant):
        super().__init__()
        self.register_buffer("weight", fake_quant_weight(layer.weight.detach(), w_bits))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.w_bits, self.act = w_bits, act

    @property
    def rowwise(self) -> bool:
        """Whether an output row depends on its input row alone (see ``ViTBlock.first_token``)."""
        return self.act.rowwise

    def forward(self, x):
        return linear(self.act(x), self.weight, self.bias)


class QuantConv2d(nn.Module):
    """A ``Conv2d`` with per-output-channel weight quantization and per-sample input quantization.

    A conv's token is a pixel: with ``granularity="token"`` each pixel's channel vector of each sample has
    its own scale (as a ViT token's vector has), not each row of the image; ``"tensor"``: one per sample."""

    def __init__(self, layer: nn.Conv2d, w_bits: int, act: ActQuant):
        super().__init__()
        self.conv = copy.deepcopy(layer)
        with torch.no_grad():
            self.conv.weight.copy_(fake_quant_weight(layer.weight.detach(), w_bits))
        self.w_bits, self.act = w_bits, act

    def forward(self, x):
        if self.act.granularity == "token":
            return self.conv(self.act(x.movedim(1, -1)).movedim(-1, 1))
        return self.conv(self.act(x))


def deployed(block: nn.Module) -> nn.Module:
    """The form of an eval-mode ``block`` that levels quantize and costs count: ``block.folded()`` where the
    block has one (a BatchNorm block folds its BNs into its convs, :mod:`quee_kit.cnn`), else ``block``."""
    return block.folded() if hasattr(block, "folded") else block


def apply_level(block: nn.Module, level: Level | str, quantize_attention: bool = True) -> nn.Module:
    """Return a quantized copy of ``block`` at ``level`` (the original is untouched; a name is parsed
    with :func:`parse_level`'s defaults).

    The block is first put in its deployment form (:func:`deployed`: e.g. BatchNorm folded into its conv).
    Every ``nn.Linear``/``nn.Conv2d`` inside is replaced; modules exposing
    ``matmul_quant`` (e.g. the ViT attention) get the activation quantizer for their
    matmuls when ``quantize_attention`` (else they stay float). A level with both bit
    widths >= 16 returns a plain copy (float reference).
    """
    level = parse_level(level)
    act = ActQuant(level.a_bits, level.granularity, level.clip_percentile)
    out = deployed(copy.deepcopy(block).eval())

    def swap(mod: nn.Module):
        for name, child in mod.named_children():
            if isinstance(child, nn.Linear):
                setattr(mod, name, QuantLinear(child, level.w_bits, act))
            elif isinstance(child, nn.Conv2d):
                setattr(mod, name, QuantConv2d(child, level.w_bits, act))
            else:
                swap(child)
            if hasattr(child, "matmul_quant"):
                child.matmul_quant = act if (quantize_attention and level.a_bits < FLOAT_BITS) else None

    if not level.is_float:
        swap(out)
        if hasattr(out, "matmul_quant"):
            out.matmul_quant = act if (quantize_attention and level.a_bits < FLOAT_BITS) else None
    for p in out.parameters():
        p.requires_grad_(False)
    return out


REF_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CastBlock(nn.Module):
    """A float block run in ``dtype`` (e.g. the reference level in bf16 on a GPU): the input is cast to
    ``dtype``, the output back to the input's dtype, so the stem, heads and the other levels are unchanged.
    Costed like any reference block, at its nominal bits (16 x 16 for ``w16a16``)."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.block, self.dtype = copy.deepcopy(block).to(dtype).eval(), dtype
        for p in self.block.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.block(x.to(self.dtype)).to(x.dtype)

    def first_token(self, x):
        """The wrapped block's ``first_token`` (see :func:`quee_kit.models.first_token_state`), or None."""
        out = self.block.first_token(x.to(self.dtype)) if hasattr(self.block, "first_token") else None
        return None if out is None else out.to(x.dtype)


# ---------------------------------------------------------------- quantized residual stream (optional)

class ResidualQuant(nn.Module):
    """A block whose *input* (the residual stream, not normalized) is fake-quantized by ``act`` first, so
    the stream a low level carries is stored at ``a_bits`` too (``quant.residual``). Costed like the block:
    quantizing is elementwise work the cost model leaves out, as it does residual adds."""

    def __init__(self, block: nn.Module, act: ActQuant):
        super().__init__()
        self.block, self.act = block, act

    def forward(self, x):
        return self.block(self.act(x))

    def first_token(self, x):
        """The wrapped block's ``first_token`` on the quantized stream (see
        :func:`quee_kit.models.first_token_state`), or None."""
        return self.block.first_token(self.act(x)) if hasattr(self.block, "first_token") else None


def quantize_residual(block: nn.Module, level: Level | str) -> nn.Module:
    """``block`` (already quantized by :func:`apply_level`) with its input quantized at the level's
    activation bits, granularity and clipping; a float level (a_bits >= 16) returns ``block`` unchanged."""
    level = parse_level(level)
    if level.a_bits >= FLOAT_BITS:
        return block
    return ResidualQuant(block, ActQuant(level.a_bits, level.granularity, level.clip_percentile)).eval()
