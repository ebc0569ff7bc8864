"""torchvision, imported even where its compiled ops cannot load: the real-data loaders (downloads) and the
timm backbones both need it, so it lives below both."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .config_rules import ConfigError

__all__ = ["import_torchvision"]

# Operators torchvision's Python code registers fake/autograd kernels for at import time.
_TV_OPS = ["nms", "qnms", "roi_align", "_roi_align_backward", "roi_pool", "_roi_pool_backward", "ps_roi_align",
           "_ps_roi_align_backward", "ps_roi_pool", "_ps_roi_pool_backward", "deform_conv2d",
           "_deform_conv2d_backward"]
_TV_LIB = None


def import_torchvision():
    """Import torchvision even when its compiled ops cannot load.

    A torchvision wheel built for another torch variant (the CUDA ``torchvision==0.28.0`` wheel next to
    the CPU ``torch==2.13.0`` wheel) fails at import with "operator torchvision::nms does not exist".
    The kit uses none of those ops (detection boxes, RoI pooling), only its Python parts (and timm does
    too), so their names are then declared as placeholders, with a warning, and the import goes on.
    """
    global _TV_LIB
    import importlib.util
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ConfigError("config: model.arch: timm backbones and data.download need torchvision "
                          "(pip install torchvision==0.28.0 timm)")
    lib = Path(spec.origin).parent / "_C.so"
    # only where the extension is there and fails to load (elsewhere torchvision loads it as usual)
    if _TV_LIB is None and lib.is_file() and not hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.load_library(str(lib))
        except (OSError, RuntimeError) as e:
            warnings.warn(f"torchvision's compiled ops do not load with this torch ({str(e)[:80]}...); "
                          f"using its Python parts only (a torchvision build matching torch fixes this)",
                          stacklevel=2)
            _TV_LIB = torch.library.Library("torchvision", "DEF")
            for name in _TV_OPS:
                _TV_LIB.define(f"{name}(Tensor[] args) -> Tensor")
    import torchvision
    return torchvision
