"""Statistics of studies: paired and hierarchical bootstrap intervals, budget and curve tables, AUC,
predictor quality. Studies in, tables out (``quee-kit run`` writes them: :mod:`quee_kit.pipeline`)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .methods import scalar_knob
from .calibration import quality_metrics
from .predictors import exit_now_rows
from .verdicts import level_table, precision_diversity, t_interval, two_interval_verdict
from .study import Study, c_min_sat, points_auc

__all__ = ["paired_bootstrap", "hierarchical_bootstrap", "budget_tables", "core_auc", "quality_table",
           "curves_table", "c_min_sat", "BUDGET_COLUMNS", "knob_value", "verdict", "oracle_gap_share", "headline"]


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


def budget_tables(studies: list[Study], budgets, n_boot: int, auc_range) -> tuple[pd.DataFrame, dict]:
    """Per-seed and seed-pooled budget rows, and per-method AUC over ``auc_range``.

    Per-seed rows: the paired bootstrap over test samples. Pooled rows (``seed == "all"``): the
    seed-mean difference with :func:`hierarchical_bootstrap` (seeds and test samples resampled), so a
    "significant" pooled difference does not hinge on which backbones were trained.

    Every difference is taken against best-single (``diff_vs_best_single, diff_lo, diff_hi``) and against
    best-static, the headline (``diff_vs_best_static, diff_lo_static, diff_hi_static``); pooled rows add the
    t-interval over the per-seed differences (``diff_t_lo[_static], diff_t_hi[_static]``, NaN with one seed)
    and ``verdict_single`` / ``verdict_static`` (:func:`~quee_kit.verdicts.two_interval_verdict`). Every row
    has the ``precision_diversity`` of the choice (:func:`~quee_kit.verdicts.precision_diversity`; pooled:
    the seed mean); per-seed rows the ``schedule`` of a schedule baseline's choice (its levels by name)."""
    names = list(studies[0].methods)
    levels = level_table(studies[0].prep.tree.paths, studies[0].prep.tree.L)
    rows = []
    for b in budgets:
        refs = {k: [s.at_budget(m, b)[2].correct.astype(float) for s in studies]
                for k, m in (("", "best-single"), ("_static", "best-static"))}
        for name in names:
            diffs, accs, costs, feasible, div = {k: [] for k in refs}, [], [], [], []
            for seed_i, s in enumerate(studies):
                knob, ok, out = s.at_budget(name, b)
                d = {k: out.correct - r[seed_i] for k, r in refs.items()}
                m, lo, hi = paired_bootstrap(d[""], n_boot, seed=seed_i)
                ms, los, his = paired_bootstrap(d["_static"], n_boot, seed=seed_i)
                desc = s.methods[name].describe(knob)
                div.append(precision_diversity(levels, out.node))
                rows.append({"method": name, "budget": b, "split": "test", "entry": desc["entry"],
                             "lambda": knob_value(s.methods[name], desc), "cost": out.mean_cost, "accuracy": out.accuracy,
                             "diff_vs_best_single": m, "diff_lo": lo, "diff_hi": hi,
                             "seed": str(s.cfg.seed), "feasible": ok, "diff_vs_best_static": ms,
                             "diff_lo_static": los, "diff_hi_static": his, "precision_diversity": div[-1],
                             "schedule": desc.get("schedule", "")})
                for k in refs:
                    diffs[k].append(d[k])
                feasible.append(ok)
                accs.append(out.accuracy)
                costs.append(out.mean_cost)
            pooled = {}
            for k in refs:
                m, lo, hi = hierarchical_bootstrap(np.array(diffs[k]), n_boot, seed=123)
                _, t_lo, t_hi = t_interval(np.array(diffs[k]).mean(1))
                pooled[k] = (m, lo, hi, t_lo, t_hi, two_interval_verdict(lo, hi, t_lo, t_hi))
            (m, lo, hi, t_lo, t_hi, v), (ms, los, his, t_los, t_his, vs) = pooled[""], pooled["_static"]
            rows.append({"method": name, "budget": b, "split": "test", "entry": "", "lambda": np.nan,
                         "cost": float(np.mean(costs)), "accuracy": float(np.mean(accs)),
                         "diff_vs_best_single": m, "diff_lo": lo, "diff_hi": hi, "seed": "all",
                         "feasible": all(feasible), "accuracy_std": float(np.std(accs)),
                         "cost_std": float(np.std(costs)), "diff_vs_best_static": ms, "diff_lo_static": los,
                         "diff_hi_static": his, "precision_diversity": float(np.mean(div)),
                         "diff_t_lo": t_lo, "diff_t_hi": t_hi, "verdict_single": v,
                         "diff_t_lo_static": t_los, "diff_t_hi_static": t_his, "verdict_static": vs})
    auc = {name: [points_auc(s.points[name], auc_range) for s in studies] for name in names}
    return pd.DataFrame(rows)[BUDGET_COLUMNS], auc


# budgets.csv: the historic columns first (unchanged), then issue 29's (best-static, t-intervals, diversity)
BUDGET_COLUMNS = ["method", "budget", "split", "entry", "lambda", "cost", "accuracy", "diff_vs_best_single",
                  "diff_lo", "diff_hi", "seed", "feasible", "accuracy_std", "cost_std", "diff_t_lo", "diff_t_hi",
                  "verdict_single", "diff_vs_best_static", "diff_lo_static", "diff_hi_static", "diff_t_lo_static",
                  "diff_t_hi_static", "verdict_static", "precision_diversity", "schedule"]


