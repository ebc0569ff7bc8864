"""Seed-level statistics and per-input precision of a method's choices (issue 29; numpy and scipy only).

- :func:`t_interval`: a 95% t-interval over per-seed paired differences, replication (the trained model) as
  the unit, beside the hierarchical bootstrap that resamples seeds and test samples;
- :func:`two_interval_verdict`: *win* / *loss* only when both intervals exclude 0 on the same side;
- :func:`precision_diversity`: how much the precision actually varies across inputs at a method's choice.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["t_interval", "two_interval_verdict", "level_table", "precision_diversity"]


def t_interval(per_seed: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-seed paired differences ``per_seed`` (S,): mean ± t(1 − (1 − level)/2, S − 1) ·
    sd / √S with the sample sd (ddof 1). lo and hi are NaN with a single seed (no spread to measure)."""
    d = np.asarray(per_seed, dtype=float)
    if d.ndim != 1 or not len(d):
        raise ValueError(f"per_seed must be a non-empty 1-d array of per-seed differences (got shape {d.shape})")
    m = float(d.mean())
    if len(d) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(1 - (1 - level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return m, float(m - half), float(m + half)


def two_interval_verdict(boot_lo, boot_hi, t_lo, t_hi) -> str:
    """*win* when both intervals lie above 0, *loss* when both lie below, else *tie* (a NaN bound, e.g. the
    t-interval of one seed, never excludes 0)."""
    b_lo, b_hi, tl, th = (float(x) for x in (boot_lo, boot_hi, t_lo, t_hi))
    if b_lo > 0 and tl > 0:
        return "win"
    if b_hi < 0 and th < 0:
        return "loss"
    return "tie"


def level_table(paths, L: int) -> np.ndarray:
    """(n_nodes, L) int: the level index each node's path runs block t at, -1 past its depth. ``paths``: the
    tree's node paths (tuples of level indices)."""
    out = np.full((len(paths), L), -1, dtype=np.int64)
    for n, p in enumerate(paths):
        out[n, :len(p)] = p
    return out


def precision_diversity(levels: np.ndarray, node: np.ndarray) -> float:
    """Share of samples that run some block at a level other than the level most samples that ran that block
    used (a tie goes to the costlier level, the lower index). 0 for any static schedule (every sample that runs
    block t runs it at one level), whatever the exits.

    levels: (n_nodes, L) from :func:`level_table`; node: (N,) the node each sample exits at."""
    run = np.asarray(levels)[np.asarray(node)]                            # (N, L), -1 where not run
    if not len(run):
        return float("nan")
    off = np.zeros(len(run), dtype=bool)
    for t in range(run.shape[1]):
        ran = run[:, t] >= 0
        if ran.any():
            mode = np.bincount(run[ran, t]).argmax()                      # first maximum: the costlier level
            off |= ran & (run[:, t] != mode)
    return float(off.mean())
