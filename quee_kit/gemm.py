"""Float32 products of the blocks' linear layers through oneDNN on the CPU.

PyTorch's CPU ``nn.Linear`` calls MKL's sgemm, and MKL uses its AVX-512 kernels on Intel CPUs only: on
the 2-core AMD EPYC (Zen 5) the kit is measured on, one core runs the blocks' products at about 105
GFLOP/s, while oneDNN, which PyTorch bundles and which picks its kernels by instruction set alone, runs
the same products at about 205-230 GFLOP/s (``benchmarks/bench_gemm.py``). :func:`linear` sends a float32 CPU
product of at least two rows through oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the op
PyTorch's own compiler emits for CPU linears); anything else (CUDA, bf16, one row, a graph being
compiled, a build without oneDNN, or ``QUEE_KIT_ONEDNN=0``) goes to ``F.linear`` as before.

Training takes the same route: the input gradient is a oneDNN product too, the weight and bias gradients
are the calls autograd makes for ``F.linear``. What the kit relies on, as for MKL, is that each output row
depends on its input row alone once a product has a few rows (the engine groups samples differently from
the path cache); ``tests/test_gemm.py`` checks it. On the machine above the products also round exactly as
MKL's do for the blocks' shapes, so trained weights, path caches and every table are the same bits as with
``F.linear`` there; on another CPU they may round differently, as MKL itself does between CPUs.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "linear", "onednn_available"]


def onednn_available() -> bool:
    """Whether :func:`linear` can use oneDNN here (and ``QUEE_KIT_ONEDNN`` is not ``0``)."""
    return (os.environ.get("QUEE_KIT_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_ONEDNN = onednn_available()


def _count_flops() -> None:
    """Teach ``torch.utils.flop_counter.FlopCounterMode`` the oneDNN linear (2 FLOPs per MAC, as for
    ``addmm``), so FLOP counts of the blocks stay what they were with ``F.linear``."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula
    op = torch.ops.mkldnn._linear_pointwise
    if op not in flop_registry:
        register_flop_formula(op)(lambda x_shape, w_shape, *args, out_shape=None, **kwargs:
                                  2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1])


if _ONEDNN:
    _count_flops()


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _LinearFn(torch.autograd.Function):
    """``x @ weight.T + bias`` through oneDNN; backward: the input gradient through oneDNN, the weight and
    bias gradients as autograd computes them for ``F.linear`` (``grad.T @ x``, ``grad.sum(0)``)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = _onednn(g2, weight.t(), None).view(x.shape) if ctx.needs_input_grad[0] else None
        gw = g2.t().mm(x2) if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() >= 2 * x.shape[-1] and not torch.compiler.is_compiling())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where it applies (module docstring)."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _LinearFn.apply(x, weight, bias)
    return _onednn(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose product is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