def core_auc(studies: list[Study]) -> dict[str, list[float]]:
    """Per method and seed, the AUC over that seed's [c_min, c_sat] (both from calib): the budgets where
    methods can differ (above c_sat a cheap static level already matches the reference)."""
    ranges = [c_min_sat(s) for s in studies]
    return {name: [points_auc(s.points[name], r) for s, r in zip(studies, ranges)] for name in studies[0].methods}


def _quality_row(variant, depth, split, seed, p, wrong, conf) -> dict:
    return {"variant": variant, "depth": depth, "split": split, "seed": seed,
            **quality_metrics(p, wrong, conf)}


def _depth_quality(err_hat, s: Study, split: str, L: int, maxprob: dict) -> list[dict]:
    """Exit-now quality rows of one split per depth 1..L-1 and ``all`` (no variant, no seed). ``maxprob``:
    (split, depth) -> AUROC of 1 - max prob, filled by the first call and read by the next (the same rows)."""
    p, wrong, conf, depth = exit_now_rows(err_hat, s.prep.caches[split], s.opts)
    rows = []
    for t in [*range(1, L), "all"]:
        k = slice(None) if t == "all" else depth == t
        rows.append({"depth": str(t), "split": split,
                     **quality_metrics(p[k], wrong[k], conf[k], auroc_maxprob=maxprob.get((split, t)))})
        maxprob[split, t] = rows[-1]["auroc_maxprob"]
    return rows


def quality_table(studies: list[Study], budgets) -> pd.DataFrame:
    """Quality of every QuEE method's exit-now estimates (Brier, ECE, AUROC beside 1 - max prob's):
    per depth 1..L-1 and ``all`` on calib (out-of-fold) and test, and on test at the (node, sample)
    decisions the method's budget-rule choice makes at each budget (``depth = visited@<budget>``)."""
    rows = []
    for s in studies:
        seed, L = s.cfg.seed, s.prep.tree.L
        by_fit: dict = {}   # variants sharing one fit (e.g. quee, quee-exit-only) share its per-depth metrics
        maxprob: dict = {}  # and every fit the AUROC of 1 - max prob on the same rows
        for name, m in s.methods.items():
            if name not in s.predictors:   # QuEE variants: the methods with a predictor
                continue
            fit = id(s.predictors[name])
            if fit not in by_fit:
                by_fit[fit] = [_depth_quality(m.err_hat[split], s, split, L, maxprob) for split in ("calib", "test")]
            rows += [{"variant": name, "seed": seed, **r} for per_split in by_fit[fit] for r in per_split]
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


def verdict(lo, hi):
    """*better* / *worse* when a paired difference's interval [lo, hi] excludes 0, else *tie* (arrays
    elementwise)."""
    v = np.where(np.asarray(lo) > 0, "better", np.where(np.asarray(hi) < 0, "worse", "tie"))
    return str(v) if v.ndim == 0 else v


def knob_value(method, desc: dict) -> float:
    """The method's continuous knob (λ, τ, r, p; :func:`~quee_kit.methods.scalar_knob`) in a described
    knob, NaN when it has none: what the ``lambda`` column of budgets.csv and curves.csv holds (the
    column keeps its historic name so that stored results stay comparable)."""
    k = scalar_knob(method)
    return desc.get(k, np.nan) if k else np.nan


def curves_table(studies: list[Study]) -> pd.DataFrame:
    """One row per seed, method, knob and split: ``method, param, split, cost, accuracy, seed``;
    ``param`` is the JSON ``{"entry": ..., "lambda": ...}`` of the knob (see :func:`knob_value`)."""
    rows = []
    for s in studies:
        for name, p in s.points.items():
            for _, r in p.iterrows():
                param = json.dumps({"entry": r["entry"], "lambda": knob_value(s.methods[name], r.to_dict())})
                for split in ("calib", "test"):
                    rows.append({"method": name, "param": param, "split": split, "cost": r[f"cost_{split}"],
                                 "accuracy": r[f"acc_{split}"], "seed": s.cfg.seed})
    return pd.DataFrame(rows)


def oracle_gap_share(auc: dict) -> dict:
    """Per method, (AUC - AUC best-single) / (AUC oracle - AUC best-single) of the seed means of ``auc``
    (method -> per-seed AUCs): the share of the oracle's advantage a method captures (None: no gap)."""
    mean = {k: float(np.mean(v)) for k, v in auc.items()}
    gap = mean["oracle"] - mean["best-single"]     # NaN AUC (infeasible in the range): NaN share
    return {k: (mean[k] - mean["best-single"]) / gap if gap > 0 else None for k in mean}


def headline(budgets: pd.DataFrame, methods: list[str]) -> dict:
    """The headline comparison of summary.json: per method of ``methods`` (the QuEE variants) and budget, its
    pooled difference vs best-static (percentage points) with both intervals, the verdict, and the precision
    diversity of its choice (the seed mean)."""
    pooled = budgets[budgets.seed == "all"]
    pts = lambda x: None if np.isnan(x) else float(100 * x)   # noqa: E731  (one seed: no t-interval, JSON null)
    out = {}
    for name in methods:
        rows = pooled[pooled.method == name]
        out[name] = [{"budget": float(r.budget), "diff": pts(r.diff_vs_best_static),
                      "boot": [pts(r.diff_lo_static), pts(r.diff_hi_static)],
                      "t": [pts(r.diff_t_lo_static), pts(r.diff_t_hi_static)], "verdict": r.verdict_static,
                      "precision_diversity": float(r.precision_diversity)} for r in rows.itertuples()]
    return out
