"""The budget rule shared by every method, baseline and the explorer (numpy only, no torch).

It lives apart from :mod:`quee_kit.policy` so that the explorer page can apply it to stored
points without importing torch (which alone takes seconds to import on a 2-core machine).
"""
from __future__ import annotations

import numpy as np

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["select_for_budget", "select_points"]


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


def select_points(points, budgets) -> tuple[np.ndarray, np.ndarray]:
    """The rule on a method's points table (columns ``cost_calib, acc_calib``, one row per knob):
    (row index, feasible) per budget."""
    cc, ac = points["cost_calib"].to_numpy(), points["acc_calib"].to_numpy()
    chosen = [select_for_budget(cc, ac, float(b)) for b in budgets]
    return np.array([i for i, _ in chosen], dtype=int), np.array([ok for _, ok in chosen], dtype=bool)
