"""Budget explorer: the numbers it shows are the library's (budget rule, simulate, oracle), the
per-sample views count what the outcome says, and a level set is never left. No timing asserts
(the update time is measured by benchmarks/bench_widgets.py)."""
import numpy as np
import pytest

from quee_kit.config import load_config
from quee_kit.evaluate import run_study
from quee_kit.policy import simulate
from quee_kit.widgets import (BudgetExplorer, budget_curve, examples_per_exit, exit_errors, exit_level_counts,
                              knob_points, level_set_presets, restrict_method)

pytest.importorskip("ipywidgets")

METHODS = ["quee", "quee-exit-only", "quee-quant-only", "static-quant", "ee-confidence", "ee-confidence@q",
           "ee-confidence-perexit", "best-single", "random", "oracle", "oracle-uniform"]


@pytest.fixture(scope="session")
def study(digits_cfg, digits_prep):
    # the same settings as tests/test_policy.py, so the cross-fitted predictors are shared
    cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", "model.epochs=15",
                                              "predictor.folds=3", "predictor.epochs=15", "eval.lambda_grid=40"])
    return run_study(cfg, progress=False, prep=digits_prep)


@pytest.fixture(scope="session")
def explorer(study):
    return BudgetExplorer(study, example_count=4)


def _budgets(study):
    """From infeasible (below every knob) to the full model, through the trade-off region."""
    c = study.points["quee"]["cost_calib"]
    return [float(c.min()) * 0.5, *np.quantile(c, [0.05, 0.2, 0.4]).tolist(), 0.3, 1.0]


@pytest.mark.parametrize("method", METHODS)
def test_budget_mode_equals_at_budget(study, explorer, method):
    for b in _budgets(study):
        r = explorer.update(budget=b, method=method, level_set=next(iter(explorer.level_sets)))
        knob, ok, out = study.at_budget(method, b)
        desc = study.methods[method].describe(knob)
        assert r["knob"] == knob and r["feasible"] == ok and r["entry"] == desc["entry"]
        assert r["accuracy"] == out.accuracy and r["cost"] == out.mean_cost
        assert r["mode"] == "budget" and r["budget"] == b and r["method"] == method
        np.testing.assert_equal(r["lambda"], float(desc["lambda"]))
        # the readout text the browser test reads
        html = explorer.readout.value
        assert f"accuracy: {out.accuracy:.4f}" in html and f"cost: {out.mean_cost:.4f}" in html


def test_lambda_mode_equals_simulate(study, explorer):
    opts, cache = study.opts, study.prep.caches["test"]
    for name in ("quee", "quee-quant-only"):
        m = study.methods[name]
        for q, level in enumerate(study.prep.tree.levels):
            for lam in (0.0, 0.003, 0.05, 1.0):
                r = explorer.update(lam=lam, entry=level.name, method=name, level_set=next(iter(explorer.level_sets)))
                ref = simulate(study.predictors[name]["test"], cache, opts, lam, q, m.mask, m.call_cost)
                assert r["mode"] == "lambda" and r["entry"] == level.name and r["lambda"] == lam
                assert r["accuracy"] == ref.accuracy and r["cost"] == ref.mean_cost
                _, out = explorer.compute("lambda", r["budget"], lam, name, entry=level.name)
                np.testing.assert_array_equal(out.node, ref.node)
    # entry "auto": the entry level the budget rule picks at the current budget
    b = _budgets(study)[2]
    r = explorer.update(budget=b, method="quee")
    r2 = explorer.update(lam=0.02, entry="auto")
    assert r2["entry"] == r["entry"]


def test_lambda_mode_oracle_and_fallback(study, explorer):
    r = explorer.update(lam=0.01, method="oracle")
    out = study.methods["oracle"].outcome("test", (0.01,))
    assert r["accuracy"] == out.accuracy and r["cost"] == out.mean_cost and r["knob"] == (0.01,)
    # a method without λ keeps the budget rule and says so
    r = explorer.update(lam=0.01, method="best-single")
    assert r["mode"] == "budget" and "no λ" in r["note"]
    assert r["accuracy"] == study.at_budget("best-single", r["budget"])[2].accuracy
    with pytest.raises(ValueError, match="lambda"):
        explorer.compute("lambda", 0.05, -1.0, "quee")
    with pytest.raises(ValueError, match="method"):
        explorer.compute("budget", 0.05, 0.0, "no-such-method")


def test_counts_and_examples_match_outcome(study, explorer):
    tree = study.prep.tree
    _, out = explorer.compute("budget", _budgets(study)[2], 0.0, "quee")
    counts = exit_level_counts(out, tree)
    assert counts.to_numpy().sum() == len(out.node) == study.prep.caches["test"].n
    assert list(counts.index) == list(range(1, tree.L + 1))
    assert list(counts.columns) == [lv.name for lv in tree.levels]
    for t in range(1, tree.L + 1):
        for q, lv in enumerate(tree.levels):
            assert counts.loc[t, lv.name] == np.sum((tree.depth[out.node] == t) & (tree.level[out.node] == q))
    E = study.predictors["quee"]["test"]
    max_prob = study.prep.caches["test"].features[..., 0].numpy()
    err = exit_errors(out.node, E, study.opts.exit_option, max_prob)
    i = np.arange(len(out.node))
    inner = tree.depth[out.node] < tree.L
    np.testing.assert_array_equal(err[inner], E[out.node, i, study.opts.exit_option[out.node]][inner])
    np.testing.assert_allclose(err[~inner], 1 - max_prob[out.node[~inner], i[~inner]])  # no decision at L
    assert np.isfinite(err).all()
    ex = examples_per_exit(out, tree, 4, err)
    for t, idx in ex.items():
        assert len(idx) == min(4, counts.loc[t].sum())
        assert (tree.depth[out.node[idx]] == t).all()
        assert (np.diff(err[idx]) >= 0).all()            # lowest predicted error first
        assert len(set(idx.tolist())) == len(idx)


