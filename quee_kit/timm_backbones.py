"""Pretrained timm ViT / DeiT backbones as the kit's :class:`~quee_kit.models.EarlyExitModel`.

Any timm ``VisionTransformer`` (``vit_*``, ``deit_*``; class token, no distillation token) becomes:

- stem   = resize to the backbone's input size + its own mean/std normalization (both from
  timm's ``resolve_data_config``, i.e. the weights' pretrained config) + patch embedding +
  class token + position embedding;
- blocks = ``model.blocks``, each attention rewritten as the kit's :class:`~quee_kit.models.Attention`
  (same ``qkv``/``proj`` layers, explicit matmuls) so that the quantizer, the BOPs model and
  ``FlopCounterMode`` see its two matmuls;
- heads  = LayerNorm + Linear on the CLS token after every block but the last; the last exit is the
  model's own ``norm`` (+ ``fc_norm``) + ``head``. When the dataset has as many classes as that head
  and it came with weights, it is kept as is (frozen); otherwise it is re-initialized and trained.

Weights: ``model.pretrained: true`` asks timm (its hub cache, or the network), ``model.checkpoint: PATH``
reads a local ``.pth``/``.pt``/``.safetensors`` state dict, checked against the architecture with one
clear line. ``model.timm_shape: config`` builds timm's class with the kit's own ``patch``, ``dim``,
``depth``, ``heads``, ``mlp_ratio`` and the dataset's image size (tiny models for tests and CPU runs).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config_rules import ConfigError
from .vision_import import import_torchvision  # noqa: F401  (re-exported)
from .models import Attention, EarlyExitModel, ExitHead, register_backbone

__all__ = ["import_timm", "import_torchvision", "timm_input_config", "TimmStem", "TimmAttention",
           "TimmFinalHead", "build_timm", "read_checkpoint", "load_checkpoint"]

def import_timm():
    import_torchvision()
    import timm
    return timm


def timm_input_config(cfg) -> dict:
    """The backbone's own eval transform (input_size, interpolation, mean, std, crop_pct), from timm's
    pretrained config of ``cfg.timm_name`` without building the model."""
    timm = import_timm()
    from timm.data import resolve_data_config
    try:
        pcfg = timm.models.get_pretrained_cfg(cfg.timm_name)
    except Exception:  # noqa: BLE001 - an unknown name is reported by build_timm
        pcfg = None
    return resolve_data_config(pretrained_cfg=pcfg.to_dict() if pcfg is not None else {})


class TimmStem(nn.Module):
    """(B, C, H, W) in [0, 1] -> resize to ``input_size`` -> normalize -> patches + CLS + positions."""

    def __init__(self, vit: nn.Module, input_size: int, mean, std, interpolation: str):
        super().__init__()
        self.patch_embed, self.norm_pre = vit.patch_embed, vit.norm_pre
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed
        self.no_embed_class = bool(getattr(vit, "no_embed_class", False))
        self.input_size = int(input_size)
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                              align_corners=False if self.interpolation != "nearest" else None)
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)  # grayscale data into an RGB backbone
        t = self.patch_embed((x - self.mean) / self.std)
        cls = self.cls_token.expand(len(t), -1, -1)
        t = torch.cat([cls, t + self.pos_embed], 1) if self.no_embed_class else \
            torch.cat([cls, t], 1) + self.pos_embed
        return self.norm_pre(t)


class TimmAttention(Attention):
    """timm's ``Attention`` with the kit's explicit (quantizable, countable) matmuls; same weights."""

    def __init__(self, attn: nn.Module):
        nn.Module.__init__(self)
        self.heads, self.dh = attn.num_heads, attn.head_dim
        self.qkv, self.proj = attn.qkv, attn.proj
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.out_norm = getattr(attn, "norm", nn.Identity())
        self.scale = attn.scale
        self.matmul_quant = None

    def forward(self, x, attn_mask=None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ValueError("TimmAttention: attention masks are not supported (image classification only)")
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        mq = self.matmul_quant or (lambda t: t)
        att = ((mq(q) * self.scale) @ mq(k).transpose(-2, -1)).softmax(-1)
        out = (mq(att) @ mq(v)).transpose(1, 2).reshape(B, N, self.heads * self.dh)
        return self.proj(self.out_norm(out))


class TimmFinalHead(nn.Module):
    """The model's own final norm (+ fc_norm) and classifier on the CLS token: (B, N, D) -> (B, classes)."""
    reads_cls = True

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.norm, self.fc_norm, self.head = vit.norm, vit.fc_norm, vit.head

    def forward(self, h):
        return self.head(self.fc_norm(self.norm(h[:, 0])))


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):  # common training-script wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"config: model.checkpoint: {path} holds no state dict")
    return sd


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        return _read_state_dict(path)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"config: model.checkpoint: cannot read {path} ({type(e).__name__}: {e})") from None


