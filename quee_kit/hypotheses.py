"""Per-input precision, every hypothesis side by side: does choosing the precision per input pay anywhere?

Each hypothesis is a setting where a cheaper level's damage might depend on the input, or a predictor
that might see it (docs/conditions.md has one section each):

- ``baseline``: ``configs/conditions.yaml`` as it is (hard digits, a w3a3 level; Platt on the head's
  log-odds, dynamic per-token activation scales);
- ``static-scales``: deployment-style static activation scales (``quant.act_scale: static``);
- ``static-heterogeneity``: the same on inputs of spread quality (``data.heterogeneity: 1.0`` on the plain
  digits; on the conditions data as well it left a model at 33% accuracy);
- ``quant-features``: quantization-aware predictor features (``predictor.features: quant``);
- ``paid-probe``: ``quee-probe``, one block's head at the cheapest level bought before deciding;
- ``bn-cnn``: a small BatchNorm CNN backbone (``configs/cnn.yaml``, shipped models).

:func:`hypothesis_tables` reports, per hypothesis and budget, the evidence that may choose a setting (the
calib gain over best-static of the budget rule's calib picks; QuEE's calib estimates are out-of-fold) next
to the test result of that choice (the paired difference to best-static with its hierarchical bootstrap
and per-seed t-intervals, the two-interval verdict, precision diversity), and where decisions are made,
the hurt AUROC per decision depth over the whole tree and at the nodes the budget-rule choice visits.
``python -m quee_kit.hypotheses`` writes both tables (``make reference`` commits them; notebook 09 reads
them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .artifacts import atomic_write_csv
from .conditions import calib_gain, room_table
from .dial_sweep import setting_studies
from .evaluate import budget_tables

__all__ = ["HYPOTHESES", "hypothesis_tables", "criterion", "hypotheses_plot", "main"]

CONDITIONS = "configs/conditions.yaml"

# name -> (config, overrides, the QuEE variant the hypothesis is about, one line on what it tries)
HYPOTHESES = {
    "baseline": (CONDITIONS, [], "quee", "hard digits + w3a3; Platt on the head's log-odds; dynamic scales"),
    "static-scales": (CONDITIONS, ["quant.act_scale=static"], "quee",
                      "static per-tensor activation scales calibrated on train (larger inputs clip)"),
    "static-heterogeneity": (CONDITIONS, ["data.difficulty=0.0", "data.heterogeneity=1.0", "quant.act_scale=static"],
                             "quee", "static scales on inputs of spread contrast, brightness and noise"),
    "quant-features": (CONDITIONS, ["predictor.features=quant"], "quee",
                       "predictor also sees the state's statistics against each level's scale"),
    "paid-probe": (CONDITIONS, [], "quee-probe",
                   "the next block's head at the cheapest level, bought before deciding"),
    "bn-cnn": ("configs/cnn.yaml", [], "quee", "a BatchNorm CNN backbone (activations scale with contrast)"),
}


def hypothesis_tables(names=None, seeds=(0, 1, 2), progress: bool = False) -> dict[str, pd.DataFrame]:
    """``gains``: per hypothesis and budget (the config's ``eval.budgets``): ``calib_gain`` (points, mean
    over seeds, vs best-static) and ``calib_gain_single`` (vs best-single); on test ``diff, lo, hi``
    (pooled paired difference to best-static and its 95% hierarchical bootstrap interval, points),
    ``t_lo, t_hi`` (t-interval over the seeds' paired differences), ``verdict`` (win/loss only when both
    exclude 0) and ``precision_diversity``. ``room``: per hypothesis, split, scope (``tree`` or
    ``visited@<budget>``) and decision depth, the seed means of ``decision_hurt_auroc`` and
    ``decision_dependent`` and the summed ``decisions``."""
    names = list(HYPOTHESES) if names is None else list(names)
    unknown = sorted(set(names) - set(HYPOTHESES))
    if unknown:
        raise ValueError(f"hypotheses must be among {list(HYPOTHESES)} (got {unknown})")
    gains, rooms = [], []
    for name in names:
        config, overrides, variant, _ = HYPOTHESES[name]
        variants = ("quee", "quee-exit-only") + ((variant,) if variant not in ("quee", "quee-exit-only") else ())
        cfg, studies = setting_studies(config, seeds, overrides, variants=variants, progress=progress)
        budgets = cfg.eval.budgets
        table, _ = budget_tables(studies, budgets, cfg.eval.bootstrap, cfg.eval.auc_range)
        pooled = table[(table.seed == "all") & (table.method == variant)].set_index("budget")
        calib = {o: pd.concat([calib_gain(s, variant, budgets, o) for s in studies])
                 .groupby("budget")["calib_gain"].mean() for o in ("best-static", "best-single")}
        for b in budgets:
            r = pooled.loc[b]
            gains.append({"hypothesis": name, "variant": variant, "budget": b, "seeds": len(studies),
                          "calib_gain": calib["best-static"][b], "calib_gain_single": calib["best-single"][b],
                          "diff": 100 * r.diff_vs_best_static, "lo": 100 * r.diff_lo_static,
                          "hi": 100 * r.diff_hi_static, "t_lo": 100 * float(r.diff_t_lo_static),
                          "t_hi": 100 * float(r.diff_t_hi_static), "verdict": r.verdict_static,
                          "precision_diversity": r.precision_diversity})
        room = room_table(studies, variant, budgets)
        room = room[room["exit"] < cfg.model.depth]                      # decisions: none at the last exit
        agg = room.groupby(["split", "scope", "exit"]).agg(
            decision_hurt_auroc=("decision_hurt_auroc", "mean"), decision_dependent=("decision_dependent", "mean"),
            decisions=("decisions", "sum")).reset_index().rename(columns={"exit": "depth"})
        rooms.append(agg.assign(hypothesis=name))
    room = pd.concat(rooms)[["hypothesis", "split", "scope", "depth", "decision_hurt_auroc", "decision_dependent",
                             "decisions"]]
    return {"gains": pd.DataFrame(gains), "room": room.reset_index(drop=True)}


def criterion(gains: pd.DataFrame, room: pd.DataFrame, min_gain: float = 1.0, min_diversity: float = 0.2,
              min_auroc: float = 0.7) -> pd.DataFrame:
    """Issue 29's bar, per hypothesis and budget: the test difference to best-static at least ``min_gain``
    points with both intervals above 0, precision diversity at least ``min_diversity``, and the hurt AUROC at
    the visited depth-1 and depth-2 decisions (test) at least ``min_auroc``; ``met`` when all hold."""
    out = gains[["hypothesis", "budget", "calib_gain", "diff", "lo", "t_lo", "precision_diversity"]].copy()
    vis = room[(room.split == "test") & room.scope.str.startswith("visited@") & room.depth.isin([1, 2])]
    vis = vis.assign(budget=vis.scope.str.removeprefix("visited@").astype(float))
    # the lower of the two depths; a depth with no decision (NaN, or no row) fails
    low = vis.groupby(["hypothesis", "budget"]).decision_hurt_auroc.agg(
        lambda a: a.min() if a.notna().sum() == 2 else float("nan"))
    out["visited_hurt_auroc_min"] = [low.get((h, float(b)), float("nan")) for h, b in zip(out.hypothesis, out.budget)]
    out["met"] = ((out["diff"] >= min_gain) & (out.lo > 0) & (out.t_lo > 0)
                  & (out.precision_diversity >= min_diversity) & (out.visited_hurt_auroc_min >= min_auroc))
    return out


def hypotheses_plot(gains: pd.DataFrame, room: pd.DataFrame, split: str = "test"):
    """Left: the calib gain over best-static per budget, one line per hypothesis (the evidence that may
    choose a setting). Middle: the test difference to best-static with its 95% bootstrap interval (the
    result of that choice). Right: the hurt AUROC per decision depth on ``split``, over every decision of
    the tree (line) and at the decisions the budget-rule choices visit (hollow markers, one per budget);
    0.5 = a cheaper level's damage is unpredictable, 0.7 = the issue's bar."""
    import matplotlib.pyplot as plt
    import numpy as np
    names = list(dict.fromkeys(gains.hypothesis))
    budgets = sorted(gains.budget.unique())
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15.5, 4.6))
    for j, name in enumerate(names):
        g = gains[gains.hypothesis == name].set_index("budget").reindex(budgets)
        color = f"C{j}"
        ax.plot(range(len(budgets)), g.calib_gain, marker="o", color=color, label=name)
        x = np.arange(len(budgets)) + 0.12 * (j - (len(names) - 1) / 2)
        bx.errorbar(x, g["diff"], yerr=[g["diff"] - g.lo, g.hi - g["diff"]], fmt="o", ms=4, capsize=2, color=color)
        r = room[(room.hypothesis == name) & (room.split == split)]
        tree = r[r.scope == "tree"].sort_values("depth")
        cx.plot(tree.depth, tree.decision_hurt_auroc, marker="s", color=color)
        vis = r[r.scope.str.startswith("visited@")]
        cx.plot(vis.depth + 0.06 * (j - (len(names) - 1) / 2), vis.decision_hurt_auroc, ls="none", marker="o",
                mfc="white", mec=color, ms=4)
    for a in (ax, bx):
        a.axhline(0, color="0.2", lw=1)
        a.set_xticks(range(len(budgets)), [f"{b:g}" for b in budgets])
        a.set_xlabel("budget (normalized BOPs)")
    ax.set(ylabel="calib gain over best-static (points)", title="Calib (out-of-fold): what may choose")
    bx.set(ylabel="test accuracy − best-static (points)", title="Test: the result, 95% bootstrap CI")
    cx.axhline(0.5, color="0.5", ls=":", lw=1)
    cx.axhline(0.7, color="0.3", ls="--", lw=1)
    cx.set(xlabel="decision depth (blocks run)", ylabel=f"hurt AUROC ({split}, stratified)", ylim=(0.3, 1.0),
           title="Can the predictor tell whom a cheaper level hurts?\n"
                 "(squares: every decision of the tree; hollow: where the policy decides)")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=len(names), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quee_kit.hypotheses", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--only", action="append", choices=list(HYPOTHESES), help="one hypothesis (repeatable)")
    ap.add_argument("--out", required=True, help="folder for gains.csv and room.csv")
    args = ap.parse_args(argv)
    tables = hypothesis_tables(args.only, [int(s) for s in args.seeds.split(",")], progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        atomic_write_csv(out / f"{name}.csv", df.round(6))
    print(criterion(tables["gains"], tables["room"]).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
