"""Figures and tables the notebooks call: one seaborn theme, labelled axes with units.

Every figure function takes plain inputs (a DataFrame from :func:`quee_kit.prepare.exits_table`,
a :class:`~quee_kit.costs.CostModel`, a :class:`~quee_kit.prepare.Prepared`) and returns a
matplotlib ``Figure``; :func:`save_figure` writes it as PNG and PDF. Costs are normalized
BOPs, 1.0 = stem + every block at the reference level + the final head (see quee_kit.costs).
To add a figure: write a short function returning a Figure, label both axes with units
using the constants below, and call it from a notebook followed by :func:`save_figure`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .artifacts import atomic_write_bytes, atomic_write_csv
from .calibration import calibration_bins, expected_calibration_error
from .tables import cost_table, flop_check_table, tree_size_table

if TYPE_CHECKING:   # torch is imported only by the functions that need it: the explorer page
    from .costs import CostModel  # imports this module and must start in seconds

__all__ = ["set_theme", "save_figure", "save_table", "cost_label", "METHOD_STYLES", "method_style", "setting_label",
           "ACCURACY_LABEL", "EXIT_LABEL", "level_palette",
           "LEVEL_LABEL", "exit_accuracy_plot", "quant_heatmap", "cost_table", "cost_bar_plot",
           "path_cost_hist", "tree_size_table", "flop_check_table"]

# the labels and the method -> colour/marker map live in .styles (no seaborn, no torch: the explorer
# page imports them and must start in seconds); they are part of this module's interface
from .styles import (ACCURACY_LABEL, EXIT_LABEL, INFEASIBLE_COLOR, LEVEL_LABEL, METHOD_STYLES,  # noqa: E402,F401
                     cost_label, level_palette, method_style, setting_label)


def set_theme() -> None:
    """The one theme every figure of the kit uses."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind",
                  rc={"figure.dpi": 80, "savefig.dpi": 150, "figure.figsize": (6.4, 4.0)})


def save_figure(fig: plt.Figure, out_dir: str | Path, name: str, setting: str | None = None) -> list[Path]:
    """Write ``out_dir/name.png`` and ``out_dir/name.pdf`` (written atomically); returns both paths.
    ``setting`` (:func:`setting_label`) is added above the figure, so every saved figure names its study."""
    if setting:
        fig.text(0.5, 1.0, setting, ha="center", va="bottom", fontsize="small", color="0.3")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight")
        atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
        paths.append(out / f"{name}.{ext}")
    return paths


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, index: bool = False) -> Path:
    """Write ``out_dir/name.csv`` (written atomically); returns the path."""
    path = Path(out_dir) / f"{name}.csv"
    atomic_write_csv(path, df, index=index)
    return path


# ------------------------------------------------------------------------------- figures

def exit_accuracy_plot(exits_df: pd.DataFrame) -> plt.Figure:
    """Accuracy of every exit: one line per level, solid/dashed per split (an exits_table frame)."""
    fig, ax = plt.subplots()
    sns.lineplot(data=exits_df, x="exit", y="accuracy", hue="level", style="split", markers=True, ax=ax,
                 palette=level_palette(exits_df["level"].unique()))     # level colours, never a method's
    ax.set(xlabel=EXIT_LABEL, ylabel=ACCURACY_LABEL, xticks=sorted(exits_df.exit.unique()),
           title="Accuracy per exit")
    ax.legend(fontsize="small", ncol=2)
    return fig


def quant_heatmap(exits_df: pd.DataFrame, split: str = "test") -> plt.Figure:
    """Exit x level accuracy on ``split``, annotated; levels ordered as in the frame (reference first)."""
    df = exits_df[exits_df.split == split]
    grid = df.pivot_table(index="level", columns="exit", values="accuracy", sort=False)
    fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(grid) + 1.5))
    sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", cbar_kws={"label": f"{ACCURACY_LABEL}, {split}"},
                ax=ax)
    ax.set(xlabel=EXIT_LABEL, ylabel=LEVEL_LABEL, title=f"Accuracy per exit and precision level ({split})")
    return fig


