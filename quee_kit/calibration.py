"""Calibration and discrimination of predicted error probabilities (no torch: the figures import it)."""
from __future__ import annotations

import numpy as np

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["calibration_bins", "expected_calibration_error", "quality_metrics"]


def calibration_bins(p: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """(R,) index of the equal-width bin of [0, 1] each predicted probability falls in (1.0 in the last)."""
    return np.minimum((np.asarray(p) * n_bins).astype(int), n_bins - 1)


def expected_calibration_error(p: np.ndarray, wrong: np.ndarray, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-width bins of the predicted probability ``p`` against the 0/1 errors
    ``wrong``: the row-weighted mean over bins of |observed error rate - mean prediction|."""
    bins = calibration_bins(p, n_bins)
    return float(sum(abs(wrong[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean()
                     for b in range(n_bins) if (bins == b).any()))


def quality_metrics(p: np.ndarray, wrong: np.ndarray, conf: np.ndarray, n_bins: int = 15,
                    auroc_maxprob: float | None = None) -> dict:
    """Brier, ECE and AUROC of error detection of predicted error probabilities ``p`` against the 0/1
    errors ``wrong``, beside the AUROC of plain ``1 - max prob`` (``conf``) on the same rows: computed here,
    or ``auroc_maxprob`` when the caller already has it (it does not depend on ``p``)."""
    from sklearn.metrics import roc_auc_score
    both = 0 < wrong.mean() < 1
    if auroc_maxprob is None:
        auroc_maxprob = float(roc_auc_score(wrong, 1 - conf)) if both else float("nan")
    return {"n": int(len(p)), "brier": float(((p - wrong) ** 2).mean()),
            "ece": expected_calibration_error(p, wrong, n_bins),
            "auroc": float(roc_auc_score(wrong, p)) if both else float("nan"),
            "auroc_maxprob": auroc_maxprob, "error_rate": float(wrong.mean())}
