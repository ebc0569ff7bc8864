"""The explorer's numbers, without widgets: one operating point in, everything shown out.

:class:`OperatingPoint` is the one source of truth of the page (mode, budget, λ, method, level set,
entry); every control is derived from it. :meth:`ExplorerModel.normalize` maps any requested point
to a valid one, so no combination of controls reaches a dead state: a method without λ is shown in
budget mode, λ snaps to the study's λ grid (the knobs whose points were computed), a λ-mode entry
outside the level set falls back to the budget rule's entry. :meth:`ExplorerModel.resolve` applies
the budget rule shared with every method (:func:`quee_kit.budget_rule.select_for_budget`, best calib
accuracy within the budget) or, in λ mode, looks the knob up in the method's table; the test
numbers then come from that table (the same numbers as ``Study.points``). numpy and pandas only:
no torch, no matplotlib, no ipywidgets.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..budget_rule import select_points

__all__ = ["OperatingPoint", "ExplorerModel", "Memo", "level_set_presets", "budget_slider_range", "chosen_points",
           "select_points", "exit_level_counts", "exit_errors", "examples_per_exit", "MAX_BUDGET"]

MAX_BUDGET = 0.3   # above c_sat every method is flat; the slider stops here at the latest


@dataclass(frozen=True)
class OperatingPoint:
    """What the page shows. ``budget``: normalized BOPs; ``lam``: a value of the λ grid; ``entry``: a
    level name (λ mode of the QuEE variants) or None (the budget rule's entry)."""
    mode: str = "budget"
    budget: float = 0.05
    lam: float = 0.0
    method: str = "quee"
    level_set: str = ""
    entry: str | None = None

    def replace(self, **kw) -> "OperatingPoint":
        return dataclasses.replace(self, **kw)


class Memo:
    """A bounded memo (least recently used first out): ``memo.get(key, build)``."""

    def __init__(self, max_items: int = 256):
        self.max_items, self.items = max_items, OrderedDict()

    def get(self, key, build: Callable):
        if key in self.items:
            self.items.move_to_end(key)
        else:
            self.items[key] = build()
            if len(self.items) > self.max_items:
                self.items.popitem(last=False)
        return self.items[key]

    def __contains__(self, key) -> bool:
        return key in self.items


def level_set_presets(level_names) -> dict[str, tuple[int, ...]]:
    """A few level subsets (indices into ``level_names``, 0 = reference), every one with the reference:
    all, reference + cheapest, reference + the two 8-bit-activation levels nearest it, reference only."""
    names, n = list(level_names), len(level_names)
    presets = {f"all {n} levels": tuple(range(n))}
    if n > 2:
        presets[f"{names[0]} + cheapest ({names[-1]})"] = (0, n - 1)
    mid = (0,) + tuple(i for i in range(1, n - 1) if names[i].endswith("a8"))[:2]
    if 2 < len(mid) < n:
        presets[", ".join(names[i] for i in mid)] = mid
    if n > 1:
        presets[f"{names[0]} only"] = (0,)
    return presets


def budget_slider_range(c_min: float, b_max: float, budget: float) -> tuple[float, float, float]:
    """(lo, hi, step) in log10 of the budget slider: a grid of about 0.005 decades from ``c_min``
    through ``budget`` (so the initial budget is a grid point, not snapped to a neighbour), its last
    point the first at or above ``b_max``. Budgets: normalized BOPs."""
    lo, lb, hi = np.log10([c_min, np.clip(budget, c_min, b_max), b_max])
    step = (lb - lo) / max(round((lb - lo) / 0.005), 1) if lb > lo else 0.005
    return float(lo), float(lo + step * np.ceil((hi - lo) / step - 1e-9)), float(step)


def chosen_points(points: pd.DataFrame, budgets) -> pd.DataFrame:
    """For each budget, the knob row the calib rule picks and its test point (one method, one level
    set; :func:`quee_kit.analysis.budget_curve` is the same over the seeds of live studies)."""
    idx, _ = select_points(points, budgets)
    return pd.DataFrame({"budget": np.asarray(budgets, float), "knob": idx,
                         "cost": points["cost_test"].to_numpy()[idx],
                         "accuracy": points["acc_test"].to_numpy()[idx]})


# ------------------------------------------------------------------- per-sample views

def exit_level_counts(node: np.ndarray, depth: np.ndarray, level: np.ndarray, level_names) -> pd.DataFrame:
    """(L, n_levels) counts of samples by exit (rows 1..L) and level of the last block run (columns).
    node: (N,) final node per sample; depth (1-based), level: (n_nodes,) of the path tree."""
    node = np.asarray(node)
    L = int(depth.max())
    counts = np.zeros((L, len(level_names)), dtype=int)
    np.add.at(counts, (depth[node] - 1, level[node]), 1)
    return pd.DataFrame(counts, index=pd.RangeIndex(1, L + 1, name="exit"),
                        columns=pd.Index(list(level_names), name="level"))


def exit_errors(node: np.ndarray, err_hat: np.ndarray | None, exit_option: np.ndarray,
                max_prob: np.ndarray) -> np.ndarray:
    """(N,) predicted error of exiting at each sample's final node.

    err_hat: (n_nodes, N, O) predicted error probabilities (or None); exit_option: (n_nodes,) the
    exit-now option of each node; max_prob: (n_nodes, N) the exit head's max softmax. The
    predictor is not consulted at the last exit (NaN there), so ``1 - max prob`` stands in.
    """
    node = np.asarray(node)
    i = np.arange(len(node))
    fallback = 1.0 - max_prob[node, i]
    if err_hat is None:
        return fallback
    e = err_hat[node, i, exit_option[node]]
    return np.where(np.isfinite(e), e, fallback)


def examples_per_exit(node: np.ndarray, depth: np.ndarray, k: int, err_hat: np.ndarray) -> dict[int, np.ndarray]:
    """Up to ``k`` test sample indices per exit (1..L), spread evenly over the exit's predicted
    errors ``err_hat`` (lowest first), so each row shows confident and doubtful inputs alike."""
    d = depth[np.asarray(node)]
    out = {}
    for t in range(1, int(depth.max()) + 1):
        idx = np.flatnonzero(d == t)
        order = idx[np.argsort(err_hat[idx], kind="stable")]
        if len(order) > k:
            order = order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]
        out[t] = order
    return out


