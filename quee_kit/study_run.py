"""Running a study: its predictors from the store (else shipped, else fitted over the cores), its evaluation
stored once, and :func:`run_study`, the one call a notebook makes.

Orchestration above the pure study (:mod:`quee_kit.study`): this module meets the machinery (the
:class:`~quee_kit.store.Store`'s files and locks, the shipped predictors, the process pool) and stage one
(:func:`~quee_kit.prepare.prepare`), and hands the science only built pieces. :func:`build_study` takes a
prepared stage one and the config sections it needs (predictor, eval); :func:`run_study` prepares stage
one from a whole config first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from .artifacts import ArtifactError, load_artifact, save_artifact
from .backends import quant_key
from .config import Config, EvalConfig, PredictorConfig
from .options import OptionSpace
from .parallel import run_jobs
from .paths import FEATURE_NAMES
from .policy import lambda_grid
from .predictors import cross_fit_plan, cross_fitted_from_states, fit_task, predictor_from_state
from .prepare import Prepared, cache_path, prepare
from .quant_features import QUANT_STATS, QUANT_STATS_VERSION
from .safe_codec import decode
from .shipped import find_shipped_predictor, load_shipped_predictor
from .store import artifact_key
from .study import (QUEE_VARIANTS, Study, add_quality, evaluate_methods, fitted_estimates, n_quant_columns,
                    predictor_configs, quee_policies, with_baselines)
from .study_store import load_stored_study, store_study, study_artifact

__all__ = ["run_study", "build_study", "fit_variants", "store_predictors", "shipped_predictor",
           "predictor_artifact_keys", "predictor_artifacts", "fit_cross_fitted_jobs", "PREDICTOR_FIT_VERSION"]

# Bump when the fitting procedure changes, so that predictors fitted the old way are rebuilt.
PREDICTOR_FIT_VERSION = 3  # 3: every fit on one thread (MLP bits no longer depend on the core count)


def _pcfg_key(pcfg) -> dict:
    """The predictor config as its artifacts' key reads it: ``probe`` only when set and ``features`` only when not
    ``softmax``, so every predictor stored before those options existed keeps its key."""
    d = dataclasses.asdict(pcfg)
    d = d if d.pop("probe") is False else {**d, "probe": True}
    return {k: v for k, v in d.items() if (k, v) != ("features", "softmax")}


def predictor_artifact_keys(prep: Prepared, pcfgs: list, seed: int) -> list[str]:
    """The artifact key of each predictor config's cross-fitted predictors (shipped ones carry it)."""
    return [artifact_key("predictors", PREDICTOR_FIT_VERSION, prep.model_hash, prep.data.digest,
                         [l.name for l in prep.levels], prep.tree.family, _pcfg_key(pcfg), seed,
                         quant_key(prep.cfg.quant), FEATURE_NAMES,  # a change of features makes old ones stale
                         *([QUANT_STATS, QUANT_STATS_VERSION] if pcfg.features == "quant" else []),
                         *([prep.act_scales.digest()] if prep.act_scales is not None else []),
                         # fitted on caches of that dtype (float32 fits keep the keys they had before it)
                         *([prep.cfg.paths.dtype] if prep.cfg.paths.dtype != "float32" else []))
            for pcfg in pcfgs]


def shipped_predictor(prep: Prepared, key: str) -> dict | None:
    """The shipped predictor artifact of ``key`` (``quee_kit/embedded/predictors``: the MLP fits, whose
    bits would otherwise depend on the CPU's kernels), or None; never with ``model.retrain``."""
    entry = None if prep.cfg.model.retrain else find_shipped_predictor(key)
    return None if entry is None else decode(load_shipped_predictor(entry))


def fit_cross_fitted_jobs(calib, opts: OptionSpace, cfgs: list, seed: int = 0, progress: bool = True,
                          jobs: int | None = 1) -> list:
    """:func:`~quee_kit.predictors.fit_cross_fitted` of each config in ``cfgs`` with its fits shared out
    over ``jobs`` worker processes (0: one per core), each on one thread: the same numbers as one after
    another."""
    tasks, fold_ofs = cross_fit_plan(cfgs, calib.n_samples, seed)
    states = run_jobs(fit_task, tasks, jobs, shared=(calib, opts, seed), desc="predictors" if progress else None)
    return cross_fitted_from_states(cfgs, fold_ofs, states)


def predictor_artifacts(prep: Prepared, opts: OptionSpace, pcfgs: list, seed: int, progress: bool) -> list[dict]:
    """The stored fold predictors, refitted predictor and fold assignment of each predictor config in
    ``pcfgs``, each an artifact (from the cache, else shipped, else fitted); the missing ones are fitted
    together, every fit on one thread, shared out over ``cfg.jobs`` worker processes (the same numbers as
    one after another)."""
    keys = predictor_artifact_keys(prep, pcfgs, seed)
    paths = [prep.store.file("predictors", key) for key in keys]
    arts = []
    for path, key in zip(paths, keys):
        try:
            arts.append(load_artifact(path, key))
        except ArtifactError:
            arts.append(None)
    for i in [i for i, a in enumerate(arts) if a is None]:
        arts[i] = shipped_predictor(prep, keys[i])
        if arts[i] is not None:
            save_artifact(paths[i], keys[i], arts[i])
    missing = [i for i, a in enumerate(arts) if a is None]
    if missing:
        fits = fit_cross_fitted_jobs(prep.caches["calib"], opts, [pcfgs[i] for i in missing], seed, progress,
                                     jobs=prep.cfg.jobs)
        for i, cf in zip(missing, fits):
            arts[i] = {"folds": [m.state() for m in cf.folds], "final": cf.final.state(), "fold_of": cf.fold_of}
            save_artifact(paths[i], keys[i], arts[i])
    return arts