def load_checkpoint(vit: nn.Module, sd: dict, path: str | Path, name: str) -> None:
    """Load state dict ``sd`` (read from ``path``) into ``vit``; any missing, unexpected or mis-shaped key
    is one clear error."""
    own = vit.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else ""]
        raise ConfigError(f"config: model.checkpoint: {path} does not fit timm model {name!r}: "
                          + ", ".join(p for p in parts if p))
    vit.load_state_dict(sd, strict=True)


def _create(cfg, image_shape, num_classes: int | None):
    """timm's model; ``num_classes`` None keeps the classifier of its pretrained config."""
    timm = import_timm()
    kwargs = {}
    if cfg.timm_shape == "config":
        kwargs = dict(img_size=image_shape[-1], patch_size=cfg.patch, embed_dim=cfg.dim, depth=cfg.depth,
                      num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, in_chans=3)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if not timm.is_model(cfg.timm_name.split(".")[0]):
        raise ConfigError(f"config: model.timm_name: unknown timm model {cfg.timm_name!r} "
                          f"(e.g. vit_small_patch16_224, deit_tiny_patch16_224)")
    try:
        return timm.create_model(cfg.timm_name, pretrained=cfg.pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if not cfg.pretrained:
            raise
        # hub errors (offline, not cached, no network) are OSError subclasses: say what to do in one line
        raise ConfigError(f"config: model.pretrained: cannot get the weights of {cfg.timm_name!r} from timm's "
                          f"hub cache or the network ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          f"fetch them once where there is network, or set model.pretrained: false and "
                          f"model.checkpoint: PATH") from None


@register_backbone("timm")
def build_timm(cfg, image_shape: tuple[int, int, int], num_classes: int) -> EarlyExitModel:
    """Wrap ``timm.create_model(cfg.timm_name)`` as an early-exit model (see the module docstring)."""
    sd = read_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    # A checkpoint brings its own classifier (its head rows), timm weights their pretrained one.
    own_classes = (sd["head.weight"].shape[0] if "head.weight" in sd else 0) if sd is not None else \
        (None if cfg.pretrained else num_classes)
    vit = _create(cfg, image_shape, own_classes)
    from timm.data import resolve_data_config
    if not hasattr(vit, "blocks") or getattr(vit, "cls_token", None) is None or vit.global_pool != "token" \
            or getattr(vit, "dist_token", None) is not None or getattr(vit, "num_reg_tokens", 0):
        raise ConfigError(f"config: model.timm_name: {cfg.timm_name!r} is not a class-token VisionTransformer "
                          f"(ViT/DeiT without distillation or register tokens)")
    if sd is not None:
        load_checkpoint(vit, sd, cfg.checkpoint, cfg.timm_name)
    has_weights = cfg.pretrained or cfg.checkpoint is not None
    keep_head = has_weights and getattr(vit, "num_classes", 0) == num_classes
    if vit.num_classes != num_classes:
        vit.reset_classifier(num_classes)
    dc = resolve_data_config({}, model=vit)
    size = vit.patch_embed.img_size[-1] if cfg.timm_shape == "config" else dc["input_size"][-1]
    stem = TimmStem(vit, size, dc["mean"], dc["std"], dc["interpolation"])
    blocks = list(vit.blocks)
    for b in blocks:
        if not hasattr(b, "attn") or not hasattr(b.attn, "qkv"):
            raise ConfigError(f"config: model.timm_name: {cfg.timm_name!r} has blocks the kit cannot quantize")
        b.attn = TimmAttention(b.attn)
    dim = vit.embed_dim
    heads = [ExitHead(dim, num_classes) for _ in blocks[:-1]] + [TimmFinalHead(vit)]
    for h in heads[:-1]:
        nn.init.trunc_normal_(h.fc.weight, std=0.02)
        nn.init.zeros_(h.fc.bias)
    if keep_head:
        for p in heads[-1].parameters():
            p.requires_grad_(False)  # the pretrained classifier is the last exit, as it came
    return EarlyExitModel(stem, blocks, heads)


# What the data loaders need from this backbone before it is built (image folders use its eval transform).
build_timm.input_config = timm_input_config
