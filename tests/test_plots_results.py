"""Result figures (notebooks 05, 06, 08) on synthetic inputs: labelled axes with units, one artist per
method, the numbers drawn are the numbers given."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from quee_kit import plots

METHODS = ["quee", "best-single", "oracle"]
BUDGETS = [0.03, 0.05, 0.08]


pytestmark = pytest.mark.usefixtures("plot_theme")


def _labelled(ax):
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip()


@pytest.fixture()
def curves():
    rng = np.random.default_rng(0)
    grid = np.geomspace(0.01, 1.0, 12)
    return pd.DataFrame([{"method": m, "seed": s, "budget": b, "cost": b * 0.95, "feasible": True,
                          "accuracy": 0.9 - 0.02 / b ** 0.3 + 0.01 * rng.standard_normal() + (m == "oracle") * 0.05}
                         for m in METHODS for s in (0, 1, 2) for b in grid])


@pytest.fixture()
def budgets_df():
    rows = []
    for m in ["quee", "quee-raw", "best-single", "oracle"]:
        for b in BUDGETS:
            d = {"quee": 0.004, "quee-raw": -0.002, "best-single": 0.0, "oracle": 0.08}[m]
            ds = d - 0.003      # against best-static: another number, so the panel's choice shows
            for seed in ("all", "0"):
                rows.append({"method": m, "budget": b, "seed": seed, "accuracy": 0.9, "cost": b,
                             "diff_vs_best_single": d, "diff_lo": d - 0.01, "diff_hi": d + 0.01,
                             "diff_vs_best_static": ds, "diff_lo_static": ds - 0.01, "diff_hi_static": ds + 0.01})
    return pd.DataFrame(rows)


def test_accuracy_cost_figure(curves, budgets_df):
    fig = plots.accuracy_cost_figure(curves, budgets_df, [0.011, 0.012], 0.2, METHODS)
    left, right = fig.axes[:2]
    for ax in (left, right):
        _labelled(ax)
    assert "normalized BOPs" in left.get_xlabel() and left.get_xscale() == "log"
    assert "percentage points" in right.get_ylabel()
    lines = {l.get_label(): l for l in left.get_lines() if not l.get_label().startswith("_")}
    assert set(lines) == set(METHODS)                       # one line per method
    assert lines["oracle"].get_linestyle() == "--" and lines["quee"].get_linestyle() == "-"
    mean = curves[curves.method == "quee"].groupby("budget").accuracy.mean().to_numpy()
    assert lines["quee"].get_ydata() == pytest.approx(mean)  # the mean over seeds is drawn
    vlines = [l for l in left.get_lines() if l.get_label().startswith("_") and len(set(l.get_xdata())) == 1]
    xs = sorted(float(l.get_xdata()[0]) for l in vlines)
    assert xs == pytest.approx([0.0115, 0.2])                # c_min (mean over seeds) and c_sat
    assert len(left.collections) == len(METHODS)             # one band per method (3 seeds)
    # right panel: default diff methods are quee and its ablations, in percentage points
    legend = [t.get_text() for t in fig.legends[0].get_texts()]   # one legend under both panels
    assert legend == [*METHODS, "quee-raw"]
    assert left.get_legend() is None and right.get_legend() is None   # no legend on the data
    bars = {c.get_label(): c for c in right.containers}       # one error-bar series per method
    assert set(bars) == {"quee", "quee-raw"}
    # the headline comparison is best-static (its columns are drawn); best-single on request
    assert "best-static" in right.get_ylabel() and "best-static" in right.get_title()
    assert np.asarray(bars["quee"].lines[0].get_ydata(), float) == pytest.approx([0.1] * 3)
    assert np.asarray(bars["quee-raw"].lines[0].get_ydata(), float) == pytest.approx([-0.5] * 3)
    single = plots.accuracy_cost_figure(curves, budgets_df, [0.011, 0.012], 0.2, METHODS, against="best-single")
    bars = {c.get_label(): c for c in single.axes[1].containers}
    assert "best-single" in single.axes[1].get_ylabel()
    assert np.asarray(bars["quee"].lines[0].get_ydata(), float) == pytest.approx([0.4] * 3)
    assert np.asarray(bars["quee-raw"].lines[0].get_ydata(), float) == pytest.approx([-0.2] * 3)
    with pytest.raises(ValueError, match="against"):
        plots.accuracy_cost_figure(curves, budgets_df, 0.011, 0.2, METHODS, against="oracle")


def test_reliability_diagram():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 5000)
    err = (rng.uniform(0, 1, 5000) < p).astype(float)       # calibrated by construction
    fig = plots.reliability_diagram(p, err, n_bins=10, label="calibrated")
    ax = fig.axes[0]
    _labelled(ax)
    assert ax.get_title() == "calibrated"
    (bars,) = ax.containers                                  # the observed rates with their intervals
    curve = bars.lines[0]
    x, y = np.asarray(curve.get_xdata(), float), np.asarray(curve.get_ydata(), float)
    assert len(x) == 10 and np.abs(y - x).max() < 0.06
    assert "ECE" in bars.get_label() and len(ax.get_legend().get_texts()) == 3
    # drawing into given axes keeps that figure
    fig2, axes = plt.subplots(1, 2)
    assert plots.reliability_diagram(p, err, ax=axes[1]) is fig2


def test_k_sweep_plot():
    df = pd.DataFrame([{"K": float(k), "targets": "kmeans", "brier": 0.1, "ece": 0.02 + k / 1e4, "auroc": 0.86,
                        "auroc_maxprob": 0.85, "auc": 0.8} for k in (2, 8, 32)]
                      + [{"K": np.nan, "targets": "raw", "brier": 0.1, "ece": 0.03, "auroc": 0.87,
                          "auroc_maxprob": 0.85, "auc": 0.81}])
    fig = plots.k_sweep_plot(df)
    assert len(fig.axes) == 4
    for ax in fig.axes:
        _labelled(ax)
        assert [l for l in ax.get_lines() if l.get_label() == "raw targets"]
    assert list(fig.axes[1].get_lines()[0].get_ydata()) == pytest.approx([0.0202, 0.0208, 0.0232])


def test_noise_sweep_plot():
    df = pd.DataFrame([{"sigma": s, "budget": b, "accuracy": 0.9 - 0.01 * s, "best_single_accuracy": 0.9,
                        "diff_vs_best_single": -0.01 * s, "diff_lo": -0.01 * s - 0.01, "diff_hi": -0.01 * s + 0.01,
                        "cost": b, "auroc": 0.86 - 0.05 * s, "brier": 0.1 + 0.01 * s}
                       for s in (0, 0.5, 1, 2) for b in BUDGETS])
    fig = plots.noise_sweep_plot(df)
    for ax in fig.axes[:2]:
        _labelled(ax)
    series = {c.get_label(): c for c in fig.axes[0].containers}  # one error-bar line per budget
    assert set(series) == {f"budget {b:g}" for b in BUDGETS}
    y = np.asarray(series["budget 0.05"].lines[0].get_ydata(), float)
    assert y == pytest.approx([0, -0.5, -1, -2])                 # percentage points
    assert "σ" in fig.axes[0].get_xlabel()


def test_difficulty_plot():
    df = pd.concat([pd.DataFrame({"group": [1, 2, 3, 4], "n": 150, "maxprob_lo": [0.9, 0.7, 0.5, 0.2],
                                  "maxprob_hi": [1.0, 0.9, 0.7, 0.5], "accuracy_method": [0.99, 0.9, 0.8, a],
                                  "accuracy_best_single": [0.99, 0.88, 0.75, 0.5],
                                  "mean_cost_method": 0.05, "mean_cost_best_single": 0.05, "method": m,
                                  "budget": 0.05}) for m, a in (("quee", 0.55), ("oracle", 0.8))])
    fig = plots.difficulty_plot(df)
    acc_ax, cost_ax = fig.axes
    for ax in (acc_ax, cost_ax):
        _labelled(ax)
        lines = {l.get_label(): l for l in ax.get_lines()}
        assert set(lines) == {"best-single", "quee", "oracle"}   # one line per method, 4 groups each
        assert all(len(l.get_xdata()) == 4 for l in lines.values())
    assert "normalized BOPs" in cost_ax.get_ylabel()
    acc = {l.get_label(): list(l.get_ydata()) for l in acc_ax.get_lines()}
    assert acc["quee"] == [0.99, 0.9, 0.8, 0.55] and acc["best-single"] == [0.99, 0.88, 0.75, 0.5]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["best-single", "quee", "oracle"]


def test_quality_by_depth_plot(plot_theme):
    rows = [{"variant": v, "depth": str(t), "split": sp, "seed": s, "auroc": a + 0.01 * t, "auroc_maxprob": 0.8,
             "ece": e, "n": 10} for v, a, e in [("quee", 0.8, 0.01), ("quee-mlp", 0.7, 0.05)]
            for t in (1, 2, 3) for sp in ("calib", "test") for s in (0, 1)]
    rows.append({"variant": "quee", "depth": "all", "split": "test", "seed": 0, "auroc": 0.0, "auroc_maxprob": 0.0,
                 "ece": 9.0, "n": 10})
    fig = plots.quality_by_depth_plot(pd.DataFrame(rows))
    a1, a2 = fig.axes
    lines = {l.get_label(): l for l in a1.get_lines()}
    assert set(lines) == {"quee", "quee-mlp", "1 − max prob"}            # the "all" row is not a depth
    assert list(lines["quee"].get_xdata()) == [1, 2, 3]
    assert list(lines["quee"].get_ydata()) == pytest.approx([0.81, 0.82, 0.83])
    assert {l.get_label(): list(l.get_ydata()) for l in a2.get_lines()}["quee-mlp"] == pytest.approx([0.05] * 3)
    assert "depth" in a1.get_xlabel() and "AUROC" in a1.get_ylabel() and "ECE" in a2.get_ylabel()


def test_over_budget_points_cannot_mislead(curves, budgets_df):
    """A method over budget on calib at a budget (its cheapest knob shown, costlier than the budget) is drawn
    small and grey, off its line, and sets neither panel's range: a +6.3-point "win" at a budget the method
    cannot meet must not look like the biggest one."""
    curves = curves.copy()
    low = (curves.method == "quee") & (curves.budget < 0.02)
    curves.loc[low, ["feasible", "accuracy"]] = [False, 0.999]         # above every feasible point
    df = budgets_df.copy()
    over = (df.method == "quee-raw") & (df.budget == BUDGETS[0])
    df.loc[over, ["diff_vs_best_static", "diff_lo_static", "diff_hi_static"]] = [0.063, 0.05, 0.076]
    df.loc[over & (df.seed != "all"), "feasible"] = False
    df["feasible"] = df["feasible"].fillna(True).astype(bool)
    fig = plots.accuracy_cost_figure(curves, df, 0.011, 0.2, METHODS)
    left, right = fig.axes[:2]
    line = {l.get_label(): l for l in left.get_lines()}["quee"]
    assert len(line.get_xdata()) == curves[(curves.method == "quee") & ~low].budget.nunique()
    assert left.get_ylim()[1] < 0.999                                  # the over-budget points set no range
    grey = [l for l in left.get_lines() if l.get_label().startswith("_") and l.get_color() == plots.INFEASIBLE_COLOR]
    assert sum(len(l.get_xdata()) for l in grey) == curves[low].budget.nunique()
    assert all(l.get_markersize() < line.get_markersize() for l in grey)
    bars = {c.get_label(): c for c in right.containers}
    assert len(bars["quee-raw"].lines[0].get_xdata()) == len(BUDGETS) - 1      # no interval, no colour
    lo, hi = right.get_ylim()
    assert hi < 6.3 and lo <= -0.5 - 1 and hi >= 0.1 + 1                     # the feasible intervals fit
    edge = [l for l in right.get_lines() if l.get_markeredgecolor() == plots.INFEASIBLE_COLOR]
    assert len(edge) == 1 and edge[0].get_ydata()[0] == pytest.approx(hi)   # off-scale: at the edge