def fit_variants(prep: Prepared, opts: OptionSpace, pcfgs: list, seed: int, progress: bool) -> list[dict]:
    """Cross-fitted predictors for each predictor config in ``pcfgs`` (:func:`predictor_artifacts`) and their
    estimates (:func:`~quee_kit.study.fitted_estimates`: ``calib``, ``test``, ``final``, ``call_cost``)."""
    for pcfg in pcfgs:   # checked before any fit
        n_quant_columns(prep, pcfg)
    return fitted_estimates(prep, opts, pcfgs, predictor_artifacts(prep, opts, pcfgs, seed, progress))


def run_study(cfg: Config, progress: bool = True, variants: dict | None = None, prep: Prepared | None = None,
              store: bool = True) -> Study:
    """Prepare caches (unless ``prep`` is given), then :func:`build_study` with ``cfg``'s predictor and eval
    sections and seed: the one call a notebook makes. The study records ``cfg``."""
    t0 = time.perf_counter()
    prep = prep or prepare(cfg, progress=progress)
    study = build_study(prep, cfg.predictor, cfg.eval, cfg.seed, progress, variants, store, t0=t0)
    study.cfg = cfg
    return study


def build_study(prep: Prepared, pcfg: PredictorConfig, ecfg: EvalConfig, seed: int, progress: bool = True,
                variants: dict | None = None, store: bool = True, t0: float | None = None) -> Study:
    """Fit predictors (cross-fitted) on the prepared caches ``prep``, evaluate every method's knobs on calib
    and test. ``pcfg``: the predictor section (each variant overrides some of its fields), ``ecfg``: the eval
    section (its λ grid), ``seed``: of the predictors' folds and fits.

    The evaluation is stored, and the next call for the same study loads it, with the same numbers
    (:mod:`quee_kit.study_store`; ``timings["stored"]``: it was loaded); ``store=False`` computes it afresh
    and keeps nothing. ``t0``: when the study started (its ``prepare_seconds`` count from there)."""
    t0 = time.perf_counter() if t0 is None else t0
    caches = prep.caches
    opts = OptionSpace(prep.tree, caches["calib"].node_cost)
    timings = {"prepare_seconds": time.perf_counter() - t0, **prep.timings}
    lambdas = lambda_grid(ecfg.lambda_grid)
    t1 = time.perf_counter()
    variants = variants or QUEE_VARIANTS
    pcfgs = predictor_configs(pcfg, variants)
    path, key = study_artifact(prep, {s: cache_path(prep, s)[0] for s in ("calib", "test")},
                               predictor_artifact_keys(prep, list(pcfgs.values()), seed), variants,
                               ecfg.lambda_grid, seed, code=__name__)
    # two processes evaluating one study (two notebooks side by side): the second waits, then loads it
    with prep.store.locked("study", key) if store and key is not None else contextlib.nullcontext():
        stored = load_stored_study(path, key, opts) if store else None
        timings["stored"] = stored is not None
        if stored:
            fitted = {k: {**f, "final": predictor_from_state(f["final"])} for k, f in stored["fits"].items()}
        else:
            fitted = dict(zip(pcfgs, fit_variants(prep, opts, list(pcfgs.values()), seed, progress)))
            add_quality(fitted, caches["test"], opts)
        methods, quality, predictors = quee_policies(caches, opts, pcfg, variants, fitted, lambdas)
        timings["predictor_seconds"] = time.perf_counter() - t1
        methods = with_baselines(methods, caches, opts, lambdas, seed)
        t2 = time.perf_counter()
        if stored:
            points, test_nodes = stored["points"], {k: v.numpy() for k, v in stored["test_nodes"].items()}
        else:
            points, test_nodes = evaluate_methods(methods, progress)
        timings["evaluate_seconds"] = time.perf_counter() - t2
        if not stored and store:
            store_study(path, key, opts, fitted, points, test_nodes)
    return Study(prep, opts, methods, points, quality, predictors, timings, None, test_nodes)


def store_predictors(cfg: Config, pcfgs: list, prep: Prepared | None = None) -> None:
    """Fit and store (where not stored yet) the cross-fitted predictors of each predictor config in
    ``pcfgs`` on ``cfg``'s calib cache, as :func:`run_study` would, without predicting anything. ``prep``:
    that calib cache already loaded (``prepare(cfg, splits=("calib",))``)."""
    torch.manual_seed(cfg.seed)
    prep = prep or prepare(cfg, splits=("calib",), progress=False)
    predictor_artifacts(prep, OptionSpace(prep.tree, prep.caches["calib"].node_cost), list(pcfgs), cfg.seed,
                        progress=False)
