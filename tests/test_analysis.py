"""Analyses behind notebooks 05, 06 and 08, checked against the Study they summarize."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from quee_kit import analysis
from quee_kit.evaluate import budget_tables
from quee_kit.study import points_auc


def test_noise_zero_is_identity_and_nan_is_kept(study):
    err_hat = study.predictors["quee"]["test"]
    assert np.isnan(err_hat).any() and (~np.isnan(err_hat)).any()
    same = analysis.noisy_predictions(err_hat, 0.0, seed=3)
    assert same.dtype == err_hat.dtype and np.array_equal(same, err_hat, equal_nan=True)
    noisy = analysis.noisy_predictions(err_hat, 1.0, seed=3)
    assert np.array_equal(np.isnan(noisy), np.isnan(err_hat))
    v = noisy[~np.isnan(noisy)]
    assert ((v >= 0) & (v <= 1)).all() and not np.allclose(v, err_hat[~np.isnan(err_hat)])
    with pytest.raises(ValueError, match="sigma"):
        analysis.noisy_predictions(err_hat, -1.0)


def test_noise_touches_the_estimates_alone_with_the_whole_arrays_draws(study):
    # sigmoid(logit(e) + sigma * N(0, 1)) over the whole array, NaN included, is what the noise is defined as:
    # computed on the estimates alone it must be that, bit for bit (each estimate gets its own draw)
    from scipy.special import expit, logit
    err_hat = study.predictors["quee"]["calib"].copy()
    flat = err_hat.reshape(-1)   # a view of the copy
    flat[np.flatnonzero(~np.isnan(flat))[:2]] = [0.0, 1.0]   # logit -inf and +inf: exactly 0 and 1 back
    for sigma in (0.0, 0.7):
        z = logit(err_hat.astype(np.float64))
        whole = expit(z + sigma * np.random.default_rng(5).standard_normal(z.shape)).astype(np.float32)
        got = analysis.noisy_predictions(err_hat, sigma, seed=5)
        assert np.array_equal(got.view(np.uint32), whole.view(np.uint32)), sigma


def test_noise_sweep_at_zero_reproduces_the_study(study):
    budgets = study.cfg.eval.budgets
    df = analysis.predictor_noise_sweep(study, [0.0, 2.0], budgets)
    assert len(df) == 2 * len(budgets)
    zero = df[df.sigma == 0].set_index("budget")
    for b in budgets:
        _, ok, out = study.at_budget("quee", b)
        assert zero.loc[b, "accuracy"] == out.accuracy and zero.loc[b, "cost"] == pytest.approx(out.mean_cost)
        assert zero.loc[b, "feasible"] == ok
        assert zero.loc[b, "best_single_accuracy"] == study.at_budget("best-single", b)[2].accuracy
    assert zero.diff_vs_best_single.to_numpy() == pytest.approx(
        (zero.accuracy - zero.best_single_accuracy).to_numpy())
    assert (df.diff_lo <= df.diff_vs_best_single + 1e-12).all() and (df.diff_vs_best_single <= df.diff_hi + 1e-12).all()
    # noise on the logits makes error detection worse
    assert df[df.sigma == 2].auroc.iloc[0] < zero.auroc.iloc[0]


@pytest.mark.parametrize("method", ["quee", "oracle"])
def test_by_difficulty_partitions_the_test_split(study, method):
    budget = 0.05
    df = analysis.by_difficulty(study, method, budget, n_groups=4)
    n = study.prep.caches["test"].n_samples
    assert list(df.group) == [1, 2, 3, 4] and df.n.sum() == n and df.n.max() - df.n.min() <= 1
    out, bs = study.at_budget(method, budget)[2], study.at_budget("best-single", budget)[2]
    w = df.n / n
    assert (w * df.accuracy_method).sum() == pytest.approx(out.accuracy)
    assert (w * df.accuracy_best_single).sum() == pytest.approx(bs.accuracy)
    assert (w * df.mean_cost_method).sum() == pytest.approx(out.mean_cost)
    # easy -> hard: each group's least confident sample is at least as confident as the next group's most
    assert (df.maxprob_lo.to_numpy()[:-1] >= df.maxprob_hi.to_numpy()[1:]).all()


def test_budget_curve_matches_at_budget(study):
    budgets = [1e-4, 0.03, 0.05, 0.12, 1.0]
    for method in ("quee", "best-single", "oracle"):
        df = analysis.budget_curve([study], method, budgets)
        assert list(df.columns) == ["seed", "budget", "cost", "accuracy", "feasible"]
        for _, r in df.iterrows():
            _, ok, out = study.at_budget(method, r.budget)
            assert (r.accuracy, r.feasible) == (out.accuracy, ok) and r.cost == pytest.approx(out.mean_cost)
        assert not df.feasible.iloc[0] and df.feasible.iloc[-1]  # nothing fits 1e-4; everything fits 1.0
    long = analysis.budget_curves(study, ["quee", "oracle"], budgets)
    assert set(long.method) == {"quee", "oracle"} and len(long) == 2 * len(budgets)


def test_tables_agree_with_budget_tables(study):
    cfg = study.cfg
    budgets_df, auc = budget_tables([study], cfg.eval.budgets, 200, cfg.eval.auc_range)
    for m in ("quee", "best-single", "oracle"):
        assert analysis.auc(study, m, cfg.eval.auc_range) == pytest.approx(auc[m][0])
    summary = analysis.budget_summary(budgets_df)
    assert len(summary) == len(study.methods) * len(cfg.eval.budgets) and (summary.n_seeds == 1).all()
    bs = summary[summary.method == "best-single"]
    assert (bs.diff_pp == 0).all() and (bs.verdict == "reference").all()
    rest = summary[(summary.method != "best-single") & summary.feasible]
    tie = (rest.diff_lo_pp <= 0) & (rest.diff_hi_pp >= 0)
    assert ((rest.verdict == "tie") == tie).all()
    over = summary[~summary.feasible & (summary.method != "best-single")]
    assert len(over) and (over.verdict == "over budget").all()  # ee-confidence cannot reach these budgets
    acc = analysis.format_budget_summary(summary, "accuracy")
    diff = analysis.format_budget_summary(summary, "diff")
    assert acc.shape == diff.shape == (len(study.methods), len(cfg.eval.budgets))
    assert "±" not in acc.iloc[0, 0] and (diff.loc["best-single"] == "reference").all()
    assert "[" in diff.loc["quee"].iloc[0]
    # against best-static: its own columns, best-static the reference
    static = analysis.budget_summary(budgets_df, against="best-static").set_index(["method", "budget"])
    pooled = budgets_df[budgets_df.seed == "all"].set_index(["method", "budget"])
    assert (static.loc["best-static"].verdict == "reference").all() and (static.loc["best-static"].diff_pp == 0).all()
    assert static.diff_pp.to_numpy() == pytest.approx(100 * pooled.loc[static.index].diff_vs_best_static.to_numpy())
    with pytest.raises(ValueError, match="against"):
        analysis.budget_summary(budgets_df, against="oracle")
    table = analysis.auc_table(auc).set_index("method")
    assert table.loc["best-single", "oracle_gap_share"] == 0 and table.loc["oracle", "oracle_gap_share"] == 1
    assert table.loc["oracle", "auc_mean"] >= table.loc["quee", "auc_mean"]


def test_paired_difference_and_quality_table(study):
    budgets = study.cfg.eval.budgets[:2]
    same = analysis.paired_difference(study, "quee", "quee", budgets, n_boot=100)
    assert (same.diff_pp == 0).all() and (same.verdict == "tie").all()
    d = analysis.paired_difference(study, "oracle", "best-single", budgets, n_boot=100)
    assert (d.diff_pp >= 0).all() and d.diff_pp.to_numpy() == pytest.approx(
        100 * (d.accuracy_method - d.accuracy_other).to_numpy())
    q = analysis.quality_table(study, {"quee": "k-means", "quee-raw": "raw"}, study.cfg.eval.auc_range)
    assert list(q.label) == ["k-means", "raw"] and q.auroc.between(0, 1).all() and q.brier.between(0, 1).all()
    assert isinstance(analysis.target_variants([2, 32]), dict) and "quee-K32" in analysis.target_variants([32])


def test_variants_sharing_one_fit_each_get_its_quality(study_digits_shared):
    study = study_digits_shared
    assert study.predictors["quee-K8"] is study.predictors["quee-mlp"]      # one config, one fit
    assert study.quality["quee-K8"] == study.quality["quee-mlp"]


@pytest.fixture(scope="module")
def study_digits_shared(digits_cfg, digits_prep):
    from quee_kit.study_run import run_study
    cfg = dataclasses.replace(digits_cfg, predictor=dataclasses.replace(digits_cfg.predictor, folds=2, epochs=3),
                              eval=dataclasses.replace(digits_cfg.eval, lambda_grid=10))
    variants = {"quee-mlp": ({"kind": "mlp"}, "all"), "quee-K8": ({"kind": "mlp", "K": 8}, "all")}
    return run_study(cfg, progress=False, variants=variants, prep=digits_prep)


def test_quality_by_depth_reuses_only_what_every_fit_shares(study):
    # the AUROC of 1 - max prob is computed once per split and depth and given to every fit: each row must
    # still hold that AUROC on its own rows, while each fit's own AUROC differs
    from sklearn.metrics import roc_auc_score

    from quee_kit.evaluate import quality_table
    from quee_kit.predictors import exit_now_rows
    table = quality_table([study], study.cfg.eval.budgets[:1])
    for split in ("calib", "test"):
        p, wrong, conf, depth = exit_now_rows(study.predictors["quee-raw"][split], study.prep.caches[split], study.opts)
        for t in (1, 2, "all"):
            k = slice(None) if t == "all" else depth == t
            rows = table[(table.split == split) & (table.depth == str(t)) & table.variant.isin(["quee", "quee-raw"])]
            assert len(rows) == 2 and (rows.auroc_maxprob == roc_auc_score(wrong[k], 1 - conf[k])).all()
            assert rows[rows.variant == "quee-raw"].auroc.iloc[0] == roc_auc_score(wrong[k], p[k])
    assert study.quality["quee"]["auroc_maxprob"] == study.quality["quee-raw"]["auroc_maxprob"]
    assert study.quality["quee"]["auroc"] != study.quality["quee-raw"]["auroc"]


def test_auc_of_an_infeasible_method_is_nan_not_zero():
    """A method that cannot meet some budget of the AUC range has no AUC there (NaN, shown *infeasible*),
    not an AUC of 0 and a large negative share of the oracle's gap."""
    grid = np.geomspace(0.01, 1.0, 30)
    feasible = pd.DataFrame({"cost_calib": grid, "acc_calib": grid ** 0.1, "cost_test": grid, "acc_test": grid ** 0.1})
    assert points_auc(feasible, [0.03, 0.15]) == pytest.approx(np.mean(
        [feasible.acc_test[feasible.cost_calib <= b + 1e-12].max() for b in np.linspace(0.03, 0.15, 41)]))
    late = feasible[feasible.cost_calib > 0.05]                   # meets 0.15 but not 0.03
    assert np.isnan(points_auc(late, [0.03, 0.15])) and np.isfinite(points_auc(late, [0.1, 0.15]))
    auc = {"oracle": [0.95], "best-single": [0.9], "quee": [0.92], "ee-confidence": [float("nan")]}
    table = analysis.auc_table(auc)
    assert list(table.method) == ["oracle", "quee", "best-single", "ee-confidence"]    # infeasible last
    row = table.set_index("method").loc["ee-confidence"]
    assert np.isnan(row.auc_mean) and np.isnan(row.oracle_gap_share)
    assert table.set_index("method").loc["quee", "oracle_gap_share"] == pytest.approx(0.4)
    shown = analysis.format_auc_table(table).set_index("method")
    assert (shown.loc["ee-confidence"] == "infeasible").all() and shown.loc["quee", "auc_mean"] == 0.92
