"""What stage one hands to the science above it: the data, the trained model, the levels, the costs, the
path tree, each level's blocks and the path cache of each split (:func:`quee_kit.prepare.prepare` builds
it). A plain value: the study and the engine read its pieces without importing stage one or the store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # the pieces' types, for readers and checkers only
    import torch

    from .config import Config
    from .costs import CostModel
    from .data import Dataset
    from .models import EarlyExitModel
    from .paths import PathCache, PathTree
    from .quant import Level
    from .quant_static import StaticScales

__all__ = ["Prepared"]


@dataclass
class Prepared:
    """Everything downstream stages need. ``levels[0]`` is the reference; ``qblocks[q][t - 1]`` is
    block ``t`` (1-based depth) at ``levels[q]``; ``caches`` maps split name -> :class:`PathCache`. ``model``
    and ``qblocks`` compute in ``paths.dtype`` (float32, or float64: cast inputs to it)."""
    cfg: Config
    data: Dataset
    model: EarlyExitModel
    levels: list[Level]
    costs: CostModel
    tree: PathTree
    qblocks: dict[int, list[torch.nn.Module]]
    caches: dict[str, PathCache] = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    model_hash: str = ""
    model_source: str = ""   # "shipped model" (quee_kit/embedded/models) or "trained here"
    act_scales: StaticScales | None = None   # quant.act_scale static: the calibrated scales (None: dynamic)
    # the quee_kit.store.Store where this stage's artifacts (and the study's built on it) live: carried for
    # the orchestration that loads and stores them, read by no science module
    store: Any = None

    @property
    def ref(self) -> Level:
        return self.levels[0]
