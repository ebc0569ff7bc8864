"""The descriptive tables the notebooks show beside their figures: the cost of every part at every level,
the size of each path-tree family, and the MAC count checked against PyTorch's ``FlopCounterMode``.
Re-exported by :mod:`quee_kit.plots` (the notebooks call ``plots.cost_table``); torch is imported only
inside the functions that need it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from .costs import CostModel

__all__ = ["cost_table", "tree_size_table", "flop_check_table"]


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
    rows["full model"].update({lv.name: costs.stem + sum(costs.block(t, lv) for t in range(1, costs.depth + 1))
                               + costs.head(costs.depth) for lv in costs.levels})
    return pd.DataFrame.from_dict(rows, orient="index")[["MACs"] + levels].rename_axis("part")


def tree_size_table(levels, depth: int, families=("monotone", "free", "uniform")) -> pd.DataFrame:
    """Nodes (every prefix, what the cache evaluates) and full-depth paths of each family."""
    from .paths import PathTree
    rows = []
    for fam in families:
        tree = PathTree(levels, depth, fam)
        rows.append({"family": fam, "nodes": len(tree), "full_depth_paths": len(tree.nodes_at(depth))})
    return pd.DataFrame(rows)


def flop_check_table(model, image_shape) -> pd.DataFrame:
    """MACs per part from :func:`~quee_kit.costs.count_ops` vs ``FlopCounterMode`` (2 FLOPs per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .costs import count_ops
    from .models import input_dtype
    was_training = model.training
    model.eval()
    h, rows = torch.zeros(1, *image_shape, dtype=input_dtype(model)), []   # float64 with paths.dtype
    parts = [("stem", model.stem)] + [(f"{k}{t + 1}", m) for t in range(model.depth)
                                      for k, m in (("block", model.blocks[t]), ("head", model.heads[t]))]
    with torch.no_grad():
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
