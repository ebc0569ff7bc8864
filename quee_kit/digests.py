"""Content digests: the sha256 of a JSON rendering of values, and of a model's tensors.

Pure functions importing nothing of the package, so the science modules that fingerprint what they
compute (static activation scales, weights) need no store machinery; :mod:`quee_kit.artifacts` keys its
files with the same functions.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["content_hash", "tensor_digest"]


def content_hash(*parts: Any) -> str:
    """sha256 of a JSON rendering of ``parts`` (dataclasses/paths rendered with ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the bytes of named tensors (e.g. a model's state dict)."""
    import torch
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