def cost_bar_plot(costs: CostModel) -> plt.Figure:
    """Full-model cost per level, stacked as stem | all blocks | final head."""
    t = cost_table(costs).drop(columns="MACs")
    blocks = t[t.index.str.startswith("block")].sum()
    head = t.loc[f"head{costs.depth}"]
    df = pd.DataFrame({"stem": t.loc["stem"], "blocks": blocks,
                       f"final head ({head.iloc[0]:.4f}, too thin to see)": head})
    fig, ax = plt.subplots()
    df.plot.barh(stacked=True, ax=ax, width=0.7)
    ax.invert_yaxis()  # reference on top
    ax.set(xlabel=cost_label(costs.ref.name), ylabel=LEVEL_LABEL, title="Cost of the full model per level")
    return fig


def path_cost_hist(prep, bins: int = 40) -> plt.Figure:
    """Distribution of node costs (every head on the way evaluated) over the path tree, by depth."""
    tree = prep.tree
    cost = [prep.costs.path([tree.levels[q] for q in p]) for p in tree.paths]  # == PathCache.node_cost
    df = pd.DataFrame({"cost": cost, "depth": tree.depth})
    fig, ax = plt.subplots()
    sns.histplot(data=df, x="cost", hue="depth", multiple="stack", bins=bins, palette="viridis", ax=ax)
    ax.set(xlabel=cost_label(prep.costs.ref.name), ylabel="number of paths (tree nodes)",
           title=f"{len(tree)} paths: {tree.family} family, {len(tree.levels)} levels x {tree.L} blocks")
    return fig


# ------------------------------------------------------------- result figures (notebooks 05, 06, 08)

import numpy as np  # noqa: E402  (only the result figures below need these)
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

__all__ += ["TEST_ACCURACY_LABEL", "DIFF_LABEL", "DIFF_COLUMNS", "BUDGET_LABEL", "accuracy_cost_figure",
            "reliability_diagram", "k_sweep_plot", "noise_sweep_plot", "difficulty_plot", "quality_by_depth_plot"]

TEST_ACCURACY_LABEL = "test accuracy (fraction correct)"
DIFF_LABEL = "accuracy − best-static\n(percentage points, test)"
# the columns of budget_tables' paired difference against each reference method
DIFF_COLUMNS = {"best-static": ("diff_vs_best_static", "diff_lo_static", "diff_hi_static"),
                "best-single": ("diff_vs_best_single", "diff_lo", "diff_hi")}
BUDGET_LABEL = "budget (normalized BOPs, 1.0 = full model at the reference level)"
ERROR_PROB_LABEL = "predicted probability of error ê (exit now)"


