"""Tests of quee_kit.conditions: the room measure on a hand-built tree with known values."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from quee_kit.conditions import (decision_measures, flip_rows, grouped_auroc, level_dependence, next_exit_dependence,
                                 plan_rows, room_measures, stratified_auroc)
from quee_kit.paths import PathCache, PathTree
from quee_kit.predictors import OptionSpace
from quee_kit.quant import parse_level

# Two levels (reference, cheap), two blocks, monotone: nodes (0,), (1,), (0,0), (0,1), (1,1).
CORRECT = {(0,): [1, 1, 0, 0], (1,): [1, 0, 0, 1], (0, 0): [1, 1, 1, 0], (0, 1): [1, 0, 1, 1], (1, 1): [0, 0, 1, 1]}


@pytest.fixture()
def tiny():
    tree = PathTree([parse_level("w16a16"), parse_level("w4a4")], depth=2, family="monotone")
    assert len(tree) == 5
    logits = torch.zeros(len(tree), 4, 2)
    for path, c in CORRECT.items():   # class 0 is the label: correct iff logit 0 > logit 1
        logits[tree.index[path], :, 0] = torch.tensor(c, dtype=torch.float32) * 2 - 1
    cost = np.array([0.5, 0.1, 1.0, 0.6, 0.2])
    cache = PathCache(tree, logits, torch.zeros(4, dtype=torch.int64), cost, cost)
    opts = OptionSpace(tree, cost)
    err_hat = np.full((len(tree), 4, opts.n_options), np.nan)
    node = tree.index[(0,)]
    err_hat[node, :, 2] = 0.1                       # run to exit 2 at the reference: option (2-1)*2+0
    err_hat[node, :, 3] = [0.2, 0.5, 0.3, 0.15]     # run to exit 2 at w4a4: option (2-1)*2+1
    return cache, opts, err_hat


def test_level_dependence_known_shares(tiny):
    cache, opts, _ = tiny
    tree = opts.tree
    uniform = np.array([[tree.index[(q,) * t] for t in (1, 2)] for q in (0, 1)])
    got = level_dependence(cache.correct_np[uniform])
    # exit 1: ref 1100 vs cheap 1001; exit 2: ref 1110 vs cheap 0011
    np.testing.assert_allclose(got["dependent"], [0.5, 0.75])
    np.testing.assert_allclose(got["hurt"], [0.25, 0.5])
    np.testing.assert_allclose(got["help"], [0.25, 0.25])


def test_level_dependence_is_zero_with_one_level():
    c = np.random.default_rng(0).random((1, 3, 50)) > 0.5
    got = level_dependence(c)
    assert not got["dependent"].any() and not got["hurt"].any() and not got["help"].any()


def test_flip_rows_and_room_measures_known_values(tiny):
    cache, opts, err_hat = tiny
    rows = flip_rows(err_hat, cache, opts)
    # only node (0,) has a cheaper next level; A = (0,0) 1110, B = (0,1) 1011
    assert rows["flip"].tolist() == [False, True, False, True]
    assert rows["hurt"].tolist() == [False, True, False, False]
    np.testing.assert_allclose(rows["delta"], [0.1, 0.4, 0.2, 0.05])
    m = room_measures(err_hat, cache, opts)
    assert m["flip_rate"] == 0.5
    assert m["flip_auroc"] == pytest.approx(0.5)   # |delta| of flips 0.4, 0.05 vs 0.1, 0.2: 2 of 4 pairs
    assert m["hurt_auroc"] == pytest.approx(1.0)   # the one hurt sample has the largest delta
    assert m["dependent_share"] == pytest.approx([0.5, 0.75])


def test_decision_measures_known_values(tiny):
    """Where the decisions are made: node (0,) has a cheaper next level, (1,) has one child only."""
    cache, opts, err_hat = tiny
    tree = opts.tree
    rows = plan_rows(err_hat, cache, opts)
    flips = flip_rows(err_hat, cache, opts)          # two blocks: the only plan exit is the last one
    np.testing.assert_array_equal(rows["hurt"], flips["hurt"])
    np.testing.assert_allclose(rows["delta"], flips["delta"])
    dep = next_exit_dependence(cache, tree)
    assert dep[tree.index[(0,)]].tolist() == [False, True, False, True]   # (0,0) 1110 vs (0,1) 1011
    assert not dep[tree.index[(1,)]].any() and not dep[tree.depth == 2].any()
    (every,) = decision_measures(rows, dep, tree)
    assert every == {"decision_dependent": 0.25, "decision_hurt_rate": 0.25, "decision_hurt_auroc": 1.0,
                     "decisions": 8}
    seen = np.zeros(dep.shape, bool)
    seen[tree.index[(0,)], [0, 2]] = True            # two visited decisions: neither dependent nor hurt
    (part,) = decision_measures(rows, dep, tree, seen)
    assert part["decisions"] == 2 and part["decision_dependent"] == 0.0 and part["decision_hurt_rate"] == 0.0
    assert np.isnan(part["decision_hurt_auroc"])     # no hurt among them: no AUROC
    seen[tree.index[(0,)], 1] = True
    (part,) = decision_measures(rows, dep, tree, seen)
    assert part["decision_dependent"] == pytest.approx(1 / 3) and part["decision_hurt_auroc"] == 1.0


def test_grouped_auroc_equals_stratified_auroc():
    rng = np.random.default_rng(1)
    score, label, stratum = rng.random(500).round(1), rng.random(500) < 0.3, rng.integers(0, 12, 500)
    assert grouped_auroc(score, label, stratum) == pytest.approx(stratified_auroc(score, label, stratum)[0])


def test_stratified_auroc_ignores_scores_that_only_separate_strata():
    # stratum 0 mostly positives with score 5, stratum 1 mostly negatives with score 0: pooled AUROC > 0.5,
    # yet within each stratum the score is constant, so it ranks nothing.
    score = np.array([5, 5, 5, 0, 0, 0])
    label = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    stratum = np.array([0, 0, 0, 1, 1, 1])
    assert roc_auc_score(label, score) > 0.6
    assert stratified_auroc(score, label, stratum) == (pytest.approx(0.5), 3)


def test_stratified_auroc_equals_sklearn_in_one_stratum_and_skips_pure_strata():
    rng = np.random.default_rng(1)
    score, label = rng.normal(size=200), rng.random(200) < 0.3
    score[label] += 0.7
    got, used = stratified_auroc(np.r_[score, [9.0, 9.0]], np.r_[label, [True, True]], np.r_[np.zeros(200), [1, 1]])
    assert got == pytest.approx(roc_auc_score(label, score)) and used == label.sum()
    assert np.isnan(stratified_auroc([1.0, 2.0], [True, True], [0, 0])[0])


def test_dial_sweep_reports_best_static_as_quee_kit_run_does(study_cfg, study):
    """The sweep's gains are the budget table's paired differences (best-static the headline, best-single
    beside it) and its calib gains are the calib accuracies of the budget rule's picks."""
    from quee_kit.dial_sweep import dial_sweep
    from quee_kit.evaluate import budget_tables
    from tests.conftest import STUDY_OVERRIDES
    overrides = [f"cache_dir={study_cfg.cache_dir}", *STUDY_OVERRIDES]
    value = study_cfg.quant.residual                      # the fixture's own setting: its stored study is reused
    out = dial_sweep("configs/digits.yaml", {"quant.residual": [value]}, seeds=(0,), overrides=overrides)
    gains = out["gains"].set_index(["method", "budget"])
    budgets = study_cfg.eval.budgets
    table, _ = budget_tables([study], budgets, study_cfg.eval.bootstrap, study_cfg.eval.auc_range)
    pooled = table[table.seed == "all"].set_index(["method", "budget"])
    assert set(gains.value) == {str(value)}
    for m in ("quee", "quee-exit-only"):
        for b in budgets:
            g, r = gains.loc[(m, b)], pooled.loc[(m, b)]
            assert g["diff"] == pytest.approx(100 * r.diff_vs_best_static)
            assert (g.lo, g.hi) == pytest.approx((100 * r.diff_lo_static, 100 * r.diff_hi_static))
            assert g.diff_single == pytest.approx(100 * r.diff_vs_best_single)
            assert g.verdict == r.verdict_static and g.precision_diversity == r.precision_diversity
            acc = {o: study.at_budget(o, b, "calib")[2].accuracy for o in (m, "best-static", "best-single")}
            assert g.calib_gain == pytest.approx(100 * (acc[m] - acc["best-static"]))
            assert g.calib_gain_single == pytest.approx(100 * (acc[m] - acc["best-single"]))
    # best-static contains best-single: where best-single fits the budget on calib, best-static's pick is
    # at least as accurate on calib, so the gain against it is never larger
    fits = [b for b in budgets if study.select("best-single", b)[1]]
    assert fits
    g = gains.reset_index()
    g = g[g.budget.isin(fits)]
    assert (g.calib_gain <= g.calib_gain_single + 1e-9).all()