@pytest.mark.parametrize("method", ["quee", "quee-exit-only", "static-quant", "ee-confidence@q",
                                    "ee-confidence-perexit", "best-single", "random", "oracle"])
def test_level_set_is_never_left(study, explorer, method):
    tree = study.prep.tree
    for name, qs in explorer.level_sets.items():
        for b in _budgets(study):
            r, out = explorer.compute("budget", b, 0.0, method, name)
            used = {q for n in np.unique(out.node) for q in tree.paths[n]}
            assert used <= set(qs), (name, b, used)
            assert r["levels"] == [tree.levels[q].name for q in qs]
        if method in ("quee", "oracle"):
            for lam in (0.0, 0.01, 1.0):
                _, out = explorer.compute("lambda", 0.05, lam, method, name)
                assert {q for n in np.unique(out.node) for q in tree.paths[n]} <= set(qs)


def test_level_set_points_and_restriction(study, explorer):
    tree = study.prep.tree
    presets = level_set_presets(tree.levels)
    full = next(iter(presets))
    assert presets[full] == tuple(range(len(tree.levels))) and all(0 in qs for qs in presets.values())
    # restricting to every level changes nothing: recomputed points equal the study's
    m = restrict_method(study.methods["quee"], presets[full])
    p = knob_points(m)
    np.testing.assert_array_equal(p[["cost_calib", "acc_calib", "cost_test", "acc_test"]].to_numpy(),
                                  study.points["quee"][["cost_calib", "acc_calib", "cost_test", "acc_test"]].to_numpy())
    assert explorer.points("quee", full) is study.points["quee"]
    # a smaller set: entries restricted, points memoized, and never better than its oracle at a budget
    ref_only = [n for n, qs in presets.items() if qs == (0,)][0]
    assert {k[0] for k in explorer.method("quee", ref_only).knobs} == {0}
    assert explorer.points("quee", ref_only) is explorer.points("quee", ref_only)
    r = explorer.update(method="quee", level_set=(0,), budget=0.3)
    assert r["level_set"] == ref_only and r["entry"] == tree.levels[0].name
    # an ad-hoc tuple becomes a named set
    r = explorer.update(level_set=(0, 1), budget=0.3)
    assert r["levels"] == [tree.levels[0].name, tree.levels[1].name]
    with pytest.raises(ValueError, match="no knob"):
        restrict_method(study.methods["ee-confidence"], (1,))


def test_budget_curve_is_the_budget_rule(study):
    p = study.points["best-single"]
    budgets = _budgets(study)
    df = budget_curve(p, budgets)
    for b, (_, row) in zip(budgets, df.iterrows()):
        _, _, out = study.at_budget("best-single", b)
        assert row["accuracy"] == out.accuracy and row["cost"] == out.mean_cost


def test_controls_drive_the_display(study, explorer):
    """What the browser does: moving a control updates the state, the readout and the image."""
    explorer.update(budget=_budgets(study)[1], method="quee", level_set=next(iter(explorer.level_sets)))
    png = explorer.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    b = _budgets(study)[4]
    explorer.budget_slider.value = b
    assert explorer.state["budget"] == explorer.budget_slider.value
    out = study.at_budget("quee", explorer.budget_slider.value)[2]
    assert f"accuracy: {out.accuracy:.4f}" in explorer.readout.value
    assert explorer.image.value != png
    explorer.mode_toggle.value = "lambda"
    assert explorer.state["mode"] == "lambda" and not explorer.lambda_slider.disabled
    assert explorer.budget_slider.disabled
    explorer.lambda_slider.value = 0.1
    assert explorer.state["lam"] == explorer.lambda_slider.value
    explorer.method_dropdown.value = "oracle"
    out = study.methods["oracle"].outcome("test", (explorer.lambda_slider.value,))
    assert f"accuracy: {out.accuracy:.4f}" in explorer.readout.value
    explorer.mode_toggle.value = "budget"
    assert explorer.state["mode"] == "budget" and explorer.lambda_slider.disabled


def test_snapshot_is_a_labelled_figure(study, explorer):
    before = dict(explorer.state)
    fig = explorer.snapshot(budget=0.3, method="quee")
    ax_curve, ax_hist = fig.axes[:2]
    assert "normalized BOPs" in ax_curve.get_xlabel() and "accuracy" in ax_curve.get_ylabel()
    assert "exit" in ax_hist.get_ylabel() and "level" in ax_hist.get_xlabel()
    assert "accuracy" in fig.texts[-1].get_text()
    assert explorer.state == before  # the widget is untouched
