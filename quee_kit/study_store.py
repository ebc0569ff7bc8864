"""A study's evaluation, stored once: every method's points and the predictors' estimates and quality.

:func:`~quee_kit.study_run.build_study` predicts with every fitted predictor and runs every method's knobs on
calib and test (seconds to a minute per study). It stores what it computed as one artifact, and a later
call for the same study (another notebook, a re-run, the explorer) loads it instead: the same points,
estimates and quality, bit for bit (``tests/test_study_store.py``).

The estimates ``err_hat`` are held by the study as dense (n_nodes, N, O) arrays, NaN at the leaves and
at invalid options; only the valid options of the decision nodes are stored (about 8% of the dense array
for the default tree) and the rest is NaN again on loading. The key hashes the path caches' and the
predictors' keys, the variants, the λ grid, the seed, the registered methods and the ``CODE_VERSION`` of
every module that running a study imports (:mod:`quee_kit.study_run`) that declares one
(:func:`~quee_kit.store.code_versions`): a method whose
numbers change bumps its module's version and recomputes; an edit that changes no number keeps the store. A study
with a method registered from outside the kit is not stored, since its code is in no key.
"""
from __future__ import annotations

import warnings

import numpy as np

from .artifacts import ArtifactError, load_artifact, save_artifact
from .registry import METHODS
from .store import artifact_key

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["STUDY_FORMAT", "study_artifact", "load_stored_study", "store_study", "pack_estimates",
           "unpack_estimates"]

STUDY_FORMAT = 1   # bump when the stored fields change


def _pairs(opts) -> tuple[np.ndarray, np.ndarray]:
    """(node, option) of every valid option at a decision node (depth < L) of the option space ``opts``
    (:class:`~quee_kit.options.OptionSpace`: its ``valid`` mask and tree), node-major."""
    return np.nonzero(opts.valid & (opts.tree.depth < opts.tree.L)[:, None])


def pack_estimates(err_hat: np.ndarray, opts) -> np.ndarray:
    """(P, N) float32: ``err_hat`` (n_nodes, N, O) at the P valid (decision node, option) pairs."""
    node, option = _pairs(opts)
    return np.ascontiguousarray(err_hat[node, :, option], dtype=np.float32)


def unpack_estimates(values: np.ndarray, opts) -> np.ndarray:
    """The dense (n_nodes, N, O) ``err_hat`` of :func:`pack_estimates`' output, NaN everywhere else."""
    node, option = _pairs(opts)
    out = np.full((len(opts.tree.depth), values.shape[1], opts.n_options), np.nan, dtype=np.float32)
    out[node, :, option] = values
    return out


def study_artifact(prep, cache_keys: dict, predictor_keys: list, variants: dict, lambda_grid: int, seed: int,
                   code: str = "quee_kit.study_run"):
    """``(path, key)`` of a study's stored evaluation in ``prep.store``; ``(None, None)`` when a registered
    method comes from outside the kit (its code is not in the key, so its points are never reused).
    ``code``: the module whose import closure's code versions are in the key (the one that runs studies)."""
    if any(not cls.__module__.startswith("quee_kit.") for cls in METHODS.values()):
        return None, None
    key = artifact_key("study", STUDY_FORMAT, cache_keys, predictor_keys, variants, lambda_grid, seed,
                       {name: cls.__qualname__ for name, cls in METHODS.items()}, code=code)
    return prep.store.file("study", key), key


def load_stored_study(path, key, opts) -> dict | None:
    """The stored evaluation at ``path`` with the dense estimates restored, or None (none stored, or a damaged
    file: then a warning)."""
    if key is None:
        return None
    try:
        art = load_artifact(path, key)
    except ArtifactError as e:
        if path.exists():   # a damaged file is said, as for every other artifact, then replaced
            warnings.warn(f"recomputing the study: {e}", stacklevel=3)
        return None
    for fit in art["fits"].values():
        fit["calib"], fit["test"] = (unpack_estimates(fit[s].numpy(), opts) for s in ("calib", "test"))
    return art


def store_study(path, key, opts, fitted: dict, points: dict, test_nodes: dict) -> None:
    """Save a computed study: ``fitted`` (predictor config key -> ``calib`` and ``test`` estimates, the
    ``final`` predictor, its ``call_cost`` and ``quality``), every method's ``points`` and ``test_nodes``."""
    if key is None:
        return
    import torch   # the estimates stored as tensors (the safe codec keeps their dtype and bits either way)
    fits = {k: {**{s: torch.from_numpy(pack_estimates(f[s], opts)) for s in ("calib", "test")},
                "final": f["final"].state(), "call_cost": f["call_cost"], "quality": f["quality"]}
            for k, f in fitted.items()}
    try:
        save_artifact(path, key, {"fits": fits, "points": points,
                                  "test_nodes": {k: torch.from_numpy(v) for k, v in test_nodes.items()}})
    except OSError as e:   # a full or read-only disk: the study is computed, only its reuse is lost
        warnings.warn(f"the study's evaluation could not be stored ({e}); the next run computes it again",
                      stacklevel=3)