def accuracy_cost_figure(curves: pd.DataFrame, budgets_df: pd.DataFrame, c_min, c_sat, methods,
                         diff_methods=None, ref: str | None = None, against: str = "best-static") -> plt.Figure:
    """The main figure. Left: test accuracy vs achieved test cost under the budget rule, one line per
    method (mean over seeds, band = min–max over seeds), ``c_min`` and ``c_sat`` marked, oracles dashed.
    Right: pooled paired difference vs ``against`` (``best-static``, the strongest static baseline, or
    ``best-single``, the paper's; percentage points) at each budget of ``budgets_df`` with its 95%
    hierarchical bootstrap interval, per method of ``diff_methods`` (default: QuEE and its ablations).

    curves: :func:`quee_kit.analysis.budget_curves` output (``method, seed, budget, cost, accuracy``);
    budgets_df: :func:`quee_kit.evaluate.budget_tables` rows; c_min, c_sat: floats or one per seed.
    """
    if against not in DIFF_COLUMNS:
        raise ValueError(f"against must be one of {sorted(DIFF_COLUMNS)} (got {against!r})")
    pooled = budgets_df[budgets_df.seed == "all"]
    if diff_methods is None:
        diff_methods = [m for m in pooled.method.unique() if m.startswith("quee")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13.0, 4.8), gridspec_kw={"width_ratios": [1.25, 1]})
    shown = []      # the feasible points alone set the y range
    for m in methods:
        g = curves[curves.method == m].assign(ok=curves.get("feasible", True)).groupby("budget").agg(
            cost=("cost", "mean"), acc=("accuracy", "mean"), lo=("accuracy", "min"), hi=("accuracy", "max"),
            seeds=("accuracy", "size"), ok=("ok", "all")).sort_index()
        st, ok, over = method_style(m), g[g.ok], g[~g.ok]
        ax.plot(ok.cost, ok.acc, **st, ms=4, label=m, lw=2.2 if m == "quee" else 1.5)
        if ok.seeds.max() > 1:
            ax.fill_between(ok.cost, ok.lo, ok.hi, color=st["color"], alpha=0.18, lw=0)
        # over budget on calib (its cheapest knob, costlier than the budget): small, grey, off the line
        ax.plot(over.cost, over.acc, ls="none", marker=st["marker"], ms=2.5, color=INFEASIBLE_COLOR, zorder=1)
        shown += [*ok.lo, *ok.hi]
    ax.set_ylim(*_padded(shown, 0.05, 0.01))
    for x, name, ls in ((float(np.mean(c_min)), "$c_{min}$", ":"), (float(np.mean(c_sat)), "$c_{sat}$", "-.")):
        ax.axvline(x, color="0.35", ls=ls, lw=1.2)
        ax.annotate(f"{name} = {x:.3g}", (x, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    ha="right", va="bottom", fontsize="small", color="0.25")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0) if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())             # plain numbers, no crowded 10^x labels
    n_seeds = int(curves.seed.nunique())
    band = "band: min–max over seeds" if n_seeds > 1 else "one seed"
    ax.set(xlabel=cost_label(ref), ylabel=TEST_ACCURACY_LABEL,
           title=f"Accuracy vs cost under the budget rule ({band})")
    budgets = sorted(pooled.budget.unique())
    per_seed = budgets_df[budgets_df.seed != "all"]
    feasible = (per_seed.groupby(["method", "budget"]).feasible.all() if "feasible" in per_seed else None)
    width = 0.8 / max(len(diff_methods), 1)
    over, span = [], [0.0]     # the feasible intervals (and 0) alone set the panel's scale
    for j, m in enumerate(diff_methods):
        d = pooled[pooled.method == m].set_index("budget").loc[budgets]
        x = np.arange(len(budgets)) - 0.4 + width * (j + 0.5)
        y, lo, hi = (100 * d[c].to_numpy(dtype=float) for c in DIFF_COLUMNS[against])
        ok = np.array([feasible is None or bool(feasible.get((m, b), True)) for b in budgets])
        st = method_style(m)   # over budget: not a fair comparison, so no interval, no colour, no say in the scale
        bx.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt=st["marker"], ms=5, capsize=3,
                    color=st["color"], label=m)
        span += [*lo[ok], *hi[ok]]
        over += [(xi, yi, st["marker"]) for xi, yi in zip(x[~ok], y[~ok])]
    bx.axhline(0, color="0.2", lw=1)
    ylim = bx.set_ylim(*_padded(span, 0.08, 0.5))
    for xi, yi, marker in over:    # an off-scale one sits at the panel's edge
        bx.plot(xi, float(np.clip(yi, *ylim)), marker, ms=3, mfc="white", mec=INFEASIBLE_COLOR, zorder=2)
    if over:
        bx.annotate("small grey: over budget on calib, not comparable", (0.01, 0.01), xycoords="axes fraction",
                    fontsize="small", color="0.3")
    bx.set_xticks(np.arange(len(budgets)), [f"{b:g}" for b in budgets])
    bx.set(xlabel=BUDGET_LABEL.replace("the reference level", ref) if ref else BUDGET_LABEL,
           ylabel=DIFF_LABEL.replace("best-static", against),
           title=f"Paired difference vs {against}, 95% bootstrap CI ({n_seeds} seed{'s' * (n_seeds > 1)})")
    _legend_below(fig, (ax, bx), ncol=7)   # one legend for both panels (same colour and marker per method)
    return fig


