"""Figures and tables the notebooks call: one seaborn theme, labelled axes with units.

Every figure function takes plain inputs (a DataFrame from :func:`quee_kit.pipeline.exits_table`,
a :class:`~quee_kit.costs.CostModel`, a :class:`~quee_kit.pipeline.Prepared`) and returns a
matplotlib ``Figure``; :func:`save_figure` writes it as PNG and PDF. Costs are normalized
BOPs, 1.0 = stem + every block at the reference level + the final head (see quee_kit.costs).
To add a figure: write a short function returning a Figure, label both axes with units
using the constants below, and call it from a notebook followed by :func:`save_figure`.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from .costs import CostModel, count_ops

__all__ = ["set_theme", "save_figure", "save_table", "cost_label", "ACCURACY_LABEL", "EXIT_LABEL",
           "LEVEL_LABEL", "exit_accuracy_plot", "quant_heatmap", "cost_table", "cost_bar_plot",
           "path_cost_hist", "tree_size_table", "flop_check_table"]

ACCURACY_LABEL = "accuracy (fraction correct)"
EXIT_LABEL = "exit (after block t)"
LEVEL_LABEL = "precision level (weight bits / activation bits)"


def cost_label(ref: str = "w16a16") -> str:
    return f"cost (normalized BOPs, 1.0 = full model at {ref})"


def set_theme() -> None:
    """The one theme every figure of the kit uses."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind",
                  rc={"figure.dpi": 80, "savefig.dpi": 150, "figure.figsize": (6.4, 4.0)})


def save_figure(fig: plt.Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``out_dir/name.png`` and ``out_dir/name.pdf`` (temp file then rename); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path, tmp = out / f"{name}.{ext}", out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, format=ext, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, index: bool = False) -> Path:
    """Write ``out_dir/name.csv`` (temp file then rename); returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / f"{name}.csv", out / f".{name}.tmp.csv"
    df.to_csv(tmp, index=index, float_format="%.6g")
    os.replace(tmp, path)
    return path


def _reference(exits_df: pd.DataFrame) -> str:
    """The reference level: the one whose deepest exit costs 1.0 (the costliest row)."""
    return str(exits_df.loc[exits_df.cost.idxmax(), "level"])


# ------------------------------------------------------------------------------- figures

def exit_accuracy_plot(exits_df: pd.DataFrame) -> plt.Figure:
    """Accuracy of every exit: one line per level, solid/dashed per split (an exits_table frame)."""
    fig, ax = plt.subplots()
    sns.lineplot(data=exits_df, x="exit", y="accuracy", hue="level", style="split", markers=True, ax=ax)
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


def cost_table(costs: CostModel) -> pd.DataFrame:
    """Normalized cost of every part (rows) at every level (columns), plus per-sample MACs.

    The stem and heads run in float, so they cost the same at every level. The last row,
    ``full model``, is stem + all blocks at the level + the final head (1.0 at the reference).
    """
    levels = [lv.name for lv in costs.levels]
    rows = {}
    for r in costs.table():
        row = rows.setdefault(r["part"], {"MACs": r["macs"]})
        row.update({lv: r["cost"] for lv in levels} if r["part"].startswith(("stem", "head")) else {r["level"]: r["cost"]})
    rows["full model"] = {"MACs": sum(o.macs for o in costs.block_ops) + costs.stem_ops.macs
                          + costs.head_ops[-1].macs}
    rows["full model"].update({lv.name: costs.stem + sum(costs.block(t, lv) for t in range(costs.depth))
                               + costs.head(costs.depth - 1) for lv in costs.levels})
    return pd.DataFrame.from_dict(rows, orient="index")[["MACs"] + levels].rename_axis("part")


def cost_bar_plot(costs: CostModel) -> plt.Figure:
    """Full-model cost per level, stacked as stem | all blocks | final head."""
    t = cost_table(costs).drop(columns="MACs")
    blocks = t[t.index.str.startswith("block")].sum()
    df = pd.DataFrame({"stem": t.loc["stem"], "blocks": blocks, "final head": t.loc[f"head{costs.depth}"]})
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


# -------------------------------------------------------------------------------- tables

def tree_size_table(levels, depth: int, families=("monotone", "free", "uniform")) -> pd.DataFrame:
    """Nodes (every prefix, what the cache evaluates) and full-depth paths of each family."""
    from .paths import PathTree
    rows = []
    for fam in families:
        tree = PathTree(levels, depth, fam)
        rows.append({"family": fam, "nodes": len(tree), "full_depth_paths": len(tree.nodes_at(depth))})
    return pd.DataFrame(rows)


@torch.no_grad()
def flop_check_table(model, image_shape) -> pd.DataFrame:
    """MACs per part from :func:`~quee_kit.costs.count_ops` vs ``FlopCounterMode`` (2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    h, rows = torch.zeros(1, *image_shape), []
    parts = [("stem", model.stem)] + [(f"{k}{t + 1}", m) for t in range(model.depth)
                                      for k, m in (("block", model.blocks[t]), ("head", model.heads[t]))]
    for name, part in parts:
        ops, out = count_ops(part, h)
        with FlopCounterMode(display=False) as fc:
            part(h)
        rows.append({"part": name, "count_ops_macs": ops.macs, "flop_counter_macs": fc.get_total_flops() // 2})
        if not name.startswith("head"):
            h = out
    model.train(was_training)
    df = pd.DataFrame(rows)
    df["match"] = df.count_ops_macs == df.flop_counter_macs
    return df
