"""Early-exit backbones: a stem, a list of blocks, an exit head after every block.

Any backbone can be wrapped in :class:`EarlyExitModel` (stem, blocks, heads); the kit
only ever calls ``stem(x)``, ``blocks[t](h)`` and ``heads[t](h)``. The registry
:data:`BACKBONES` builds the kit's own small backbones from a :class:`ModelConfig`.
"""
from __future__ import annotations


import torch
from torch import nn

from .config_rules import ConfigError
from .gemm import Linear
from .quant import softmax_fake_quant
from .registry import BACKBONES

__all__ = ["EarlyExitModel", "ViTStem", "ViTBlock", "Attention", "ExitHead", "BACKBONES",
           "register_backbone", "build_model", "first_token_state", "stored_once", "widen", "input_dtype"]


def widen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` with its float32 parameters and buffers turned to ``dtype``, in place (``paths.dtype:
    float64``). Unlike ``module.to(dtype)`` it leaves every other dtype alone: a bf16 reference block
    (:class:`~quee_kit.quant.CastBlock`) stays bf16, integer weights stay integers. Weights already rounded to a
    level's grid are integers times a float32 scale, which float64 holds exactly."""
    for m in module.modules():
        for p in m.parameters(recurse=False):
            if p.dtype == torch.float32:
                p.data = p.data.to(dtype)
        for name, b in m.named_buffers(recurse=False):
            if b.dtype == torch.float32:
                setattr(m, name, b.to(dtype))
    return module


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in: that of its first floating-point parameter (its inputs are cast to it)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


class EarlyExitModel(nn.Module):
    """``stem`` -> ``blocks[0..L-1]``, with ``heads[t]`` reading the state after block ``t``.

    forward(x: (B, C, H, W)) -> list of L logits tensors (B, num_classes), one per exit.
    """

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], heads: list[nn.Module]):
        super().__init__()
        if len(blocks) != len(heads) or not blocks:
            raise ValueError("EarlyExitModel needs as many heads as blocks (at least one)")
        self.stem, self.blocks, self.heads = stem, nn.ModuleList(blocks), nn.ModuleList(heads)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)
        outs = []
        for block, head in zip(self.blocks, self.heads):
            h = block(h)
            outs.append(head(h))
        return outs


class ViTStem(nn.Module):
    """Patch embedding + CLS token + learned positions: (B, C, H, W) -> (B, 1 + P, D)."""

    def __init__(self, in_ch: int, img: int, patch: int, dim: int):
        super().__init__()
        if img % patch:
            raise ConfigError(f"config: model.patch must divide the image side {img} (got {patch})")
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)
        n = (img // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), t], 1) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention written out so its two matmuls can be quantized.

    ``matmul_quant`` (set by :func:`quee_kit.quant.apply_level`) quantizes q, k, the
    attention probabilities and v per sample before the matmuls; ``None`` = float. A quantizer with
    ``roles`` (:class:`quee_kit.quant_static.AttentionRoles`) gives each operand its own (``roles.q`` ...).
    ``probs_scale_from_sum`` (set by the integer backends, :func:`quee_kit.backends.to_backend`): a per-token
    quantizer takes the probabilities' scale from the softmax's sum (:func:`quee_kit.quant.softmax_fake_quant`).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self.matmul_quant = None
        self.probs_scale_from_sum = False

    def forward(self, x, first_only: bool = False):
        """(B, N, D) -> (B, N, D); ``first_only``: (B, 1, D), the output of token 0 alone (every token still
        attends, only the projection is left out for the others)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.dh)
        roles = getattr(self.matmul_quant, "roles", None)   # one quantizer per operand (static scales)
        if roles is not None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            att = roles.p(((roles.q(q) @ roles.k(k).transpose(-2, -1)) * self.dh ** -0.5).softmax(-1))
            out = (att @ roles.v(v)).transpose(1, 2).reshape(B, N, D)
            return self.proj(out[:, :1].contiguous() if first_only else out)
        mq = self.matmul_quant or (lambda t: t)
        rowwise = getattr(self.matmul_quant, "rowwise", False)   # one scale per token and head
        if rowwise and torch.compiler.is_compiling():
            # q, k and v quantized one by one are the same groups, so the same values; compiled, each is then
            # written once, straight into the layout its matmul reads (no full (B, N, 3D) copy in between)
            q, k, v = (mq(t.transpose(1, 2)) for t in qkv.unbind(2))
        else:
            # eager: the groups of q, k and v in one contiguous pass instead of three over strided views
            q, k, v = (mq(qkv) if rowwise else qkv).permute(2, 0, 3, 1, 4)
        mqkv = (lambda t: t) if rowwise else mq
        att = (mqkv(q) @ mqkv(k).transpose(-2, -1)) * self.dh ** -0.5
        if self.probs_scale_from_sum and getattr(self.matmul_quant, "token_max", False):
            att = softmax_fake_quant(att, self.matmul_quant)
        else:
            att = mq(att.softmax(-1))
        out = (att @ mqkv(v)).transpose(1, 2).reshape(B, N, D)
        # contiguous: a strided (B, 1, D) view goes through another matrix-product path, which rounds differently
        return self.proj(out[:, :1].contiguous() if first_only else out)


def stored_once(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, as a view with its own size and strides. Inside a ``torch.compile`` graph this makes the
    compiler store ``t`` (inductor materializes the input of ``as_strided`` to read its layout) instead of
    computing it again in each kernel that reads it; where the readers are one fused loop per row, the store
    is a per-row local buffer. The same values, eager or compiled."""
    return t.as_strided(t.size(), t.stride())


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1, self.fc2 = Linear(dim, mlp_ratio * dim), Linear(mlp_ratio * dim, dim)
        self.act = nn.GELU()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def mlp(self, h):
        """fc2(GELU(fc1(h))). Compiled, the GELU's output is stored once (:func:`stored_once`): a quantized fc2
        reads it twice, for each token's scale and for the rounding, and the compiler would otherwise compute
        its erf twice. The same values either way."""
        a = self.act(self.fc1(h))
        return self.fc2(stored_once(a) if torch.compiler.is_compiling() else a)

    def first_token(self, x):
        """``self(x)[:, :1]`` at a fraction of the cost: all tokens attend, then the projection, the MLP and
        the norms run on token 0 alone (what an exit that reads the CLS token needs after the last block).
        ``None`` when a layer after the attention mixes rows, e.g. a quantizer with one scale per sample
        (a layer with ``rowwise = False``): then only the full forward gives the same numbers."""
        if not all(getattr(m, "rowwise", True) for m in (self.attn.proj, self.fc1, self.fc2)):
            return None
        h = x[:, :1] + self.attn(self.norm1(x), first_only=True)
        return h + self.mlp(self.norm2(h))


class ExitHead(nn.Module):
    """LayerNorm + Linear on the CLS token: (B, N, D) -> (B, num_classes)."""
    reads_cls = True  # reads h[:, 0] only: heads-only training can cache CLS features instead of states

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, h):
        return self.fc(self.norm(h[:, 0]))


def first_token_state(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``block(h)[:, :1]``, the state an exit reading the CLS token needs after the last block: through
    ``block.first_token`` where the block has one (and it applies), else the full forward, sliced.

    Both give the same bits: every row of a linear layer, a norm and a per-token quantizer depends on that
    row alone. Only matrix products of very few rows take other kernels that round differently (on the x86 CPU
    measured, products of 1-3 rows), so the shortcut runs when the batch has at least as many samples as a sample has
    tokens: its products then have at least as many rows as the full forward of one sample has.
    """
    if h.shape[0] >= h.shape[1] and hasattr(block, "first_token"):
        out = block.first_token(h)
        if out is not None:
            return out
    return block(h)[:, :1]


def register_backbone(name: str):
    """Decorator: ``fn(model_cfg, image_shape, num_classes) -> EarlyExitModel`` is backbone ``name``
    (``model.arch``) in :data:`~quee_kit.registry.BACKBONES`."""
    return BACKBONES.register(name)


@register_backbone("vit")
def build_vit(cfg, image_shape: tuple[int, int, int], num_classes: int) -> EarlyExitModel:
    """The default small ViT (patch 7, dim 64, 6 blocks, 4 heads, MLP ratio 2 on MNIST)."""
    c, h, w = image_shape
    if h != w:
        raise ConfigError(f"config: model.arch=vit needs square images (got {h}x{w})")
    stem = ViTStem(c, h, cfg.patch, cfg.dim)
    blocks = [ViTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
    heads = [ExitHead(cfg.dim, num_classes) for _ in range(cfg.depth)]
    model = EarlyExitModel(stem, blocks, heads)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model


class MLPStem(nn.Module):
    """Flatten + Linear: (B, C, H, W) -> (B, 1, D) (one token, so heads read h[:, 0])."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.fc = nn.Linear(in_features, dim)

    def forward(self, x):
        return self.fc(x.flatten(1)).unsqueeze(1)


class ResMLPBlock(nn.Module):
    """x + fc2(GELU(fc1(LN(x)))): a residual MLP block, to show a non-attention backbone."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.norm, self.fc1, self.fc2, self.act = nn.LayerNorm(dim), nn.Linear(dim, ratio * dim), \
            nn.Linear(ratio * dim, dim), nn.GELU()

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


@register_backbone("resmlp")
def build_resmlp(cfg, image_shape: tuple[int, int, int], num_classes: int) -> EarlyExitModel:
    """A residual MLP with an exit after every block (uses dim, depth, mlp_ratio)."""
    c, h, w = image_shape
    stem = MLPStem(c * h * w, cfg.dim)
    blocks = [ResMLPBlock(cfg.dim, cfg.mlp_ratio) for _ in range(cfg.depth)]
    heads = [ExitHead(cfg.dim, num_classes) for _ in range(cfg.depth)]
    return EarlyExitModel(stem, blocks, heads)


def build_model(cfg, image_shape, num_classes: int) -> EarlyExitModel:
    """Build the backbone named by ``cfg.arch`` (a :class:`~quee_kit.config.ModelConfig`). ``cnn`` and ``timm``
    register when :mod:`quee_kit.cnn` / :mod:`quee_kit.timm_backbones` are imported (:mod:`quee_kit.prepare`
    imports both); before that, a LookupError names the module to import."""
    return BACKBONES.get(cfg.arch)(cfg, tuple(image_shape), num_classes)