# ------------------------------------------------------------------------------ model

class ExplorerModel:
    """Operating points -> numbers, over an :class:`~quee_kit.explorer.points.ExplorerData`.

    ``data.table(method, level_set)`` gives a method's knob table (points, knobs, test nodes);
    tables of a level subset are built by ``data`` on first use (see ``restrict_to``) and memoized.
    """

    def __init__(self, data, methods: list[str] | None = None, budget: float = 0.05):
        self.data = data
        self.names = list(methods or data.methods)
        unknown = [m for m in self.names if m not in data.methods]
        if unknown:
            raise ValueError(f"methods: unknown {unknown} (known: {', '.join(data.methods)})")
        self.level_sets = level_set_presets(data.level_names)
        self.b_min = data.c_min
        sat = [float(data.methods[m].points["cost_calib"].iloc[select_points(data.methods[m].points, [1.0])[0][0]])
               for m in self.names]      # the budget above which a method's choice no longer changes
        self.budget_range = budget_slider_range(data.c_min, float(np.clip(max(sat) * 1.05, 2 * data.c_min,
                                                                             MAX_BUDGET)), budget)
        # the state's range is the slider's (log10 grid through ``budget``), computed here once, so a page
        # and a model built on the same data clip a budget to the same maximum
        self.b_max = float(10 ** self.budget_range[1])
        # [c_min, the costliest knob of any method on test]: the explorer's one cost axis (normalized BOPs)
        self.cost_range = (float(data.c_min), max(float(data.methods[m].points["cost_test"].max())
                                                  for m in self.names))
        self._tables = Memo(64)
        self._views = Memo(512)

    # ------------------------------------------------------------------ tables, names
    def level_set_name(self, level_set) -> str:
        """A preset name, or a new named set for a tuple of level indices (validated)."""
        if isinstance(level_set, str):
            if level_set not in self.level_sets:
                raise ValueError(f"level_set: unknown {level_set!r} (known: {', '.join(self.level_sets)})")
            return level_set
        qs = tuple(sorted({int(q) for q in level_set}))
        for name, s in self.level_sets.items():
            if s == qs:
                return name
        n = len(self.data.level_names)
        if not qs or min(qs) < 0 or max(qs) >= n:
            raise ValueError(f"level_set: level indices must be in 0..{n - 1} (got {qs})")
        name = ", ".join(self.data.level_names[q] for q in qs)
        self.level_sets[name] = qs
        return name

    def table(self, method: str, level_set: str):
        if method not in self.names:
            raise ValueError(f"method: unknown {method!r} (known: {', '.join(self.names)})")
        qs = self.level_sets[self.level_set_name(level_set)]
        return self._tables.get((method, qs), lambda: self.data.table(method, qs))

    def has_lambda(self, method: str) -> bool:
        return self.data.methods[method].has_lambda

    # ---------------------------------------------------------------- the one state
    def initial(self, budget: float = 0.05, method: str = "quee") -> OperatingPoint:
        method = method if method in self.names else self.names[0]
        return self.normalize(OperatingPoint(budget=budget, method=method, level_set=next(iter(self.level_sets))))

    def snap_lambda(self, lam: float) -> float:
        """The λ of the grid nearest to ``lam`` (log scale; 0 is its own point)."""
        grid = self.data.lambdas
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lambda must be a finite float >= 0 (got {lam})")
        pos = grid[grid > 0]
        if not len(pos) or lam <= 0 or (grid.min() == 0 and lam < pos.min() / 2):
            return float(grid.min())
        return float(pos[np.argmin(np.abs(np.log(pos) - np.log(lam)))])

    def normalize(self, p: OperatingPoint) -> OperatingPoint:
        """The valid point closest to ``p``: every control combination maps to a state that shows something."""
        if p.mode not in ("budget", "lambda"):
            raise ValueError(f"mode must be 'budget' or 'lambda' (got {p.mode!r})")
        level_set = self.level_set_name(p.level_set or next(iter(self.level_sets)))
        tab = self.table(p.method, level_set)
        budget = float(np.clip(p.budget, self.b_min, self.b_max))
        mode = p.mode if tab.has_lambda else "budget"
        entry = p.entry
        if mode == "lambda" and tab.has_entry:
            allowed = [self.data.level_names[q] for q in self.level_sets[level_set]]
            if entry not in allowed:      # e.g. a new level set: start from the budget rule's entry
                entry = tab.describe(tab.knobs[select_points(tab.points, [budget])[0][0]])["entry"]
        return p.replace(mode=mode, budget=budget, lam=self.snap_lambda(p.lam), level_set=level_set,
                         entry=entry if mode == "lambda" and tab.has_entry else None)

    def enter_lambda_mode(self, p: OperatingPoint) -> OperatingPoint:
        """Budget -> λ mode at the same operating point: λ and entry are those the budget rule picked."""
        v = self.resolve(p)
        if not self.has_lambda(p.method):
            return p
        return self.normalize(p.replace(mode="lambda", lam=v["lambda"], entry=v["entry"] if v["has_entry"] else None))

    # ------------------------------------------------------------------- the numbers
    def resolve(self, p: OperatingPoint) -> dict:
        """Everything shown for a (normalized) point; memoized. Keys: method, mode, budget, lambda (NaN for a
        method without λ), knob_name and knob_value (its continuous knob: λ, τ, r, p; None/NaN without), entry, knob, knob_index, has_lambda, has_entry, feasible (None in λ mode), accuracy, cost (test,
        normalized BOPs), level_set, levels, n, setting, color, node ((N,) final node per test sample)."""
        p = self.normalize(p)
        return self._views.get(p, lambda: self._resolve(p))

    def _resolve(self, p: OperatingPoint) -> dict:
        tab = self.table(p.method, p.level_set)
        if p.mode == "budget":
            (i,), (ok,) = select_points(tab.points, [p.budget])
            feasible = bool(ok)
        else:
            i = tab.knob_index((self.data.level_names.index(p.entry), p.lam) if tab.has_entry else (p.lam,))
            feasible = None
        knob = tab.knobs[i]
        desc = tab.describe(knob)
        row = tab.points.iloc[i]
        value = float(desc["value"])
        return {"method": p.method, "mode": p.mode, "budget": p.budget,
                "lambda": value if tab.has_lambda else float("nan"), "knob_name": tab.knob_name, "knob_value": value,
                "entry": str(desc["entry"]), "knob": knob, "knob_index": int(i), "has_lambda": tab.has_lambda,
                "has_entry": tab.has_entry, "feasible": feasible, "accuracy": float(row["acc_test"]),
                "cost": float(row["cost_test"]), "level_set": p.level_set,
                "levels": [self.data.level_names[q] for q in self.level_sets[p.level_set]],
                "n": self.data.n_test, "setting": self.data.setting, "node": tab.test_nodes(i)}
