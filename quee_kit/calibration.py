"""Calibration of predicted probabilities (numpy only: the figures import it without torch)."""
from __future__ import annotations

import numpy as np

__all__ = ["calibration_bins", "expected_calibration_error"]


def calibration_bins(p: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """(R,) index of the equal-width bin of [0, 1] each predicted probability falls in (1.0 in the last)."""
    return np.minimum((np.asarray(p) * n_bins).astype(int), n_bins - 1)


def expected_calibration_error(p: np.ndarray, wrong: np.ndarray, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-width bins of the predicted probability ``p`` against the 0/1 errors
    ``wrong``: the row-weighted mean over bins of |observed error rate - mean prediction|."""
    bins = calibration_bins(p, n_bins)
    return float(sum(abs(wrong[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean()
                     for b in range(n_bins) if (bins == b).any()))
