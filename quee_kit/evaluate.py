"""Curves, budgets, paired bootstrap intervals, summary — and the whole ``quee-kit run`` pipeline."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .artifacts import atomic_write_bytes, content_hash, load_or_build
from .baselines import BestSingle, ConfidenceExit, Oracle, PerExitConfidence, RandomRouting, StaticQuant
from .config import Config, ConfigError
from .paths import FEATURE_NAMES
from .pipeline import Prepared, _cache_dir, load_data, peak_memory_mb, prepare
from .policy import QueePolicy, lambda_grid, select_for_budget
from .predictors import (CrossFitted, OptionSpace, exit_now_rows, fit_cross_fitted, predictor_from_state,
                         predictor_quality, quality_metrics)

__all__ = ["Study", "run_study", "paired_bootstrap", "hierarchical_bootstrap", "quality_table", "run_pipeline", "check_config_against_data",
           "QUEE_VARIANTS", "budget_tables", "curves_table", "c_min_sat", "method_points", "select_points",
           "points_auc"]

# name -> (predictor overrides, option restriction); "quee" uses the config's predictor as it is. More MLP
# ablations (no history, one MLP per depth, k-NN targets, K sweep): quee_kit.analysis.target_variants.
QUEE_VARIANTS = {
    "quee": ({}, "all"),
    "quee-binned": ({"kind": "binned"}, "all"),
    "quee-mlp": ({"kind": "mlp"}, "all"),
    "quee-raw": ({"kind": "mlp", "targets": "raw"}, "all"),
    "quee-exit-only": ({}, "exit-only"),
    "quee-quant-only": ({}, "quant-only"),
}


def paired_bootstrap(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-sample differences and its 95% percentile bootstrap interval."""
    diff = np.asarray(diff, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def hierarchical_bootstrap(diffs: np.ndarray, n: int = 2000, seed: int = 0, chunk: int = 100
                           ) -> tuple[float, float, float]:
    """Mean and 95% interval of paired differences ``diffs`` (S seeds, N test samples) that resamples
    seeds *and* test samples: each replicate draws S seeds and N samples with replacement and averages
    the drawn seeds' differences on the drawn samples. The test samples are the same for every seed
    (a crossed design), so one sample draw serves all drawn seeds. With one seed it is
    :func:`paired_bootstrap`'s interval over samples alone."""
    d = np.asarray(diffs, dtype=np.float32)
    S, N = d.shape
    rng = np.random.default_rng(seed)
    means = []
    for c in range(0, n, chunk):
        k = min(chunk, n - c)
        si, xi = rng.integers(0, S, (k, S)), rng.integers(0, N, (k, N))
        means.append(d[si[:, :, None], xi[:, None, :]].mean((1, 2)))
    means = np.concatenate(means)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def check_config_against_data(cfg: Config) -> None:
    """Checks that need the split sizes (cheap: loads the arrays, trains nothing)."""
    data = load_data(cfg)
    fold = len(data.calib) * (cfg.predictor.folds - 1) // cfg.predictor.folds
    if cfg.predictor.targets == "kmeans" and cfg.predictor.K > fold:
        raise ConfigError(f"config: predictor.K must be <= the calib samples of a training fold ({fold}) "
                          f"(got {cfg.predictor.K})")
    if cfg.predictor.folds > len(data.calib):
        raise ConfigError(f"config: predictor.folds must be <= the calib size {len(data.calib)} "
                          f"(got {cfg.predictor.folds})")


@dataclass
class Study:
    """All methods of one seed evaluated on its caches.

    ``points[method]``: DataFrame of every knob (cost/accuracy on calib and test);
    ``methods[name]``: the method objects; ``quality``: predictor quality per QuEE variant;
    ``predictors[name]``: its fold models, feature columns and error estimates per split.
    """
    prep: Prepared
    opts: OptionSpace
    methods: dict
    points: dict[str, pd.DataFrame]
    quality: dict
    predictors: dict = field(default_factory=dict)  # QuEE variant -> fitted fold models, columns, E
    timings: dict = field(default_factory=dict)

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
        (entry, lam), _ = self.select(method, budget)
        p, m, prep = self.predictors[method], self.methods[method], self.prep
        return DynamicModel(prep.model, prep.qblocks, prep.costs, p["final"], self.opts, entry, lam, m.mask,
                            m.call_cost)


# Bump when the fitting procedure changes, so that predictors fitted the old way are rebuilt.
PREDICTOR_FIT_VERSION = 2


def _quant_key(q) -> dict:
    """The quant config as the predictor key sees it: ``residual`` only when on, so that predictors fitted
    before the option existed stay valid."""
    d = dataclasses.asdict(q)
    if not d.get("residual"):
        d.pop("residual", None)
    return d


def _fit_variant(prep: Prepared, opts: OptionSpace, pcfg, seed: int, progress: bool):
    """Cross-fitted predictors for one predictor config (fold predictors + one refitted on all of calib),
    cached as an artifact; their calib (out-of-fold) and test estimates and the cost of one call."""
    key = content_hash("predictors", PREDICTOR_FIT_VERSION, prep.model_hash, prep.data.digest,
                       [l.name for l in prep.levels], prep.tree.family, dataclasses.asdict(pcfg), seed,
                       _quant_key(prep.cfg.quant), FEATURE_NAMES)  # a change of features makes old ones stale
    path = _cache_dir(prep.cfg) / f"predictors-{key[:16]}.pt"

    def build():
        cf = fit_cross_fitted(prep.caches["calib"], opts, pcfg, seed, progress)
        return {"folds": [m.state() for m in cf.folds], "final": cf.final.state(), "fold_of": cf.fold_of}

    art = load_or_build(path, key, build, what="predictors")
    cf = CrossFitted([predictor_from_state(s) for s in art["folds"]], predictor_from_state(art["final"]),
                     art["fold_of"])
    return {**cf.predict(prep.caches["calib"], prep.caches["test"], opts), "final": cf.final,
            "call_cost": prep.costs.call_cost(cf.final.macs)}


def run_study(cfg: Config, progress: bool = True, variants: dict | None = None, prep: Prepared | None = None) -> Study:
    """Prepare caches, fit predictors (cross-fitted), evaluate every method's knobs on calib and test."""
    t0 = time.perf_counter()
    prep = prep or prepare(cfg, progress=progress)
    caches = prep.caches
    opts = OptionSpace(prep.tree, caches["calib"].node_cost)
    timings = {"prepare_seconds": time.perf_counter() - t0, **prep.timings}
    lambdas = lambda_grid(cfg.eval.lambda_grid)
    methods, quality, fitted, predictors = {}, {}, {}, {}
    t1 = time.perf_counter()
    for name, (pover, variant) in (variants or QUEE_VARIANTS).items():
        pcfg = dataclasses.replace(cfg.predictor, **pover)
        pkey = json.dumps(dataclasses.asdict(pcfg), sort_keys=True)   # variants with one config share one fit
        if pkey not in fitted:
            fitted[pkey] = _fit_variant(prep, opts, pcfg, cfg.seed, progress)
            fitted[pkey]["quality"] = predictor_quality(fitted[pkey]["test"], caches["test"], opts)
        quality[name] = fitted[pkey]["quality"]                       # every name, also a shared fit's
        predictors[name] = fitted[pkey]
        # every call is charged: the cost of one call of the predictor that made the estimates
        methods[name] = QueePolicy(name, fitted[pkey], caches, opts, lambdas, variant,
                                   call_cost=fitted[pkey]["call_cost"])
    timings["predictor_seconds"] = time.perf_counter() - t1
    static = StaticQuant(caches)
    ee_all = ConfidenceExit(caches, None, "ee-confidence@q")
    methods.update({
        "static-quant": static,
        "ee-confidence": ConfidenceExit(caches, [0], "ee-confidence"),
        "ee-confidence@q": ee_all,
        "ee-confidence-perexit": PerExitConfidence(caches),
        "best-single": BestSingle(static, ee_all),
        "random": RandomRouting(caches, opts, seed=cfg.seed),
        "oracle": Oracle(caches, lambdas),
        "oracle-uniform": Oracle(caches, lambdas, uniform=True),
    })
    t2 = time.perf_counter()
    points = {name: method_points(m) for name, m in tqdm(methods.items(), desc="methods",
                                                          disable=not progress, leave=False)}
    timings["evaluate_seconds"] = time.perf_counter() - t2
    return Study(prep, opts, methods, points, quality, predictors, timings)


def method_points(method) -> pd.DataFrame:
    """Every knob of ``method`` on calib and test: its description plus ``cost_calib, acc_calib,
    cost_test, acc_test`` (mean normalized BOPs and accuracy), one row per knob."""
    batch = {sp: method.outcomes(sp) for sp in ("calib", "test")} if hasattr(method, "outcomes") else None
    rows = []
    for i, knob in enumerate(method.knobs):
        oc, ot = (batch["calib"][i], batch["test"][i]) if batch else (method.outcome("calib", knob),
                                                                     method.outcome("test", knob))
        rows.append({**method.describe(knob), "cost_calib": oc.mean_cost, "acc_calib": oc.accuracy,
                     "cost_test": ot.mean_cost, "acc_test": ot.accuracy})
    return pd.DataFrame(rows)


def select_points(points: pd.DataFrame, budgets) -> tuple[np.ndarray, np.ndarray]:
    """The budget rule on a :func:`method_points` table: (knob row index, feasible) per budget."""
    cc, ac = points["cost_calib"].to_numpy(), points["acc_calib"].to_numpy()
    chosen = [select_for_budget(cc, ac, float(b)) for b in budgets]
    return np.array([i for i, _ in chosen], dtype=int), np.array([ok for _, ok in chosen], dtype=bool)


def points_auc(points: pd.DataFrame, auc_range, n: int = 41) -> float:
    """AUC: mean test accuracy of the budget rule's choice over ``n`` budgets evenly spaced in
    ``auc_range``; a budget the method cannot meet on calib scores 0 there (no operating point)."""
    idx, ok = select_points(points, np.linspace(auc_range[0], auc_range[1], n))
    return float(np.where(ok, points["acc_test"].to_numpy()[idx], 0.0).mean())


def c_min_sat(study: Study) -> tuple[float, float]:
    """c_min: the cheapest cost any method can reach (exit 1 at the cheapest level); c_sat: the cheapest
    full-depth static level within 0.5 points of the reference on calib."""
    p = study.points["static-quant"]
    ref_acc = p["acc_calib"].iloc[0]
    ok = p[p["acc_calib"] >= ref_acc - 0.005]
    cache = study.prep.caches["calib"]
    return float(cache.static_cost[study.prep.tree.nodes_at(1)].min()), float(ok["cost_calib"].min())


def budget_tables(studies: list[Study], budgets, n_boot: int, auc_range) -> tuple[pd.DataFrame, dict]:
    """Per-seed and seed-pooled budget rows, and per-method AUC over ``auc_range``.

    Per-seed rows: the paired bootstrap over test samples. Pooled rows (``seed == "all"``): the
    seed-mean difference with :func:`hierarchical_bootstrap` (seeds and test samples resampled), so a
    "significant" pooled difference does not hinge on which backbones were trained."""
    names = list(studies[0].methods)
    rows = []
    for b in budgets:
        bs = [s.at_budget("best-single", b)[2].correct.astype(float) for s in studies]
        for name in names:
            diffs, accs, costs, feasible = [], [], [], []
            for seed_i, s in enumerate(studies):
                knob, ok, out = s.at_budget(name, b)
                d = out.correct - bs[seed_i]
                m, lo, hi = paired_bootstrap(d, n_boot, seed=seed_i)
                desc = s.methods[name].describe(knob)
                rows.append({"method": name, "budget": b, "split": "test", "entry": desc["entry"],
                             "lambda": desc["lambda"], "cost": out.mean_cost, "accuracy": out.accuracy,
                             "diff_vs_best_single": m, "diff_lo": lo, "diff_hi": hi,
                             "seed": str(s.prep.cfg.seed), "feasible": ok})
                diffs.append(d)
                feasible.append(ok)
                accs.append(out.accuracy)
                costs.append(out.mean_cost)
            m, lo, hi = hierarchical_bootstrap(np.array(diffs), n_boot, seed=123)
            rows.append({"method": name, "budget": b, "split": "test", "entry": "", "lambda": np.nan,
                         "cost": float(np.mean(costs)), "accuracy": float(np.mean(accs)),
                         "diff_vs_best_single": m, "diff_lo": lo, "diff_hi": hi, "seed": "all",
                         "feasible": all(feasible), "accuracy_std": float(np.std(accs)),
                         "cost_std": float(np.std(costs))})
    auc = {name: [points_auc(s.points[name], auc_range) for s in studies] for name in names}
    return pd.DataFrame(rows), auc


def core_auc(studies: list[Study]) -> dict[str, list[float]]:
    """Per method and seed, the AUC over that seed's [c_min, c_sat] (both from calib): the budgets where
    methods can differ (above c_sat a cheap static level already matches the reference)."""
    ranges = [c_min_sat(s) for s in studies]
    return {name: [points_auc(s.points[name], r) for s, r in zip(studies, ranges)] for name in studies[0].methods}


def _quality_row(variant, depth, split, seed, p, wrong, conf) -> dict:
    return {"variant": variant, "depth": depth, "split": split, "seed": seed,
            **quality_metrics(p, wrong, conf)}


def quality_table(studies: list[Study], budgets) -> pd.DataFrame:
    """Quality of every QuEE method's exit-now estimates (Brier, ECE, AUROC beside 1 - max prob's):
    per depth 1..L-1 and ``all`` on calib (out-of-fold) and test, and on test at the (node, sample)
    decisions the method's budget-rule choice makes at each budget (``depth = visited@<budget>``)."""
    rows = []
    for s in studies:
        seed, L = s.prep.cfg.seed, s.prep.tree.L
        for name, m in s.methods.items():
            if not isinstance(m, QueePolicy):
                continue
            for split in ("calib", "test"):
                p, wrong, conf, depth = exit_now_rows(m.err_hat[split], s.prep.caches[split], s.opts)
                for t in [*range(1, L), "all"]:
                    k = slice(None) if t == "all" else depth == t
                    rows.append(_quality_row(name, str(t), split, seed, p[k], wrong[k], conf[k]))
            cache = s.prep.caches["test"]
            for b in budgets:
                node, sample = m.visited("test", s.select(name, b)[0])
                if len(node):
                    p = m.err_hat["test"][node, sample, s.opts.exit_option[node]]
                    wrong = (~cache.correct_np[node, sample]).astype(float)
                    rows.append(_quality_row(name, f"visited@{b:g}", "test", seed, p, wrong,
                                             cache.features[node, sample, 0].numpy()))
    cols = ["variant", "depth", "split", "seed", "n", "brier", "ece", "auroc", "auroc_maxprob", "error_rate"]
    return pd.DataFrame(rows)[cols]


def curves_table(studies: list[Study]) -> pd.DataFrame:
    rows = []
    for s in studies:
        for name, p in s.points.items():
            for _, r in p.iterrows():
                param = json.dumps({"entry": r["entry"], "lambda": r["lambda"]})
                for split in ("calib", "test"):
                    rows.append({"method": name, "param": param, "split": split, "cost": r[f"cost_{split}"],
                                 "accuracy": r[f"acc_{split}"], "seed": s.prep.cfg.seed})
    return pd.DataFrame(rows)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6g").encode())


def run_pipeline(cfg: Config, out: Path, progress: bool = True) -> dict:
    """``quee-kit run``: every seed of ``cfg.eval.seeds``; writes curves.csv, budgets.csv, summary.json."""
    check_config_against_data(cfg)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    studies = []
    for seed in tqdm(cfg.eval.seeds, desc="seeds", disable=not progress or len(cfg.eval.seeds) == 1):
        torch.manual_seed(seed)
        variants = None if cfg.eval.variants is None else {k: QUEE_VARIANTS[k] for k in cfg.eval.variants}
        studies.append(run_study(dataclasses.replace(cfg, seed=seed), progress, variants))
    budgets, auc = budget_tables(studies, cfg.eval.budgets, cfg.eval.bootstrap, cfg.eval.auc_range)
    curves = curves_table(studies)
    _atomic_csv(curves, out / "curves.csv")
    _atomic_csv(budgets, out / "budgets.csv")
    _atomic_csv(quality_table(studies, cfg.eval.budgets), out / "predictor_quality.csv")
    from .conditions import room_summary, room_table  # room for per-input precision (conditions.py)
    room = room_table(studies)
    _atomic_csv(room, out / "room.csv")
    cmins = [c_min_sat(s) for s in studies]
    auc_core = core_auc(studies)

    def auc_summary(a):
        return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v} for k, v in a.items()}

    def gap_share(a):
        mean = {k: float(np.mean(v)) for k, v in a.items()}
        gap = mean["oracle"] - mean["best-single"]
        return {k: (mean[k] - mean["best-single"]) / gap if gap > 0 else None for k in mean}

    summary = {
        "config": dataclasses.asdict(cfg),
        "seeds": list(cfg.eval.seeds),
        "split_sizes": {s: len(studies[0].prep.data.split(s)) for s in ("train", "calib", "test")},
        "reference_accuracy": {"test": [float(s.points["static-quant"]["acc_test"].iloc[0]) for s in studies],
                               "calib": [float(s.points["static-quant"]["acc_calib"].iloc[0]) for s in studies]},
        "c_min": [c[0] for c in cmins], "c_sat": [c[1] for c in cmins],
        "tree_nodes": len(studies[0].prep.tree),
        "predictor_call_cost": {k: m.call_cost for k, m in studies[0].methods.items() if isinstance(m, QueePolicy)},
        "auc_range": list(cfg.eval.auc_range),
        "auc_core": auc_summary(auc_core),
        "auc": auc_summary(auc),
        "oracle_gap_share_core": gap_share(auc_core),
        "oracle_gap_share": gap_share(auc),
        "room": room_summary(room),
        "predictors": {name: [s.quality.get(name) for s in studies] for name in studies[0].quality},
        "timings": {"total_seconds": time.perf_counter() - t0, "per_seed": [s.timings for s in studies],
                    "peak_memory_mb": peak_memory_mb()},
    }
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2, default=float) + "\n").encode())
    if progress:
        pooled = budgets[budgets.seed == "all"]
        show = pooled[pooled.method.isin(["quee", "best-single", "oracle", "static-quant", "ee-confidence"])]
        print(show.pivot_table(index="method", columns="budget", values="accuracy").round(4).to_string())
        print(f"wrote {out}/curves.csv, budgets.csv, predictor_quality.csv, room.csv, summary.json in {summary['timings']['total_seconds']:.0f} s")
    return summary
