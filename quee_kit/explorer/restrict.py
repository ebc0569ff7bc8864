"""Knob tables of methods restricted to a subset of the precision levels (the explorer's *levels*
control). Each method restricts itself (``Method.restrict``); this module only recomputes its points.
Needs the live study (torch); imported only when a level subset is first chosen.
"""
from __future__ import annotations

from ..methods import scalar_knob
from ..study import method_points
from .points import MethodTable

__all__ = ["restricted_table"]


def restricted_table(study, name: str, level_set: tuple[int, ...], full: MethodTable) -> MethodTable:
    """``full`` (the all-levels table of method ``name``) restricted to ``level_set``: points
    recomputed on the restricted method (seconds), test nodes computed per knob on demand."""
    m = study.methods[name].restrict(level_set)
    return MethodTable(name, method_points(m), [tuple(k) for k in m.knobs], tuple(m.knob_fields), scalar_knob(m),
                       full.err_key, nodes=None, method=m)
