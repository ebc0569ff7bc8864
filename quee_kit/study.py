"""A study: the prepared caches of one seed, its fitted predictors, every method and its points.

:func:`build_study` takes a prepared stage one (:func:`~quee_kit.prepare.prepare`: model and path caches)
and the config sections it needs (predictor, eval) and builds cross-fitted error predictors per QuEE
variant, the QuEE policies and every registered baseline (:mod:`quee_kit.methods`), and every method's
knobs evaluated on calib and test (:func:`method_points`). :func:`run_study` is the one-call form for
notebooks: stage one from a whole config, then :func:`build_study`. The budget rule on those points (:func:`select_points`) is the one every
method and the explorer share.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import baselines  # noqa: F401  (registers the baselines)
from . import schedules  # noqa: F401  (registers the static-schedule baselines, after best-single)
from .artifacts import ArtifactError, load_artifact, save_artifact
from .safe_codec import decode
from .shipped import find_shipped_predictor, load_shipped_predictor
from .backends import quant_key
from .config import Config, EvalConfig, PredictorConfig
from .methods import MethodContext, build_methods
from .options import OptionSpace
from .paths import FEATURE_NAMES
from .quant_features import QUANT_STATS, QUANT_STATS_VERSION, feature_ops, state_numel
from .registry import PREDICTOR_KINDS
from .store import artifact_key
from .budget_rule import select_points  # re-exported: the rule on a points table
from .policy import QueePolicy, lambda_grid
from .predictors import (CrossFitted, fit_cross_fitted, predictor_from_state, predictor_macs,
                         predictor_quality)
from .prepare import Prepared, cache_path, prepare
from .study_store import load_stored_study, store_study, study_artifact
from .variants import ALL_VARIANTS, QUEE_VARIANTS  # re-exported: the study builds them

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["Study", "run_study", "build_study", "fit_variants", "predictor_configs", "store_predictors", "shipped_predictor",
           "predictor_artifact_keys", "predictor_artifacts", "method_points", "select_points", "points_auc",
           "c_min_sat", "QUEE_VARIANTS", "ALL_VARIANTS", "PREDICTOR_FIT_VERSION"]


@dataclass
class Study:
    """All methods of one seed evaluated on its caches.

    ``points[method]``: DataFrame of every knob (cost/accuracy on calib and test);
    ``methods[name]``: the method objects; ``quality``: predictor quality per QuEE variant;
    ``predictors[name]``: its fold models, feature columns and error estimates per split; ``cfg``:
    the config the study ran (its predictor and eval sections may differ from ``prep.cfg``'s when a
    prepared stage one was passed in).
    """
    prep: Prepared
    opts: OptionSpace
    methods: dict
    points: dict[str, pd.DataFrame]
    quality: dict
    predictors: dict = field(default_factory=dict)  # QuEE variant -> fit_variants output: err_hat per split, final, call_cost
    timings: dict = field(default_factory=dict)
    cfg: Config | None = None
    test_nodes: dict = field(default_factory=dict)   # method -> (n_knobs, N) final test node of each knob and sample

    def __post_init__(self):
        self.cfg = self.cfg or self.prep.cfg

    def select(self, method: str, budget: float):
        """(knob, feasible) chosen on calib for ``budget`` by the shared rule."""
        (i,), (ok,) = select_points(self.points[method], [budget])
        return self.methods[method].knobs[i], bool(ok)

    def at_budget(self, method: str, budget: float, split: str = "test"):
        knob, ok = self.select(method, budget)
        return knob, ok, self.methods[method].outcome(split, knob)

    def engine(self, method: str, budget: float):
        """The :class:`~quee_kit.engine.DynamicModel` running ``method`` (a QuEE variant) at ``budget``."""
        from .engine import DynamicModel
        if getattr(self.methods[method], "probe", None) is not None:
            raise ValueError(f"engine: {method} (the paid probe) runs in the path-cache simulation only, not in DynamicModel")
        (entry, lam), _ = self.select(method, budget)
        p, m, prep = self.predictors[method], self.methods[method], self.prep
        return DynamicModel(prep.model, prep.qblocks, prep.costs, p["final"], self.opts, entry, lam, m.mask,
                            m.call_cost)


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
                         *([prep.act_scales.digest()] if prep.act_scales is not None else []))
            for pcfg in pcfgs]


def shipped_predictor(prep: Prepared, key: str) -> dict | None:
    """The shipped predictor artifact of ``key`` (``quee_kit/embedded/predictors``: the MLP fits, whose
    bits would otherwise depend on the CPU's kernels), or None; never with ``model.retrain``."""
    entry = None if prep.cfg.model.retrain else find_shipped_predictor(key)
    return None if entry is None else decode(load_shipped_predictor(entry))


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
        fits = fit_cross_fitted(prep.caches["calib"], opts, [pcfgs[i] for i in missing], seed, progress,
                                jobs=prep.cfg.jobs)
        for i, cf in zip(missing, fits):
            arts[i] = {"folds": [m.state() for m in cf.folds], "final": cf.final.state(), "fold_of": cf.fold_of}
            save_artifact(paths[i], keys[i], arts[i])
    return arts


def fit_variants(prep: Prepared, opts: OptionSpace, pcfgs: list, seed: int, progress: bool) -> list[dict]:
    """Cross-fitted predictors for each predictor config in ``pcfgs`` (fold predictors + one refitted on all
    of calib; :func:`predictor_artifacts`). Per config: calib (out-of-fold) and test estimates ``err_hat``
    (keys ``calib``, ``test``), the refitted predictor (``final``) and the normalized cost of one call
    (``call_cost``, known from the config before fitting)."""
    out, memo = [], {}   # the fits predict on the same rows: their features are gathered once
    n_quant = [_n_quant(prep, pcfg) for pcfg in pcfgs]     # checked before any fit
    for pcfg, nq, art in zip(pcfgs, n_quant, predictor_artifacts(prep, opts, pcfgs, seed, progress)):
        cf = CrossFitted([predictor_from_state(s) for s in art["folds"]], predictor_from_state(art["final"]),
                         art["fold_of"])
        macs = predictor_macs(pcfg, opts.n_options, nq)
        if cf.final.macs != macs:
            raise RuntimeError(f"predictor MACs {cf.final.macs} differ from its config's {macs}")
        # the quantization-aware statistics a call reads are computed for it: charged with it, at the same bits
        feats = feature_ops(prep.levels, state_numel(prep.model, prep.data.image_shape)) \
            if pcfg.features == "quant" and PREDICTOR_KINDS.get(pcfg.kind).reads_quant_features else 0
        out.append({**cf.predict(prep.caches["calib"], prep.caches["test"], opts, memo), "final": cf.final,
                    "call_cost": prep.costs.call_cost(macs + feats)})
    return out


def _n_quant(prep: Prepared, pcfg) -> int:
    """The quant columns the caches carry for a ``features: quant`` predictor (0 for ``softmax``)."""
    if pcfg.features != "quant":
        return 0
    q = prep.caches["calib"].qstats
    if q is None:
        raise ValueError("predictor.features: quant needs path caches built with it (set it in the config, "
                         "not in one variant's overrides)")
    return q.shape[-1]


def _predictor_key(pcfg: PredictorConfig, pover: dict) -> str:
    """A QuEE variant's predictor config as a JSON key: variants with one config share one fit."""
    return json.dumps(dataclasses.asdict(dataclasses.replace(pcfg, **pover)), sort_keys=True)


def predictor_configs(pcfg: PredictorConfig, variants: dict) -> dict:
    """The distinct predictor configs of ``variants`` (QuEE variant name -> (overrides of the predictor
    section ``pcfg``, option restriction)), keyed by their JSON: variants with one predictor config share
    one fit."""
    return {_predictor_key(pcfg, pover): dataclasses.replace(pcfg, **pover) for pover, _ in variants.values()}


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
    methods, quality, predictors = {}, {}, {}
    t1 = time.perf_counter()
    variants = variants or QUEE_VARIANTS
    pcfgs = predictor_configs(pcfg, variants)
    path, key = study_artifact(prep, {s: cache_path(prep, s)[0] for s in ("calib", "test")},
                               predictor_artifact_keys(prep, list(pcfgs.values()), seed), variants,
                               ecfg.lambda_grid, seed)
    # two processes evaluating one study (two notebooks side by side): the second waits, then loads it
    with prep.store.locked("study", key) if store and key is not None else contextlib.nullcontext():
        stored = load_stored_study(path, key, opts) if store else None
        timings["stored"] = stored is not None
        if stored:
            fitted = {k: {**f, "final": predictor_from_state(f["final"])} for k, f in stored["fits"].items()}
        else:
            fitted = dict(zip(pcfgs, fit_variants(prep, opts, list(pcfgs.values()), seed, progress)))
            ref = None   # the AUROC of 1 - max prob: the same rows for every fit
            for fit in fitted.values():
                fit["quality"] = predictor_quality(fit["test"], caches["test"], opts, auroc_maxprob=ref)
                ref = fit["quality"]["auroc_maxprob"]
        for name, (pover, variant) in variants.items():
            pkey = _predictor_key(pcfg, pover)
            quality[name] = fitted[pkey]["quality"]                       # every name, also a shared fit's
            predictors[name] = fitted[pkey]
            # every call is charged: the cost of one call of the predictor that made the estimates
            methods[name] = QueePolicy(name, fitted[pkey], caches, opts, lambdas, variant,
                                       call_cost=fitted[pkey]["call_cost"], probe=pcfgs[pkey].probe)
        timings["predictor_seconds"] = time.perf_counter() - t1
        methods.update(build_methods(MethodContext(caches, opts, lambdas, seed, built=dict(methods))))
        t2 = time.perf_counter()
        test_nodes = {k: v.numpy() for k, v in stored["test_nodes"].items()} if stored else {}
        points = stored["points"] if stored else {
            name: method_points(m, test_nodes) for name, m in tqdm(methods.items(), desc="methods",
                                                                   disable=not progress, leave=False)}
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


def method_points(method, test_nodes: dict | None = None) -> pd.DataFrame:
    """Every knob of ``method`` on calib and test: its named fields (``describe``) plus ``cost_calib, acc_calib,
    cost_test, acc_test`` (mean normalized BOPs and accuracy), one row per knob. ``test_nodes``: a dict that
    receives ``method.name`` -> (n_knobs, N) the test node each sample exits at under each knob."""
    batch = {sp: method.outcomes(sp) for sp in ("calib", "test")}
    if test_nodes is not None:
        n_nodes = len(method.tree.depth)
        test_nodes[method.name] = np.stack([np.asarray(o.node) for o in batch["test"]]).astype(
            np.int16 if n_nodes < 2 ** 15 else np.int32)
    rows = []
    for knob, oc, ot in zip(method.knobs, batch["calib"], batch["test"]):
        rows.append({**method.describe(knob), "cost_calib": oc.mean_cost, "acc_calib": oc.accuracy,
                     "cost_test": ot.mean_cost, "acc_test": ot.accuracy})
    df = pd.DataFrame(rows)
    named = [c for c in dict.fromkeys(["entry", *method.knob_fields]) if c in df]   # a union's fields: NaN where absent
    return df[named + [c for c in df if c not in named]]


def points_auc(points: pd.DataFrame, auc_range, n: int = 41) -> float:
    """AUC: mean test accuracy of the budget rule's choice over ``n`` budgets evenly spaced in
    ``auc_range``; NaN (infeasible) when the method cannot meet some budget of the range on calib: it has
    no operating point there, and scoring it 0 would read as a (very) bad method rather than one that
    cannot run so cheaply."""
    idx, ok = select_points(points, np.linspace(auc_range[0], auc_range[1], n))
    return float(points["acc_test"].to_numpy()[idx].mean()) if ok.all() else float("nan")


def c_min_sat(study: Study) -> tuple[float, float]:
    """c_min: the cheapest cost any method can reach (exit 1 at the cheapest level); c_sat: the cheapest
    full-depth static level within 0.5 points of the reference on calib."""
    p = study.points["static-quant"]
    ref_acc = p["acc_calib"].iloc[0]
    ok = p[p["acc_calib"] >= ref_acc - 0.005]
    cache = study.prep.caches["calib"]
    return float(cache.static_cost[study.prep.tree.nodes_at(1)].min()), float(ok["cost_calib"].min())