def _padded(values, frac: float, min_span: float) -> tuple[float, float]:
    """(lo, hi) of the finite ``values``, widened by ``frac`` of their span (at least ``min_span``) each side."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)] if np.isfinite(v).any() else np.zeros(1)
    pad = frac * max(float(v.max() - v.min()), min_span)
    return float(v.min()) - pad, float(v.max()) + pad


def _legend_below(fig: plt.Figure, axes, ncol: int) -> None:
    """One legend (every label of ``axes`` once) under the panels, off every data point."""
    seen = {}
    for ax in ([axes] if isinstance(axes, plt.Axes) else axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    handles, labels = list(seen.values()), list(seen)
    rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.03, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize="small", frameon=False)


def reliability_diagram(p, wrong, n_bins: int = 15, label: str = "predictor", ax=None) -> plt.Figure:
    """Observed error rate vs mean predicted error probability in ``n_bins`` equal-width bins (the
    bins of the ECE in :func:`quee_kit.predictors.predictor_quality`), with 95% Wilson intervals per
    bin (sparse high-ê bins are noisy), the diagonal (perfect calibration) and, as grey bars on a
    hidden second axis, the share of rows per bin. p, wrong: (R,) predictions and 0/1 errors, e.g. from
    :func:`quee_kit.predictors.exit_now_rows`. Draws on ``ax`` when given; ``label`` is its title."""
    p, wrong = np.asarray(p, float), np.asarray(wrong, float)
    bins = calibration_bins(p, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    seen = count > 0
    n = count[seen]
    mean_p = np.bincount(bins, p, n_bins)[seen] / n
    rate = np.bincount(bins, wrong, n_bins)[seen] / n
    ece = expected_calibration_error(p, wrong, n_bins)
    z = 1.96                                                          # Wilson score interval
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    fig = ax.figure if ax is not None else plt.subplots(figsize=(4.8, 4.4))[0]
    ax = ax if ax is not None else fig.axes[0]
    share = ax.twinx()
    share.bar((np.arange(n_bins) + 0.5) / n_bins, count / len(p), width=1 / n_bins, color="0.6", alpha=0.35)
    share.set_ylim(0, 4 * max(count.max() / len(p), 1e-9))      # bars fill the bottom quarter at most
    share.set_yticks([])
    share.grid(False)
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="perfectly calibrated")
    ax.errorbar(mean_p, rate, yerr=[np.clip(rate - centre + half, 0, None), np.clip(centre + half - rate, 0, None)],
                marker="o", ms=4, capsize=2, label=f"observed, 95% CI (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=ERROR_PROB_LABEL, ylabel="observed error rate (fraction wrong)",
           title=label)
    handles, names = ax.get_legend_handles_labels()
    handles.append(Patch(color="0.6", alpha=0.35))
    ax.legend(handles, names + ["share of rows per bin"], fontsize="small", loc="upper left")
    return fig


def k_sweep_plot(df: pd.DataFrame) -> plt.Figure:
    """Predictor quality (Brier, ECE, AUROC) and QuEE's AUC vs the number of k-means cells K per depth.

    df: :func:`quee_kit.analysis.k_sweep_table` (rows with ``targets == "kmeans"`` are the sweep; other
    rows, e.g. raw 0/1 labels, are drawn as horizontal reference lines)."""
    sweep = df[df.targets == "kmeans"].sort_values("K")
    refs = df[df.targets != "kmeans"]
    panels = [("brier", "Brier score (lower is better)"), ("ece", "ECE (lower is better)"),
              ("auroc", "AUROC of error detection"), ("auc", "QuEE AUC (mean test accuracy)")]
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.8))
    ref_colors = dict(zip(refs.targets, sns.color_palette("colorblind")[1:]))
    for ax, (col, ylabel) in zip(axes, panels):
        ax.plot(sweep.K, sweep[col], marker="o", label="k-means targets")
        for _, r in refs.iterrows():
            ax.axhline(r[col], ls="--", color=ref_colors[r.targets], label=f"{r.targets} targets")
        if col == "auroc":
            ax.axhline(sweep.auroc_maxprob.iloc[0], ls=":", color="0.3", label="1 − max prob")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sweep.K, [f"{k:g}" for k in sweep.K])
        zoomed = bool(ax.get_ylim()[0] > 0)                       # say so when the axis does not start at 0
        ax.set(xlabel="K (k-means cells per depth)", ylabel=ylabel + ("\n(zoomed: axis not from 0)" * zoomed))
    fig.suptitle("Discretized targets: number of cells K (test split)")
    _legend_below(fig, axes[2], ncol=4)
    return fig


def noise_sweep_plot(df: pd.DataFrame) -> plt.Figure:
    """Left: QuEE's paired test accuracy difference vs best-single (percentage points, 95% bootstrap
    interval) as the predictions get noisier, one line per budget. Right: the noisy predictor's
    AUROC of error detection. df: :func:`quee_kit.analysis.predictor_noise_sweep`."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.0, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    budgets = sorted(df.budget.unique())
    colors = dict(zip(budgets, sns.color_palette("viridis", len(budgets))))
    span = float(np.ptp(df.sigma)) or 1.0
    for j, b in enumerate(budgets):
        d = df[df.budget == b].sort_values("sigma")
        x = d.sigma + span * 0.012 * (j - (len(budgets) - 1) / 2)   # small dodge so intervals stay apart
        y = 100 * d.diff_vs_best_single
        ax.errorbar(x, y, yerr=[y - 100 * d.diff_lo, 100 * d.diff_hi - y], marker="o", ms=4, capsize=2,
                    color=colors[b], label=f"budget {b:g}")
    ax.axhline(0, color="0.2", lw=1)
    ax.set(xlabel="predictor noise σ (logit ê + σ·N(0,1))", ylabel=DIFF_LABEL,
           title="QuEE with noisier predictors vs best-single")
    q = df.groupby("sigma")[["auroc", "brier"]].first().reset_index()
    bx.plot(q.sigma, q.auroc, marker="o", color="C0")
    bx.set(xlabel="predictor noise σ (logit ê + σ·N(0,1))", ylabel="AUROC of error detection (test)",
           title="Predictor quality")
    _legend_below(fig, ax, ncol=len(budgets))
    return fig


