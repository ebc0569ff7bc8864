"""What the MLP error predictor is fitted to and on which rows: soft targets by discretization (k-means
cells or k nearest neighbours per (depth, level), shrunk toward the group mean; :mod:`quee_kit.predictors`
explains why), depth-balanced row weights, an even row share per depth, and samples held out whole."""
from __future__ import annotations

import numpy as np

from .calibrated import cell_sums

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["discretized_targets", "depth_balanced_weights", "subsample_by_depth", "holdout_by_sample"]


def discretized_targets(Z: np.ndarray, wrong: np.ndarray, group: np.ndarray, scheme: str, K: int = 8,
                        knn_k: int = 50, prior_weight: float = 5.0, seed: int = 0) -> np.ndarray:
    """Soft targets per row and option.

    Z: (R, F) continuous features (discrete columns left out); wrong: (R, O) 0/1 errors with NaN
    where invalid; group: (R,) ids of the groups clustered separately (e.g. depth x level).
    Returns (R, O) float32 targets (NaN where invalid).
    """
    if scheme == "raw":
        return wrong.copy()
    from sklearn.cluster import KMeans              # here: importing scikit-learn takes a second, and most
    from sklearn.neighbors import NearestNeighbors  # users of this module (every notebook) never fit targets
    from threadpoolctl import threadpool_limits
    T = np.full_like(wrong, np.nan)
    # one BLAS/OpenMP thread, as every fit runs: k-means then gives the same bits on any core count, and two
    # fits side by side (one per worker) do not each start a thread per core
    with threadpool_limits(1):
        for g in np.unique(group):
            rows = np.flatnonzero(group == g)
            Zg, wrong_g = Z[rows], wrong[rows]
            Zs = (Zg - Zg.mean(0)) / (Zg.std(0) + 1e-6)
            valid = ~np.isnan(wrong_g)
            wrong0 = np.where(valid, wrong_g, 0.0)
            group_mean = wrong0.sum(0) / np.maximum(valid.sum(0), 1)
            if scheme == "kmeans":
                k = min(K, len(rows))
                fit_rows = np.random.default_rng(seed).choice(len(rows), min(len(rows), 20000), replace=False)
                km = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(Zs[fit_rows])
                cell = km.predict(Zs)
                S, C = cell_sums(cell, k, wrong0), cell_sums(cell, k, valid)   # errors, valid options per cell
                T[rows] = ((S + prior_weight * group_mean) / (C + prior_weight))[cell]
            elif scheme == "knn":
                ref = np.random.default_rng(seed).choice(len(rows), min(len(rows), 20000), replace=False)
                nn_ = NearestNeighbors(n_neighbors=min(knn_k, len(ref))).fit(Zs[ref])
                idx = nn_.kneighbors(Zs, return_distance=False)              # (R_g, k)
                T[rows] = ((wrong0[ref][idx].sum(1) + prior_weight * group_mean)
                           / (valid[ref][idx].sum(1) + prior_weight))
            else:
                raise ValueError(f"predictor.targets must be kmeans, knn or raw (got {scheme!r})")
            T[rows] = np.where(valid, T[rows], np.nan)
    return T.astype(np.float32)


def depth_balanced_weights(depth: np.ndarray, balance: str = "depth") -> np.ndarray:
    """(R,) row weights: equal total weight per depth (``depth``) or 1 per row (``none``)."""
    if balance == "none":
        return np.ones(len(depth), np.float32)
    _, inv, counts = np.unique(depth, return_inverse=True, return_counts=True)
    return (len(depth) / (len(counts) * counts[inv])).astype(np.float32)


def subsample_by_depth(depth: np.ndarray, max_rows: int, g: np.random.Generator) -> np.ndarray:
    """Row indices: every row if few enough, else an even share per depth (all rows of a small depth)."""
    if len(depth) <= max_rows:
        return np.arange(len(depth))
    depths, counts = np.unique(depth, return_counts=True)
    quota, keep, left = {}, [], max_rows
    for i in np.argsort(counts):                          # smallest depths first; leftovers go to the rest
        quota[depths[i]] = min(counts[i], left // (len(depths) - len(quota)))
        left -= quota[depths[i]]
    for t, q in quota.items():
        idx = np.flatnonzero(depth == t)
        keep.append(g.choice(idx, q, replace=False))
    return np.sort(np.concatenate(keep))


def holdout_by_sample(sample: np.ndarray, frac: float, g: np.random.Generator) -> np.ndarray:
    """(R,) bool: the rows of a random ``frac`` of the samples (every row of a held-out sample)."""
    samples = np.unique(sample)
    return np.isin(sample, g.choice(samples, max(1, int(len(samples) * frac)), replace=False))
