"""Static (deployment-style) activation scales: ``quant.act_scale: static``.

Int8 deployment calibrates one activation scale per tensor once and keeps it for every input, so an
input with unusually large activations clips and one with small activations loses resolution. Here
each activation quantization point of a block gets one scale per tensor:

- the input of every quantized ``Linear``/``Conv2d`` (the key is the layer's name inside the block,
  e.g. ``attn.qkv``, ``attn.proj``, ``fc1``, ``fc2``: fc2's input is the GELU output);
- q, k and v of an attention whose matmuls are quantized (``attn.q``, ``attn.k``, ``attn.v``); the
  attention probabilities use the fixed scale ``1 / qmax`` (they lie in [0, 1]; a percentile scale
  rounds most of them to zero at 4 bits);
- with ``quant.residual`` the block's input, the residual stream (``input``; block 1's is the stem
  output, with its own scale).

:func:`calibrate_static` measures, once per (model, data), the ``percentile`` of |x| at every point on
the FLOAT model over the first ``samples`` train samples (:class:`StaticScales`, the path caches' and
the predictors' key through :meth:`StaticScales.digest`); at a level with ``a_bits`` the scale is
``amax / qmax(a_bits)`` (:func:`act_scales_for`). :func:`apply_level_static` builds a block whose
quantizers hold those fixed scales (:class:`StaticActQuant`), so the path cache and the engine, which run
the same blocks, use exactly the same scales, and a sample's output never depends on its batch-mates.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .digests import content_hash
from .quant import FLOAT_BITS, Level, QuantConv2d, QuantLinear, ResidualQuant, deployed, parse_level, qmax

__all__ = ["StaticActQuant", "AttentionRoles", "StaticScales", "calibrate_static", "act_scales_for",
           "apply_level_static", "quantize_residual_static", "INPUT_POINT", "ATTENTION_ROLES"]

INPUT_POINT = "input"          # the block's input (the residual stream), quantized with quant.residual
ATTENTION_ROLES = ("q", "k", "v")


@dataclass(frozen=True)
class StaticActQuant:
    """Symmetric fake quantization at ``bits`` with one fixed ``scale`` for every input:
    ``clamp(round(x / scale), -qmax, qmax) * scale`` (float passthrough for bits >= FLOAT_BITS)."""
    bits: int
    scale: float
    granularity: str = field(default="static", init=False)
    clip_percentile: None = field(default=None, init=False)

    @property
    def rowwise(self) -> bool:
        """A fixed scale: every value's quantization depends on that value alone."""
        return True

    @property
    def token_max(self) -> bool:
        return False

    def scale_for(self, x: torch.Tensor) -> torch.Tensor:
        """The scale this quantizer uses on ``x``: the fixed one, whatever ``x`` is (0-dim, x's dtype)."""
        return torch.tensor(self.scale, dtype=x.dtype, device=x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= FLOAT_BITS:
            return x
        q = qmax(self.bits)
        s = self.scale_for(x)
        return (x / s).round_().clamp_(-q, q).mul_(s)


@dataclass(frozen=True)
class AttentionRoles:
    """One quantizer per operand of the attention matmuls (set as an attention's ``matmul_quant``; the
    attention looks for ``roles``): q, k, the probabilities ``p`` and v."""
    q: object
    k: object
    p: object
    v: object

    @property
    def roles(self) -> "AttentionRoles":
        return self

    @property
    def rowwise(self) -> bool:
        return all(getattr(m, "rowwise", True) for m in (self.q, self.k, self.p, self.v))

    @property
    def token_max(self) -> bool:
        return False


@dataclass
class StaticScales:
    """The calibrated ``percentile`` of |x| at every point of every block: ``amax[t][point]`` (t 0-based),
    measured on the float model over the first ``samples`` train samples."""
    amax: list[dict[str, float]]
    percentile: float
    samples: int

    def digest(self) -> str:
        """What every artifact built with these scales adds to its key."""
        return content_hash("static-scales", self.amax, self.percentile, self.samples)

    def to_payload(self) -> dict:
        return {"amax": [dict(d) for d in self.amax], "percentile": float(self.percentile), "samples": int(self.samples)}

    @classmethod
    def from_payload(cls, p: dict) -> "StaticScales":
        return cls([{str(k): float(v) for k, v in d.items()} for d in p["amax"]], float(p["percentile"]),
                   int(p["samples"]))


def act_scales_for(scales: StaticScales, level: Level | str, block: int) -> dict[str, float]:
    """The fixed scale of every activation point of block ``block`` (0-based) at ``level``:
    ``amax / qmax(a_bits)`` (float32-rounded), plus ``attn.p`` (any attention's probabilities) at
    ``1 / qmax``. Empty for a float level (nothing is quantized)."""
    level = parse_level(level)
    if level.a_bits >= FLOAT_BITS:
        return {}
    q = qmax(level.a_bits)
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731  the value the kernels use
    out = {k: f32(max(v, 1e-12) / q) for k, v in scales.amax[block].items()}
    out["probs"] = f32(1.0 / q)
    return out


def _percentile(a: torch.Tensor, percentile: float) -> float:
    """``torch.quantile(a, percentile / 100)`` (linear interpolation) for a tensor of any size."""
    a = a.flatten()
    n = a.numel()
    pos = percentile / 100.0 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    vlo = float(torch.kthvalue(a, lo + 1).values)
    vhi = float(torch.kthvalue(a, hi + 1).values) if hi != lo else vlo
    return vlo + (pos - lo) * (vhi - vlo)


class _Recorder:
    """Passes ``x`` through unchanged, keeping |x| (attention operands while calibrating)."""

    def __init__(self, store: list):
        self.store = store

    rowwise = True
    token_max = False

    def __call__(self, x):
        self.store.append(x.detach().abs().flatten().cpu())
        return x


@torch.no_grad()
def calibrate_static(model: nn.Module, x: torch.Tensor, percentile: float, batch_size: int = 500,
                     device: str = "cpu", residual: bool = False) -> StaticScales:
    """The ``percentile`` of |x| at every quantization point of every block of the float ``model`` (an
    :class:`~quee_kit.models.EarlyExitModel`) over the samples ``x``, block by block (only one block's
    activations are held at a time). ``residual``: the block inputs too."""
    model.eval()
    h = torch.cat([model.stem(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    amax: list[dict[str, float]] = []
    for block in model.blocks:
        block = deployed(copy.deepcopy(block).eval())   # the form the levels quantize (names as they see them)
        store: dict[str, list] = {}
        hooks, saved = [], []
        for name, mod in block.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                hooks.append(mod.register_forward_pre_hook(
                    lambda m, args, name=name: store.setdefault(name, []).append(args[0].detach().abs().flatten().cpu())))
            if hasattr(mod, "matmul_quant"):
                pre = f"{name}." if name else ""
                rec = {r: _Recorder(store.setdefault(pre + r, [])) for r in ATTENTION_ROLES}
                saved.append((mod, mod.matmul_quant))
                mod.matmul_quant = AttentionRoles(rec["q"], rec["k"], lambda t: t, rec["v"])
        try:
            out = []
            for i in range(0, len(h), batch_size):
                hb = h[i:i + batch_size].to(device)
                if residual:
                    store.setdefault(INPUT_POINT, []).append(hb.abs().flatten().cpu())
                out.append(block(hb).cpu())
        finally:
            for hk in hooks:
                hk.remove()
            for mod, mq in saved:
                mod.matmul_quant = mq
        amax.append({k: _percentile(torch.cat(v), percentile) for k, v in sorted(store.items())})
        h = torch.cat(out)
    return StaticScales(amax, float(percentile), len(x))


def apply_level_static(block: nn.Module, level: Level | str, scales: dict[str, float],
                       quantize_attention: bool = True) -> nn.Module:
    """A quantized copy of ``block`` at ``level`` with the fixed activation ``scales`` of
    :func:`act_scales_for` (the original is untouched): every ``Linear``/``Conv2d`` gets its weight
    quantized per output channel (as :func:`~quee_kit.quant.apply_level`) and its input quantized with the
    scale of its name; an attention's matmuls get q, k, v at theirs and the probabilities at ``1 / qmax``
    (float when not ``quantize_attention``). A float level returns a plain copy."""
    level = parse_level(level)
    out = deployed(copy.deepcopy(block).eval())   # as apply_level: e.g. a CNN block's BatchNorms folded
    if not level.is_float:
        def act(name: str):
            if name not in scales:
                raise KeyError(f"no static activation scale for {name!r} (calibrated: {sorted(scales)})")
            return StaticActQuant(level.a_bits, scales[name])

        for name, mod in list(out.named_modules()):
            pre = f"{name}." if name else ""
            for cname, child in list(mod.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(mod, cname, QuantLinear(child, level.w_bits, act(pre + cname)))
                elif isinstance(child, nn.Conv2d):
                    setattr(mod, cname, QuantConv2d(child, level.w_bits, act(pre + cname)))
            if hasattr(mod, "matmul_quant"):
                mod.matmul_quant = (AttentionRoles(act(pre + "q"), act(pre + "k"), act("probs"), act(pre + "v"))
                                    if quantize_attention and level.a_bits < FLOAT_BITS else None)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def quantize_residual_static(block: nn.Module, level: Level | str, scales: dict[str, float]) -> nn.Module:
    """``block`` with its input (the residual stream) quantized at the fixed scale ``scales["input"]``
    (:func:`~quee_kit.quant.quantize_residual` with a static scale); a float level returns ``block``."""
    level = parse_level(level)
    if level.a_bits >= FLOAT_BITS:
        return block
    return ResidualQuant(block, StaticActQuant(level.a_bits, scales[INPUT_POINT])).eval()
