"""The budget rule shared by every method, baseline and the explorer (numpy only, no torch).

It lives apart from :mod:`quee_kit.policy` so that the explorer page can apply it to stored
points without importing torch (which alone takes seconds to import on a 2-core machine).
"""
from __future__ import annotations

import numpy as np

__all__ = ["select_for_budget"]


def select_for_budget(costs: np.ndarray, accs: np.ndarray, budget: float) -> tuple[int, bool]:
    """The rule every method uses for its knob: best calib accuracy with calib cost <= budget
    (ties: lower cost). Returns (index, feasible); infeasible budgets get the cheapest knob."""
    if budget <= 0:
        raise ValueError(f"budget must be > 0 (got {budget})")
    costs, accs = np.asarray(costs), np.asarray(accs)
    ok = np.flatnonzero(costs <= budget + 1e-12)
    if not len(ok):
        return int(costs.argmin()), False
    best = ok[np.lexsort((costs[ok], -accs[ok]))[0]]
    return int(best), True
