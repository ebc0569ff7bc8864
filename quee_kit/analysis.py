"""Analyses the result notebooks (05, 06, 08) call: curves under the budget rule, predictor
variants and noise, accuracy by input difficulty, and the tables behind the main figure.

Every number here is a *test* number obtained with the shared budget rule
(:func:`quee_kit.policy.select_for_budget`: best calib accuracy whose calib cost is within the
budget), exactly as :meth:`quee_kit.study.Study.at_budget` reports it. Costs are normalized
BOPs (1.0 = stem + every block at the reference level + the final head).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from .evaluate import oracle_gap_share, paired_bootstrap, verdict
from .paths import FEATURE_NAMES
from .policy import QueePolicy, lambda_grid, select_for_budget
from .predictors import predictor_quality
from .study import Study, points_auc, select_points

__all__ = ["budget_curve", "budget_curves", "auc", "paired_difference", "target_variants", "quality_table",
           "k_sweep_table", "noisy_predictions", "predictor_noise_sweep", "difficulty_groups", "by_difficulty",
           "budget_summary", "format_budget_summary", "auc_table", "format_auc_table"]

QUALITY_KEYS = ["brier", "ece", "auroc", "auroc_maxprob", "error_rate"]


def _as_list(studies) -> list[Study]:
    return [studies] if isinstance(studies, Study) else list(studies)


def budget_curve(studies, method: str, budgets) -> pd.DataFrame:
    """The curve as reported, per seed: at each budget the knob chosen on calib and its test point.

    studies: a Study or a list of them (one per seed). Returns one row per (seed, budget):
    ``seed, budget, cost`` (test mean cost, normalized BOPs), ``accuracy`` (test) and ``feasible``
    (False: no knob fits the budget on calib, so the cheapest knob is reported, above the budget).
    """
    rows = []
    for s in _as_list(studies):
        p = s.points[method]
        idx, ok = select_points(p, budgets)
        for b, i, f in zip(budgets, idx, ok):
            rows.append({"seed": s.cfg.seed, "budget": float(b), "cost": float(p["cost_test"].iloc[i]),
                         "accuracy": float(p["acc_test"].iloc[i]), "feasible": bool(f)})
    return pd.DataFrame(rows, columns=["seed", "budget", "cost", "accuracy", "feasible"])


def budget_curves(studies, methods, budgets) -> pd.DataFrame:
    """:func:`budget_curve` of several methods, stacked with a ``method`` column."""
    return pd.concat([budget_curve(studies, m, budgets).assign(method=m) for m in methods], ignore_index=True)


def auc(study: Study, method: str, auc_range, n: int = 41) -> float:
    """Mean test accuracy over ``n`` budgets evenly spaced in ``auc_range``; NaN when the method cannot
    meet some budget of the range on calib (the rule of :func:`quee_kit.evaluate.budget_tables`)."""
    return points_auc(study.points[method], auc_range, n)


def paired_difference(study: Study, method: str, other: str, budgets, n_boot: int | None = None) -> pd.DataFrame:
    """``method`` − ``other`` on the same test samples at each budget (each with its own knob chosen
    on calib): ``budget, accuracy_method, accuracy_other, diff_pp, diff_lo_pp, diff_hi_pp`` (percentage
    points, 95% paired bootstrap interval) and ``verdict`` (*tie* when the interval contains 0)."""
    n_boot = n_boot or study.cfg.eval.bootstrap
    rows = []
    for b in budgets:
        a, o = study.at_budget(method, b)[2], study.at_budget(other, b)[2]
        d, lo, hi = paired_bootstrap(a.correct.astype(float) - o.correct, n_boot, seed=0)
        rows.append({"budget": float(b), "accuracy_method": a.accuracy, "accuracy_other": o.accuracy,
                     "diff_pp": 100 * d, "diff_lo_pp": 100 * lo, "diff_hi_pp": 100 * hi,
                     "verdict": verdict(lo, hi)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- predictor variants

def target_variants(k_values=(), knn: bool = True) -> dict:
    """QuEE variants (name -> (predictor overrides, option restriction)) for :func:`run_study`: the
    config's default predictor (``quee``), the per-node binned table and the MLP on k-means targets, and
    MLP ablations: raw 0/1 labels, no history, one MLP per depth instead of a shared one, k-NN targets
    and one k-means variant per K in ``k_values`` (named ``quee-K{K}``)."""
    mlp = {"kind": "mlp"}
    v = {"quee": ({}, "all"), "quee-binned": ({"kind": "binned"}, "all"), "quee-mlp": (mlp, "all"),
         "quee-raw": ({**mlp, "targets": "raw"}, "all"), "quee-nohist": ({**mlp, "history": False}, "all"),
         "quee-perdepth": ({**mlp, "shared": False}, "all")}
    if knn:
        v["quee-knn"] = ({**mlp, "targets": "knn"}, "all")
    v.update({f"quee-K{k}": ({**mlp, "K": int(k)}, "all") for k in k_values})
    return v


def quality_table(study: Study, labels: dict[str, str], auc_range) -> pd.DataFrame:
    """Predictor quality on test (exit-now option at every decision node) and QuEE's AUC, per variant.

    labels: variant name -> row label. Columns: ``variant, label, brier, ece, auroc, auroc_maxprob,
    error_rate, auc`` (auc: mean test accuracy over ``auc_range`` with that variant's predictor).
    """
    rows = [{"variant": v, "label": lab, **{k: study.quality[v][k] for k in QUALITY_KEYS},
             "auc": auc(study, v, auc_range)} for v, lab in labels.items()]
    return pd.DataFrame(rows)


def k_sweep_table(study: Study, k_values, auc_range, references=("quee-raw", "quee-knn")) -> pd.DataFrame:
    """One row per K (variants ``quee-K{K}``, targets ``kmeans``) plus one row per reference
    variant present in the study (K = NaN, ``targets`` = its target scheme), with quality and AUC."""
    rows = []
    for k in k_values:
        v = f"quee-K{k}"
        rows.append({"K": float(k), "targets": "kmeans", "variant": v,
                     **{q: study.quality[v][q] for q in QUALITY_KEYS}, "auc": auc(study, v, auc_range)})
    for v in references:
        if v in study.quality:
            rows.append({"K": np.nan, "targets": v.removeprefix("quee-"), "variant": v,
                         **{q: study.quality[v][q] for q in QUALITY_KEYS}, "auc": auc(study, v, auc_range)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------- noisier predictors

def noisy_predictions(err_hat: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``sigmoid(logit(err_hat) + sigma * N(0, 1))`` elementwise, same shape and dtype; NaN stays NaN.

    sigma = 0 returns err_hat exactly (the logit/sigmoid round trip in float64 is exact on float32
    values; 0 and 1 map to -inf/+inf and back).
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 (got {sigma})")
    err_hat = np.asarray(err_hat)
    # elementwise, on the estimates alone (about 8% of a study's array, the rest is NaN): the noise is still
    # drawn for every element, so an estimate gets the draw it gets from the whole array
    ok = ~np.isnan(err_hat)
    z = logit(err_hat[ok].astype(np.float64))
    if sigma > 0:
        z = z + sigma * np.random.default_rng(seed).standard_normal(err_hat.shape)[ok]
    out = np.full(err_hat.shape, expit(logit(np.float64(np.nan))), dtype=err_hat.dtype)   # its NaN, bit for bit
    out[ok] = expit(z)
    return out


def predictor_noise_sweep(study: Study, sigmas, budgets, method: str = "quee", seed: int = 0) -> pd.DataFrame:
    """Re-run the QuEE policy with noisier predictions (calib and test alike), same knobs and budget rule.

    For each sigma: ``err_hat'`` = :func:`noisy_predictions` of the variant's calib and test estimates, every
    (entry, λ) knob re-evaluated on calib, the budget rule applied, test reported. Returns one row per
    (sigma, budget): ``sigma, budget, accuracy, cost, feasible, diff_vs_best_single, diff_lo, diff_hi``
    (paired test difference and its 95% bootstrap interval, fractions), ``best_single_accuracy,
    best_single_cost, brier, auroc`` (brier/auroc: the noisy test predictor's quality, exit-now option).
    """
    base = study.methods[method]
    caches, opts = study.prep.caches, study.opts
    lams = lambda_grid(study.cfg.eval.lambda_grid)
    bs = {b: study.at_budget("best-single", b)[2] for b in budgets}
    n_boot = study.cfg.eval.bootstrap
    rows = []
    for j, sigma in enumerate(sigmas):
        err_hat = {sp: noisy_predictions(study.predictors[method][sp], sigma, seed=seed * 1000 + 2 * j + i)
             for i, sp in enumerate(("calib", "test"))}
        pol = QueePolicy(f"{method}+noise", err_hat, caches, opts, lams, mask=base.mask,  # same restriction and calls
                         call_cost=base.call_cost)
        calib = pol.outcomes("calib")
        cc = np.array([o.mean_cost for o in calib])
        ac = np.array([o.accuracy for o in calib])
        q = predictor_quality(err_hat["test"], caches["test"], opts)
        for b in budgets:
            i, ok = select_for_budget(cc, ac, float(b))
            out = pol.outcome("test", pol.knobs[i])
            d, lo, hi = paired_bootstrap(out.correct.astype(float) - bs[b].correct, n_boot, seed=j)
            rows.append({"sigma": float(sigma), "budget": float(b), "accuracy": out.accuracy, "cost": out.mean_cost,
                         "feasible": ok, "diff_vs_best_single": d, "diff_lo": lo, "diff_hi": hi,
                         "best_single_accuracy": bs[b].accuracy,
                         "best_single_cost": bs[b].mean_cost, "brier": q["brier"], "auroc": q["auroc"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- input difficulty

def difficulty_groups(study: Study, n_groups: int = 4, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Group index per sample (0 = easiest) by quantiles of the max prob of exit 1 at the reference
    level (equal-size groups), and that max prob. Max probs that saturate at 1.0 in float32 are
    ordered by the head's log-odds, the same confidence on a log scale."""
    cache = study.prep.caches[split]
    f = cache.features[cache.node((0,))].numpy()                    # (N, F); level 0 is the reference
    conf, log_odds = f[:, 0], f[:, FEATURE_NAMES.index("log_odds")]
    order = np.lexsort((-log_odds, -conf))                          # most confident first
    group = np.empty(len(conf), dtype=int)
    group[order] = np.arange(len(conf)) * n_groups // len(conf)
    return group, conf


def by_difficulty(study: Study, method: str, budget: float, n_groups: int = 4) -> pd.DataFrame:
    """Test accuracy and mean cost of ``method`` and best-single at ``budget``, per difficulty group.

    Groups: quantiles of the reference-level exit-1 max prob, group 1 = most confident (easiest).
    Columns: ``group, n, maxprob_lo, maxprob_hi, accuracy_method, accuracy_best_single,
    mean_cost_method, mean_cost_best_single, method, budget``.
    """
    group, conf = difficulty_groups(study, n_groups)
    out_m = study.at_budget(method, budget)[2]
    out_b = study.at_budget("best-single", budget)[2]
    rows = []
    for g in range(n_groups):
        m = group == g
        rows.append({"group": g + 1, "n": int(m.sum()), "maxprob_lo": float(conf[m].min()),
                     "maxprob_hi": float(conf[m].max()),
                     "accuracy_method": float(out_m.correct[m].mean()),
                     "accuracy_best_single": float(out_b.correct[m].mean()),
                     "mean_cost_method": float(out_m.cost[m].mean()),
                     "mean_cost_best_single": float(out_b.cost[m].mean()), "method": method, "budget": float(budget)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ tables

SUMMARY_AGAINST = {"best-single": ("diff_vs_best_single", "diff_lo", "diff_hi"),
                   "best-static": ("diff_vs_best_static", "diff_lo_static", "diff_hi_static")}


def budget_summary(budgets_df: pd.DataFrame, methods=None, against: str = "best-single") -> pd.DataFrame:
    """Tidy table from :func:`quee_kit.evaluate.budget_tables`: per method and budget, test accuracy
    mean and std over seeds, mean cost, and the pooled paired difference vs ``against`` (``best-single``,
    the paper's comparison, or ``best-static``, the strongest static baseline) in percentage points with
    its 95% bootstrap interval. ``verdict``: *better* / *worse* when the interval excludes 0, *tie* when it
    contains 0, *over budget* when some seed cannot meet the budget on calib (the reported point is its
    cheapest knob, which costs more than the budget), *reference* for ``against`` itself."""
    if against not in SUMMARY_AGAINST:
        raise ValueError(f"against must be one of {sorted(SUMMARY_AGAINST)} (got {against!r})")
    diff, diff_lo, diff_hi = SUMMARY_AGAINST[against]
    pooled = budgets_df[budgets_df.seed == "all"]
    if methods is not None:
        pooled = pooled[pooled.method.isin(methods)]
    per_seed = budgets_df[budgets_df.seed != "all"]
    n_seeds = int(per_seed.seed.nunique())
    feasible = per_seed.groupby(["method", "budget"]).feasible.all()
    lo, hi = 100 * pooled[diff_lo].astype(float), 100 * pooled[diff_hi].astype(float)
    df = pd.DataFrame({"method": pooled.method, "budget": pooled.budget, "n_seeds": n_seeds,
                       "accuracy_mean": pooled.accuracy, "accuracy_std": pooled.accuracy_std,
                       "cost_mean": pooled.cost, "diff_pp": 100 * pooled[diff].astype(float),
                       "diff_lo_pp": lo, "diff_hi_pp": hi, "verdict": verdict(lo, hi),
                       "feasible": [bool(feasible[(m, b)]) for m, b in zip(pooled.method, pooled.budget)]})
    df.loc[~df.feasible, "verdict"] = "over budget"   # its cheapest knob costs more: not a fair comparison
    df.loc[df.method == against, "verdict"] = "reference"
    return df.reset_index(drop=True)


def format_budget_summary(summary: pd.DataFrame, what: str = "accuracy") -> pd.DataFrame:
    """:func:`budget_summary` as text, one row per method and one column per budget.

    ``what="accuracy"``: test accuracy, ``mean ± std`` over seeds (just the mean for one seed);
    ``what="diff"``: ``diff [lo, hi] verdict``, the pooled paired difference vs the summary's reference
    method (best-single or best-static) in percentage points (verdict *over budget* where the budget is infeasible on calib). ``*`` on an
    accuracy marks such a budget: the method's cheapest knob is reported, above the budget."""
    if what not in ("accuracy", "diff"):
        raise ValueError(f"what must be accuracy or diff (got {what!r})")
    one_seed = bool((summary.n_seeds <= 1).all())

    def cell(r):
        star = "" if r.feasible else "*"
        if what == "accuracy":
            return f"{r.accuracy_mean:.3f}{star}" if one_seed else f"{r.accuracy_mean:.3f} ± {r.accuracy_std:.3f}{star}"
        if r.verdict == "reference":
            return "reference"
        return f"{r.diff_pp:+.1f} [{r.diff_lo_pp:+.1f}, {r.diff_hi_pp:+.1f}] {r.verdict}"
    text = summary.assign(text=summary.apply(cell, axis=1))
    order = list(dict.fromkeys(summary.method))
    out = text.pivot(index="method", columns="budget", values="text").loc[order]
    out.columns = [f"{b:g}" for b in out.columns]
    out.columns.name = "budget"
    return out


def auc_table(auc_by_method: dict[str, list[float]]) -> pd.DataFrame:
    """AUC (mean test accuracy over the AUC range) per method, mean and std over seeds, and the
    share of the oracle's advantage over best-single it captures: (AUC_m − AUC_bs) / (AUC_oracle − AUC_bs).
    Both are NaN for a method that cannot meet some budget of the range (on some seed); such methods
    come last (:func:`format_auc_table` writes them as *infeasible*)."""
    share = oracle_gap_share(auc_by_method)
    rows = [{"method": k, "auc_mean": float(np.mean(v)), "auc_std": float(np.std(v)),
             "oracle_gap_share": np.nan if share[k] is None else share[k]}
            for k, v in auc_by_method.items()]
    return pd.DataFrame(rows).sort_values("auc_mean", ascending=False).reset_index(drop=True)


def format_auc_table(table: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """:func:`auc_table` for display: numbers rounded, NaN written as ``infeasible``."""
    shown = table.round(decimals).astype(object)
    return shown.where(table.notna(), "infeasible")
