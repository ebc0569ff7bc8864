"""One dial at a time: QuEE − best-static (and − best-single; pooled over seeds, hierarchical bootstrap and
a t-interval over the seeds' paired differences) and the room for
per-input precision (:mod:`quee_kit.conditions`) against a config key — a data dial
(``data.difficulty``, ``data.heterogeneity``) or a quantization choice (``quant.residual``,
``quant.act_granularity``). Notebook 09 calls these; every setting's artifacts are cached as usual.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from .conditions import calib_gain, room_summary, room_table
from .config import load_config
from .evaluate import budget_tables
from .study import ALL_VARIANTS, Study
from .study_run import run_study

__all__ = ["setting_configs", "setting_studies", "dial_sweep", "dial_sweep_plot"]

SWEEP_VARIANTS = ("quee", "quee-exit-only")   # one predictor fit per seed serves both


def setting_configs(config, dials: dict, seeds=(0,), overrides=(), fast: bool = False,
                    variants=SWEEP_VARIANTS) -> list[tuple[object, dict]]:
    """``(cfg, variants)`` of every study :func:`dial_sweep` runs (one per dial value and seed): what
    :func:`quee_kit.warm.warm` builds ahead of it."""
    chosen = {k: ALL_VARIANTS[k] for k in variants}
    return [(dataclasses.replace(load_config(config, [*overrides, f"{key}={json.dumps(v)}"], fast=fast), seed=int(s)),
             chosen) for key, values in dials.items() for v in values for s in seeds]


def setting_studies(config, seeds, overrides=(), fast: bool = False, variants=SWEEP_VARIANTS,
                    progress: bool = False) -> tuple[object, list[Study]]:
    """The config (``overrides`` applied) and one :class:`Study` per seed with only ``variants`` fitted."""
    cfg = load_config(config, list(overrides), fast=fast)
    chosen = {k: ALL_VARIANTS[k] for k in variants}
    return cfg, [run_study(dataclasses.replace(cfg, seed=int(s)), progress, chosen) for s in seeds]


def dial_sweep(config, dials: dict, seeds=(0,), overrides=(), fast: bool = False, variants=SWEEP_VARIANTS,
               progress: bool = False) -> dict[str, pd.DataFrame]:
    """For every ``key: [values]`` of ``dials`` and each value (the others at the config's setting):

    ``gains``: per method of ``variants`` and budget (the config's ``eval.budgets``), the seed-pooled test
    difference to best-static, the strongest static baseline, with its 95% hierarchical-bootstrap interval
    (``diff, lo, hi``, points), the t-interval over per-seed differences (``t_lo, t_hi``; NaN with one
    seed) and the verdict (win/loss only when both exclude 0), as ``quee-kit run`` reports them; the same
    against best-single (``diff_single, lo_single, hi_single``); the method's ``precision_diversity``; and
    ``calib_gain`` (vs best-static) and ``calib_gain_single`` (points, seed means): the calib evidence that
    may choose a setting.
    ``room``: :func:`quee_kit.conditions.room_summary` per split, and the reference accuracy (test).
    """
    gains, room = [], []
    for key, values in dials.items():
        for v in values:
            cfg, studies = setting_studies(config, seeds, [*overrides, f"{key}={json.dumps(v)}"], fast, variants,
                                           progress)
            budgets = cfg.eval.budgets
            table, _ = budget_tables(studies, budgets, cfg.eval.bootstrap, cfg.eval.auc_range)
            pooled = table[(table.seed == "all") & table.method.isin(variants)]
            calib = {other: pd.concat([calib_gain(s, m, budgets, other) for s in studies for m in variants])
                     .groupby(["method", "budget"])["calib_gain"].mean() for other in ("best-static", "best-single")}
            for _, r in pooled.iterrows():
                gains.append({"dial": key, "value": str(v), "method": r.method, "budget": r.budget,
                              "diff": 100 * r.diff_vs_best_static, "lo": 100 * r.diff_lo_static,
                              "hi": 100 * r.diff_hi_static, "t_lo": 100 * float(r.diff_t_lo_static),
                              "t_hi": 100 * float(r.diff_t_hi_static), "verdict": r.verdict_static,
                              "diff_single": 100 * r.diff_vs_best_single, "lo_single": 100 * r.diff_lo,
                              "hi_single": 100 * r.diff_hi, "precision_diversity": r.precision_diversity,
                              "calib_gain": calib["best-static"][(r.method, r.budget)],
                              "calib_gain_single": calib["best-single"][(r.method, r.budget)], "seeds": len(studies)})
            ref = np.mean([s.points["static-quant"]["acc_test"].iloc[0] for s in studies])
            for split, m in room_summary(room_table(studies)).items():
                room.append({"dial": key, "value": str(v), "split": split, "reference_accuracy": ref, **m})
    return {"gains": pd.DataFrame(gains), "room": pd.DataFrame(room)}


def dial_sweep_plot(gains: pd.DataFrame, room: pd.DataFrame, split: str = "test"):
    """Per dial (columns): top, QuEE − best-static on test (points, 95% interval) per budget, filled
    markers for ``quee`` and hollow for ``quee-exit-only``; bottom, the room: share of samples whose
    last-exit correctness depends on the level and oracle − oracle-uniform (points), with the stratified
    AUROC of "a cheaper level hurts" on the right axis (0.5 = unpredictable)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    dials = list(dict.fromkeys(gains["dial"]))
    fig, axes = plt.subplots(2, len(dials), figsize=(4.6 * len(dials), 7.0), squeeze=False, sharey="row")
    budgets = sorted(gains.budget.unique())
    colors = dict(zip(budgets, sns.color_palette("viridis", len(budgets))))
    for j, dial in enumerate(dials):
        g = gains[gains.dial == dial]
        values = list(dict.fromkeys(g["value"]))
        ax, bx = axes[0, j], axes[1, j]
        for k, b in enumerate(budgets):
            for method, fill in (("quee", True), ("quee-exit-only", False)):
                d = g[(g.budget == b) & (g.method == method)].set_index("value").reindex(values)
                x = np.arange(len(values)) + 0.05 * (k - (len(budgets) - 1) / 2) + (0 if fill else 0.02)
                ax.errorbar(x, d["diff"], yerr=[d["diff"] - d["lo"], d["hi"] - d["diff"]], marker="o", ms=5,
                            capsize=2, color=colors[b], mfc=colors[b] if fill else "white", lw=1.2 if fill else 0.6,
                            ls="-" if fill else ":", label=f"budget {b:g}" if fill and j == 0 else None)
        ax.axhline(0, color="0.2", lw=1)
        ax.set(xticks=range(len(values)), xticklabels=values, xlabel=dial,
               ylabel="QuEE − best-static (points, test)" if j == 0 else None)
        r = room[(room.dial == dial) & (room.split == split)].set_index("value").reindex(values)
        xs = np.arange(len(values))
        bx.plot(xs, 100 * r["dependent_share_last"], marker="s", color="C0", label="level-dependent samples, last exit (%)")
        bx.plot(xs, r["oracle_uniform_gap"], marker="^", color="C3", label="oracle − oracle-uniform (points)")
        bx.set(xticks=xs, xticklabels=values, xlabel=dial, ylabel="room (%, points)" if j == 0 else None)
        tx = bx.twinx()
        tx.plot(xs, r["hurt_auroc"], marker="o", color="C2", ls="--", label="AUROC: a cheaper level hurts")
        tx.axhline(0.5, color="C2", lw=0.6, ls=":")
        tx.set(ylim=(0.3, 1.0), ylabel="stratified AUROC" if j == len(dials) - 1 else None)
        if j == 0:
            h1, l1 = bx.get_legend_handles_labels()
            h2, l2 = tx.get_legend_handles_labels()
            bx.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    axes[0, 0].legend(fontsize=8, title="filled: quee, hollow: quee-exit-only", title_fontsize=8)
    fig.tight_layout()
    return fig
