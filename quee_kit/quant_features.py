"""Quantization-aware predictor features (``predictor.features: quant``): how the state a decision node hands on
would fare at each cheaper activation quantizer of the level menu.

At a decision node after block t the residual stream ``h`` (what blocks t+1.. read) is already computed. For
every distinct activation quantizer of the menu's quantized levels (``a_bits`` < 16, with the level's
granularity and clipping; ``w4a8`` and ``w8a8`` share one) five statistics of ``h`` against the scale that
quantizer would use for it, in :data:`QUANT_STATS` order:

- ``clip_share``: share of entries the quantizer clamps, ``|round(x / scale)| > qmax`` (0 under a max-based scale);
- ``max_over_scale``: the largest ``|x| / scale`` of the sample (``qmax`` under a max-based per-token scale);
- ``rms_over_scale``: per token ``RMS(x) / scale``, averaged over tokens (small inputs lose resolution);
- ``zero_share``: share of entries that round to 0 (``round(x / scale) == 0``, half to even as the quantizer);
- ``rel_error``: ``||Q(x) - x|| / ||x||`` of the sample, ``Q`` the quantizer's clamp-and-round.

A "token" is a vector along the last dim, as for ``granularity: token`` in :mod:`quee_kit.quant`. Every
statistic is reduced per sample (last dim first, then tokens), so a sample's numbers do not depend on its
batch-mates: the path cache and the dynamic engine compute them on different batches with the same bits.

The scale (:func:`act_scale`) is the dynamic one of :func:`quee_kit.quant.fake_quant_act`. A level with a
static (calibrated) activation scale would give its scale here instead: :func:`act_scale` is the one place.

Cost (:func:`feature_ops`): computed in float like the predictor and costed the same way, at the reference
bits per op: 3 ops per element shared (abs, max, square-and-add) and 7 per element and quantizer (divide,
round, two compares, multiply, subtract, square-and-add).
"""
from __future__ import annotations

import torch

from .quant import FLOAT_BITS, Level, qmax

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["QUANT_STATS", "QUANT_STATS_VERSION", "SHARED_OPS", "PER_QUANTIZER_OPS", "act_quantizers", "act_scale", "quant_stats",
           "quant_feature_names", "level_columns", "feature_ops", "state_numel", "FEATURES"]

FEATURES = ("softmax", "quant")          # predictor.features
QUANT_STATS = ("clip_share", "max_over_scale", "rms_over_scale", "zero_share", "rel_error")
QUANT_STATS_VERSION = 2   # bump when a statistic's definition changes: caches and fits that hold them are rebuilt
SHARED_OPS, PER_QUANTIZER_OPS = 3, 7


def act_quantizers(levels: list[Level]) -> list[tuple]:
    """The distinct activation quantizers ``(a_bits, granularity, clip_percentile)`` of the quantized levels,
    in menu order (first appearance)."""
    out = []
    for lv in levels:
        k = (lv.a_bits, lv.granularity, lv.clip_percentile)
        if lv.a_bits < FLOAT_BITS and k not in out:
            out.append(k)
    return out


def level_columns(levels: list[Level], offset: int = 0) -> list[list[int] | None]:
    """Per level of ``levels``: the feature columns of its quantizer's statistics when the quant columns start at
    ``offset`` (None for a float level)."""
    aq, k = act_quantizers(levels), len(QUANT_STATS)
    start = [None if lv.a_bits >= FLOAT_BITS else offset + k * aq.index((lv.a_bits, lv.granularity, lv.clip_percentile))
             for lv in levels]
    return [None if s is None else list(range(s, s + k)) for s in start]


def quant_feature_names(levels: list[Level]) -> list[str]:
    return [f"{s}@a{a}{'' if g == 'token' else '-' + g}{'' if c is None else f'-p{c:g}'}"
            for a, g, c in act_quantizers(levels) for s in QUANT_STATS]


def act_scale(x: torch.Tensor, bits: int, granularity: str = "token", clip_percentile: float | None = None):
    """The scale :func:`~quee_kit.quant.fake_quant_act` uses for ``x`` (B, ..., D): (B, ..., 1) per token, or
    (B, 1, ..., 1) per sample; from the max |x| or the ``clip_percentile`` of |x| in the group."""
    if granularity == "tensor":
        flat, shape = x.reshape(x.shape[0], -1), (x.shape[0],) + (1,) * (x.dim() - 1)
    elif granularity == "token":
        flat, shape = x, x.shape[:-1] + (1,)
    else:
        raise ValueError(f"granularity must be 'tensor' or 'token' (got {granularity!r})")
    a = flat.abs()
    amax = a.amax(-1) if clip_percentile is None or clip_percentile >= 100 else \
        torch.quantile(a, clip_percentile / 100.0, dim=-1)
    return (amax.clamp_min(1e-12) / qmax(bits)).reshape(shape)


def quant_stats(h: torch.Tensor, levels: list[Level]) -> torch.Tensor:
    """(B, ...) states -> (B, len(QUANT_STATS) * n_quantizers) float32 statistics (module docstring)."""
    x = h.float().reshape(h.shape[0], -1, h.shape[-1])          # (B, tokens, D)
    a = x.abs()
    sq = (x * x).sum(-1)                                        # (B, tokens)
    norm = sq.sum(-1).clamp_min(1e-30)
    rms = (sq / x.shape[-1]).sqrt()
    cols = []
    for bits, gran, clip in act_quantizers(levels):
        s = act_scale(x, bits, gran, clip)                      # (B, tokens, 1) or (B, 1, 1)
        q = qmax(bits)
        r = x / s
        rounded = r.round()
        err = rounded.clamp(-q, q) * s - x
        cols += [(rounded.abs() > q).float().mean(-1).mean(-1),
                 (a / s).amax(-1).amax(-1),
                 (rms / s[..., 0]).mean(-1),
                 (rounded == 0).float().mean(-1).mean(-1),
                 ((err * err).sum(-1).sum(-1) / norm).sqrt()]
    return torch.stack(cols, -1) if cols else torch.zeros(h.shape[0], 0)


def feature_ops(levels: list[Level], numel: int) -> int:
    """Ops of one call's statistics on a state of ``numel`` elements per sample."""
    return numel * (SHARED_OPS + PER_QUANTIZER_OPS * len(act_quantizers(levels)))


@torch.no_grad()
def state_numel(model, image_shape) -> int:
    """The largest per-sample element count of a block's output (the state a decision node reads)."""
    p = next(model.parameters())   # its device and dtype (float64 with paths.dtype)
    h = model.stem(torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype))
    n = 0
    for b in model.blocks:
        h = b(h)
        n = max(n, h[0].numel())
    return n
