"""The QuEE variants a study runs: name -> (predictor overrides, option restriction). Plain data, imported by
the config check (``eval.variants``) and by the study that builds them, so neither imports the other.

"quee" uses the config's predictor as it is. More MLP ablations (no history, one MLP per depth, k-NN
targets, K sweep): :func:`quee_kit.analysis.target_variants`.

``OPT_IN_VARIANTS`` run only when named in ``eval.variants`` (a default run, ``variants: null``, runs
``QUEE_VARIANTS``): ``quee-probe`` buys a probe of the next block at the cheapest level before each decision
(:mod:`quee_kit.probe`; its predictor is ``platt`` with ``probe``).
"""
from __future__ import annotations

__all__ = ["QUEE_VARIANTS", "OPT_IN_VARIANTS", "ALL_VARIANTS"]

QUEE_VARIANTS = {
    "quee": ({}, "all"),
    "quee-binned": ({"kind": "binned"}, "all"),
    "quee-mlp": ({"kind": "mlp"}, "all"),
    "quee-raw": ({"kind": "mlp", "targets": "raw"}, "all"),
    "quee-exit-only": ({}, "exit-only"),
    "quee-quant-only": ({}, "quant-only"),
}
OPT_IN_VARIANTS = {
    "quee-probe": ({"probe": True}, "all"),
}
ALL_VARIANTS = {**QUEE_VARIANTS, **OPT_IN_VARIANTS}
