"""The QuEE variants a study runs: name -> (predictor overrides, option restriction). Plain data, imported by
the config check (``eval.variants``) and by the study that builds them, so neither imports the other.

"quee" uses the config's predictor as it is. More MLP ablations (no history, one MLP per depth, k-NN
targets, K sweep): :func:`quee_kit.analysis.target_variants`.
"""
from __future__ import annotations

__all__ = ["QUEE_VARIANTS"]

QUEE_VARIANTS = {
    "quee": ({}, "all"),
    "quee-binned": ({"kind": "binned"}, "all"),
    "quee-mlp": ({"kind": "mlp"}, "all"),
    "quee-raw": ({"kind": "mlp", "targets": "raw"}, "all"),
    "quee-exit-only": ({}, "exit-only"),
    "quee-quant-only": ({}, "quant-only"),
}
