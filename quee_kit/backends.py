"""How a quantized block is computed: ``fake`` (fake quantization in the forward's float dtype, the reference), ``compiled``
(the same graph through ``torch.compile``), ``int`` (integer GEMMs) or ``int-compiled`` (integer GEMMs,
with the quantize and rescale arithmetic around them fused by ``torch.compile``).

A backend never changes *what* a level computes, only *how*: the same per-channel weight scales,
the same per-sample (or per-token) activation scales, the same rounding and clipping. So the
path cache and the dynamic engine, built from the same blocks, agree exactly, and the backends agree
with each other up to float rounding (which a low level's activation rounding can then amplify into
an occasional one-step difference of a quantized value).

``int``: every quantized ``Linear`` whose weight and activation both have at most 8 bits runs as
``int8 x int8 -> int32`` with ``torch._int_mm`` (VNNI on x86 CPUs with AVX512-VNNI/AVX-VNNI, IMMA
tensor cores on CUDA): the activation is rounded to integers with its own scale per sample or
per token, the weight is rounded once, ahead of time, per output channel, and the int32 product is
rescaled by both. 3- and 4-bit values travel in int8 (no packed-int4 kernel runs here). The
attention matmuls stay fake-quantized in float: ``att @ v`` contracts over tokens, whose scales differ
token to token, so it has no exact integer form with per-token scales. With per-token scales the attention
probabilities take theirs from the softmax's own sum (:func:`quee_kit.quant.softmax_fake_quant`: the same
max, one pass less; the probabilities may differ from ``torch.softmax``'s in the last bit).

``compiled``, ``int-compiled``: each quantized block is wrapped in ``torch.compile`` (dynamic shapes,
compiled on first use and kept; blocks of the same shape share the compiled code), so the elementwise
quantize/dequantize arithmetic is fused into few passes; where no compiler works, the block falls back to
eager (``fake`` or ``int``) with one warning. Float blocks stay eager in every backend.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .config import key_fields
from .quant import ActQuant, QuantLinear, qmax
from .registry import QUANT_BACKENDS

__all__ = ["BACKENDS", "Backend", "IntLinear", "CompiledBlock", "to_backend", "int_mm_available", "act_scale",
           "quant_key"]

BACKENDS = ("fake", "compiled", "int", "int-compiled")
INT_MAX_BITS = 8  # values of at most this many bits fit int8 operands
# Bump when the integer backends' arithmetic changes: their path caches and predictors are then rebuilt
# instead of being paired with an engine that computes otherwise. 2: attention probabilities scaled by the
# softmax's sum.
INT_NUMERICS = 2


def quant_key(q) -> dict:
    """What an artifact keyed on a :class:`~quee_kit.config.QuantConfig` hashes: its key fields, plus the
    version of its backend's arithmetic where the backend declares one (``numerics``: the integer backends'
    :data:`INT_NUMERICS`; the ``fake`` and ``compiled`` keys are the fields alone)."""
    k = key_fields(q)
    numerics = QUANT_BACKENDS.get(str(k.get("backend", "fake"))).numerics
    return {**k, "int_numerics": numerics} if numerics else k


def act_scale(x2d: torch.Tensor, act: ActQuant, rows_per_sample: int) -> torch.Tensor:
    """The scale of each row of ``x2d`` (R, K), (R, 1), exactly as :func:`quee_kit.quant.fake_quant_act`
    computes it: per token (one per row) or per sample (one per ``rows_per_sample`` rows)."""
    groups = x2d if act.granularity == "token" else x2d.reshape(-1, rows_per_sample * x2d.shape[1])
    if act.clip_percentile is None or act.clip_percentile >= 100:
        amax = groups.abs().amax(1)
    else:
        amax = torch.quantile(groups.abs(), act.clip_percentile / 100.0, dim=1)
    scale = amax.clamp_min(1e-12) / qmax(act.bits)
    if act.granularity == "tensor":
        scale = scale.repeat_interleave(rows_per_sample)
    return scale[:, None]


def int_mm_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``torch._int_mm`` runs on ``device`` (it is a private PyTorch op: check, don't assume)."""
    try:
        a = torch.ones(32, 32, dtype=torch.int8, device=device)
        return bool((torch._int_mm(a, a) == 32).all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class IntLinear(nn.Module):
    """A :class:`~quee_kit.quant.QuantLinear` computed with integer operands.

    ``weight_int``: (out, in) int8 values, rounded once from the float weight with its per-channel
    ``weight_scale`` (out,); forward: round the input with its own scales, ``_int_mm``, rescale, add bias.
    """

    def __init__(self, layer: QuantLinear):
        super().__init__()
        w = layer.weight  # already fake-quantized: integers times its per-channel scale
        scale = (w.abs().amax(1).clamp_min(1e-12) / qmax(layer.w_bits))
        self.register_buffer("weight_int", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", layer.bias)
        self.act = layer.act
        self.in_features, self.out_features = layer.in_features, layer.out_features

    @property
    def rowwise(self) -> bool:
        """Whether an output row depends on its input row alone (see ``ViTBlock.first_token``)."""
        return self.act.rowwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.numel() == 0:
            return x.new_zeros(*lead, self.out_features)
        x2 = x.reshape(-1, x.shape[-1])
        rows_per_sample = x2.shape[0] // x.shape[0] if x.dim() > 1 else 1
        scale = act_scale(x2, self.act, rows_per_sample)
        q = qmax(self.act.bits)
        # x / scale as fake quantization divides (not x * (1/scale)), so the integers are the same
        xq = torch.div(x2, scale).round_().clamp_(-q, q).to(torch.int8)
        m = xq.shape[0]
        if xq.is_cuda and m <= 16:  # the CUDA kernel wants more than 16 rows: pad with zero rows
            xq = F.pad(xq, (0, 0, 0, 17 - m))
        acc = torch._int_mm(xq, self.weight_int.t())[:m]
        out = acc.to(x.dtype).mul_(scale)
        out = torch.addcmul(self.bias, out, self.weight_scale) if self.bias is not None else out.mul_(self.weight_scale)
        return out.reshape(*lead, self.out_features)


class CompiledBlock(nn.Module):
    """``block`` through ``torch.compile`` (compiled on first call), eager where compiling fails."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.compiled = None
        self.failed = False

    def forward(self, x):
        if self.failed:
            return self.block(x)
        if self.compiled is None:
            self.compiled = torch.compile(self.block, dynamic=True)
        try:
            return self.compiled(x)
        except Exception as e:  # no C++ compiler, unsupported platform: same numbers, eager speed
            warnings.warn(f"quant.backend=compiled: torch.compile failed ({type(e).__name__}); running eager")
            self.failed = True
            return self.block(x)


class Backend:
    """How a quantized block computes (``quant.backend``): a class registered in
    :data:`~quee_kit.registry.QUANT_BACKENDS` under its name, whose ``convert(block)`` returns the block
    computed its way (the same numbers up to float rounding); ``numerics``: the version of its arithmetic,
    keyed into the artifacts it builds (0: none beyond the config's fields). A new backend is one such class
    in one file."""
    numerics = 0

    @classmethod
    def convert(cls, block: nn.Module) -> nn.Module:
        return block


@QUANT_BACKENDS.register("fake")
class FakeBackend(Backend):
    """Fake quantization in the forward's float dtype (``paths.dtype``), the reference: the block as :func:`~quee_kit.quant.apply_level` made it."""


@QUANT_BACKENDS.register("compiled")
class CompiledBackend(Backend):
    """The same graph through ``torch.compile``."""

    @classmethod
    def convert(cls, block: nn.Module) -> nn.Module:
        return CompiledBlock(block)


@QUANT_BACKENDS.register("int")
class IntBackend(Backend):
    """A copy whose eligible :class:`QuantLinear` layers (weights and activations of at most
    :data:`INT_MAX_BITS` bits) are :class:`IntLinear`."""
    numerics = INT_NUMERICS

    @classmethod
    def convert(cls, block: nn.Module) -> nn.Module:
        out = copy.deepcopy(block)

        def swap(mod: nn.Module):
            for name, child in mod.named_children():
                if isinstance(child, QuantLinear) and max(child.w_bits, child.act.bits) <= INT_MAX_BITS:
                    setattr(mod, name, IntLinear(child))
                else:
                    if hasattr(child, "probs_scale_from_sum"):   # the kit's attention: no second pass over
                        child.probs_scale_from_sum = True         # the probabilities for their scale
                    swap(child)

        swap(out)
        return out


@QUANT_BACKENDS.register("int-compiled")
class IntCompiledBackend(IntBackend):
    """``int``, with the rounding and rescaling around each integer product fused by ``torch.compile``."""

    @classmethod
    def convert(cls, block: nn.Module) -> nn.Module:
        return CompiledBlock(IntBackend.convert(block))


def to_backend(block: nn.Module, backend: str) -> nn.Module:
    """``block`` (a level's block from :func:`quee_kit.quant.apply_level`) computed by ``backend`` (a name in
    :data:`~quee_kit.registry.QUANT_BACKENDS`). A float block (no quantized layer) is returned unchanged by
    every backend."""
    if backend not in QUANT_BACKENDS.names():
        raise ValueError(f"quant.backend must be one of {', '.join(QUANT_BACKENDS.names())} (got {backend!r})")
    if not any(isinstance(m, QuantLinear) for m in block.modules()):
        return block
    return QUANT_BACKENDS.get(backend).convert(block)
