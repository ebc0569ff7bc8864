"""Methods restricted to a subset of the precision levels (the explorer's *levels* control).

QuEE: options whose level is outside the set are masked, entries restricted. Static, confidence and
random baselines: knobs whose level is outside the set are dropped (random routing also draws its
next level only inside the set). Oracles: only paths inside the set. Needs the live study (torch);
imported only when a level subset is first chosen.
"""
from __future__ import annotations

import copy

import numpy as np

from ..baselines import BestSingle, ConfidenceExit, Oracle, PerExitConfidence, RandomRouting, StaticQuant
from ..evaluate import method_points
from ..paths import PathTree
from ..policy import QueePolicy
from .points import MethodTable

__all__ = ["restrict_method", "restricted_table", "knob_points"]


class _LevelSubtree:
    """A :class:`PathTree` view whose child table hides the levels outside ``allowed``."""

    def __init__(self, tree: PathTree, allowed: tuple[int, ...]):
        self._tree = tree
        keep = np.isin(np.arange(len(tree.levels)), allowed)
        self._table = np.where(keep[None, :], tree.child_table(), -1)

    def child_table(self) -> np.ndarray:
        return self._table

    def __getattr__(self, name):
        return getattr(self._tree, name)


def restrict_method(method, level_set) -> object:
    """A copy of ``method`` that only runs blocks at levels in ``level_set`` (level indices)."""
    allowed = tuple(sorted(set(int(q) for q in level_set)))
    m = copy.copy(method)
    if isinstance(method, QueePolicy):
        ok = np.isin(method.opts.option_level(np.arange(method.opts.n_options)), allowed)
        m.mask = method.mask & ok[None, :]
        m.knobs = [k for k in method.knobs if k[0] in allowed]
    elif isinstance(method, Oracle):
        m.nodes = np.array([n for n in method.nodes if set(method.tree.paths[n]) <= set(allowed)], dtype=int)
    elif isinstance(method, BestSingle):
        m.knobs = [k for k in method.knobs if k[1] in allowed]
    elif isinstance(method, RandomRouting):
        m.tree = _LevelSubtree(method.tree, allowed)
        m.knobs = [k for k in method.knobs if k[0] in allowed]
    elif isinstance(method, (StaticQuant, ConfidenceExit, PerExitConfidence)):
        m.knobs = [k for k in method.knobs if k[0] in allowed]
    else:
        raise TypeError(f"cannot restrict {type(method).__name__} to a level set")
    if not len(m.knobs) or (isinstance(m, Oracle) and not len(m.nodes)):
        raise ValueError(f"{method.name} has no knob inside the level set {allowed}")
    return m


def knob_points(method):
    """Mean cost (normalized BOPs) and accuracy of every knob on calib and test: the columns of
    ``Study.points`` (``cost_calib, acc_calib, cost_test, acc_test``), one row per knob."""
    return method_points(method)


def restricted_table(study, name: str, level_set: tuple[int, ...], full: MethodTable) -> MethodTable:
    """``full`` (the all-levels table of method ``name``) restricted to ``level_set``: points
    recomputed on the restricted method (seconds), test nodes computed per knob on demand."""
    m = restrict_method(study.methods[name], level_set)
    return MethodTable(name, knob_points(m), [tuple(k) for k in m.knobs], full.has_lambda, full.has_entry,
                       full.err_key, nodes=None, method=m)
