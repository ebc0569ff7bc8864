"""A study: the prepared caches of one seed, its fitted predictors, every method and its points.

Pure: built pieces in, points out. From a prepared stage one (:class:`~quee_kit.prepared.Prepared`: model
and path caches) and each predictor config's fitted predictors (fold states, refit, fold assignment), it
predicts the error estimates (:func:`fitted_estimates`), builds the QuEE policy of every variant
(:func:`quee_policies`) and every registered baseline beside them (:func:`with_baselines`), and evaluates
every method's knobs on calib and test (:func:`evaluate_methods`, :func:`method_points`). Where the
predictors come from (the store, shipped files, fits over the cores) and how an evaluation is stored is
:mod:`quee_kit.study_run`, which also holds :func:`~quee_kit.study_run.run_study`, the one call a notebook
makes. The budget rule on those points (:func:`select_points`) is the one every method and the explorer
share.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import baselines  # noqa: F401  (registers the baselines)
from . import schedules  # noqa: F401  (registers the static-schedule baselines, after best-single)
from .config import Config, PredictorConfig
from .engine import DynamicModel
from .methods import MethodContext, build_methods
from .options import OptionSpace
from .quant_features import feature_ops, state_numel
from .registry import PREDICTOR_KINDS
from .budget_rule import select_points  # re-exported: the rule on a points table
from .policy import QueePolicy
from .predictors import CrossFitted, predictor_from_state, predictor_macs, predictor_quality
from .prepared import Prepared
from .variants import ALL_VARIANTS, QUEE_VARIANTS  # re-exported: the study builds them

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["Study", "predictor_configs", "fitted_estimates", "n_quant_columns", "add_quality", "quee_policies", "with_baselines", "evaluate_methods",
           "method_points", "select_points", "points_auc", "c_min_sat", "QUEE_VARIANTS", "ALL_VARIANTS"]


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
    predictors: dict = field(default_factory=dict)  # QuEE variant -> its fit (fitted_estimates output + quality): err_hat per split, final, call_cost
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
        if getattr(self.methods[method], "probe", None) is not None:
            raise ValueError(f"engine: {method} (the paid probe) runs in the path-cache simulation only, not in DynamicModel")
        (entry, lam), _ = self.select(method, budget)
        p, m, prep = self.predictors[method], self.methods[method], self.prep
        return DynamicModel(prep.model, prep.qblocks, prep.costs, p["final"], self.opts, entry, lam, m.mask,
                            m.call_cost)


def fitted_estimates(prep: Prepared, opts: OptionSpace, pcfgs: list, arts: list[dict]) -> list[dict]:
    """The estimates of each predictor config in ``pcfgs`` from its fitted predictors ``arts`` (per config:
    ``folds``, the fold predictors' states; ``final``, the state of the one refitted on all of calib;
    ``fold_of``, the calib samples' folds). Per config: calib (out-of-fold) and test estimates ``err_hat``
    (keys ``calib``, ``test``, (n_nodes, N, O)), the refitted predictor (``final``) and the normalized cost
    of one call (``call_cost``, known from the config before fitting)."""
    out, memo = [], {}   # the fits predict on the same rows: their features are gathered once
    n_quant = [n_quant_columns(prep, pcfg) for pcfg in pcfgs]     # checked before any prediction
    for pcfg, nq, art in zip(pcfgs, n_quant, arts):
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


def n_quant_columns(prep: Prepared, pcfg) -> int:
    """The quant columns the caches carry for a ``features: quant`` predictor (0 for ``softmax``); a
    ValueError when the caches were built without them."""
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


def add_quality(fitted: dict, test_cache, opts: OptionSpace) -> None:
    """Write each fit's ``quality`` (:func:`~quee_kit.predictors.predictor_quality` of its test estimates on
    ``test_cache``) into ``fitted`` (predictor config key -> :func:`fitted_estimates` output)."""
    ref = None   # the AUROC of 1 - max prob: the same rows for every fit
    for fit in fitted.values():
        fit["quality"] = predictor_quality(fit["test"], test_cache, opts, auroc_maxprob=ref)
        ref = fit["quality"]["auroc_maxprob"]


def quee_policies(caches: dict, opts: OptionSpace, pcfg: PredictorConfig, variants: dict, fitted: dict,
                  lambdas: np.ndarray) -> tuple[dict, dict, dict]:
    """``(methods, quality, predictors)``: the QuEE policy of every variant (name -> (predictor overrides of
    ``pcfg``, option restriction)) on its fit in ``fitted`` (keyed as :func:`predictor_configs`), each
    variant's predictor quality and its fit. ``lambdas``: the λ grid."""
    methods, quality, predictors = {}, {}, {}
    pcfgs = predictor_configs(pcfg, variants)
    for name, (pover, variant) in variants.items():
        pkey = _predictor_key(pcfg, pover)
        quality[name] = fitted[pkey]["quality"]                       # every name, also a shared fit's
        predictors[name] = fitted[pkey]
        # every call is charged: the cost of one call of the predictor that made the estimates
        methods[name] = QueePolicy(name, fitted[pkey], caches, opts, lambdas, variant,
                                   call_cost=fitted[pkey]["call_cost"], probe=pcfgs[pkey].probe)
    return methods, quality, predictors


def with_baselines(policies: dict, caches: dict, opts: OptionSpace, lambdas: np.ndarray, seed: int) -> dict:
    """``policies`` (name -> method), then every registered baseline and bound built beside them."""
    return {**policies, **build_methods(MethodContext(caches, opts, lambdas, seed, built=dict(policies)))}


def evaluate_methods(methods: dict, progress: bool = True) -> tuple[dict, dict]:
    """``(points, test_nodes)``: :func:`method_points` of every method, and each method's test nodes."""
    test_nodes: dict = {}
    points = {name: method_points(m, test_nodes) for name, m in tqdm(methods.items(), desc="methods",
                                                                     disable=not progress, leave=False)}
    return points, test_nodes


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