def difficulty_plot(df: pd.DataFrame, ref: str | None = None) -> plt.Figure:
    """Test accuracy (left) and mean cost (right) per difficulty group, best-single beside each method
    (points joined by lines, so that differences of a few points stay visible).

    df: :func:`quee_kit.analysis.by_difficulty` output, one or several methods stacked (``method``
    column; best-single is taken from the first method's rows)."""
    methods = list(dict.fromkeys(df.method))
    first = df[df.method == methods[0]].sort_values("group")
    series = [("best-single", first.accuracy_best_single, first.mean_cost_best_single)]
    series += [(m, d.accuracy_method, d.mean_cost_method)
               for m, d in ((m, df[df.method == m].sort_values("group")) for m in methods)]
    labels = [f"{g}\n[{lo:.2f}, {hi:.2f}]" for g, lo, hi in zip(first.group, first.maxprob_lo, first.maxprob_hi)]
    x = first.group.to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.4))
    for name, acc, cost in series:
        for ax, y in zip(axes, (acc, cost)):
            ax.plot(x, y.to_numpy(), **method_style(name), label=name, lw=2.2 if name == "quee" else 1.5)
    xlabel = "difficulty group (1 = easiest)\n[min, max] max prob of exit 1 at the reference level"
    budget = float(first.budget.iloc[0])
    n = int(first.n.sum())
    axes[0].set(xlabel=xlabel, ylabel=TEST_ACCURACY_LABEL, title=f"Accuracy per group, budget {budget:g} ({n} test samples)")
    axes[1].set(xlabel=xlabel, ylabel="mean cost per sample\n(normalized BOPs)",   # short: no overflow
                title=f"Where the compute goes (cost 1.0 = full model at {ref or 'the reference level'})")
    for ax in axes:
        ax.set_xticks(x, labels)
    _legend_below(fig, axes[0], ncol=len(series))
    return fig


def quality_by_depth_plot(quality: pd.DataFrame, split: str = "test") -> plt.Figure:
    """AUROC of error detection (with plain 1 − max prob, dotted) and ECE of the exit-now estimate per
    decision depth, one line per predictor variant. quality: :func:`quee_kit.evaluate.quality_table`
    (rows of ``split`` with a numeric ``depth``; several seeds are averaged)."""
    q = quality[(quality.split == split) & quality.depth.str.isdigit()].assign(depth=lambda d: d.depth.astype(int))
    q = q.groupby(["variant", "depth"], as_index=False)[["auroc", "auroc_maxprob", "ece"]].mean()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.0, 3.8))
    for v, g in q.groupby("variant", sort=False):
        st = method_style(v)
        a1.plot(g.depth, g.auroc, marker=st["marker"], color=st["color"], label=v)
        a2.plot(g.depth, g.ece, marker=st["marker"], color=st["color"], label=v)
    mp = q.groupby("depth").auroc_maxprob.mean()
    a1.plot(mp.index, mp.values, ls=":", color="0.3", label="1 − max prob")
    a1.set(xlabel="decision depth t (after block t)", ylabel=f"AUROC of error detection ({split})")
    a2.set(xlabel="decision depth t (after block t)", ylabel=f"ECE of ê, exit now ({split})")
    for ax in (a1, a2):
        ax.set_xticks(sorted(q.depth.unique()))
    a1.legend(fontsize="small")
    fig.tight_layout()
    return fig
