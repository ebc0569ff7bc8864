"""Conditions for success: how much *room* an input-dependent choice of precision has, and the gains
measured on calib that choose a setting (never its test result).

Room, on one split of a path cache (every number a share of samples or an AUROC):

- ``dependent_share[t]``: the share of samples whose correctness at exit ``t`` depends on the level,
  i.e. differs between the uniform paths (every block at one level) of the menu. With none, choosing the
  precision per input cannot change a single answer at that exit.
- ``hurt_share[t]`` / ``help_share[t]``: right at the reference level and wrong at some cheaper level /
  wrong at the reference and right at some cheaper one.
- ``flip_auroc``: how predictable a flip is *when the choice is made*. At every decision node (depth
  t < L, level q) and every cheaper level q' the family allows next, the two plans "run to the last exit
  at q" (A) and "at q'" (B) are compared per sample: label = their correctness differs, score =
  |ê_B − ê_A| (the predictor's own estimates of those two plans at that node). ``hurt_auroc``: label =
  A right and B wrong, score = ê_B − ê_A. Both are *stratified* AUROCs: the chance that, at the same node
  and level pair, a flipped sample outranks an unflipped one (strata without both kinds are skipped), so a
  score that only tells levels apart (w4a4 flips more than w8a8) earns nothing. 0.5 = unpredictable.
- Where decisions are made (issue 29), per decision depth t (the row of exit t; none at the last exit):
  ``decision_dependent``: the share of (decision node, sample) pairs whose answer at the *next* exit t+1
  depends on the level the family allows for block t+1; ``decision_hurt_rate`` / ``decision_hurt_auroc``:
  the hurt label and stratified AUROC above over *every* plan exit m = t+1..L (plans (m, q) vs (m, q')),
  not only the last. Rows with ``scope = "tree"`` take every decision node and sample; rows with
  ``scope = "visited@<budget>"`` only the decisions the variant's budget-rule choice makes (calls of the
  predictor), ``decisions`` their count.
- ``oracle_uniform_gap``: core AUC of ``oracle`` − ``oracle-uniform`` on the split (points): what perfect
  per-input precision choice adds over one level per path, even with perfect knowledge.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .options import OptionSpace
from .paths import PathCache
from .study import Study, c_min_sat, select_points

__all__ = ["level_dependence", "stratified_auroc", "grouped_auroc", "flip_rows", "plan_rows", "next_exit_dependence",
           "decision_measures", "room_measures", "room_table", "room_summary", "decision_summary", "calib_gain"]


def level_dependence(correct: np.ndarray) -> dict[str, np.ndarray]:
    """correct: (Q, L, N) bool, correctness of sample n at exit t on the uniform path of level q, the
    reference (costliest) level first. Returns (L,) shares ``dependent``, ``hurt``, ``help``."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 3 or c.shape[0] < 1:
        raise ValueError(f"correct must be (levels, exits, samples), got shape {c.shape}")
    ref, low = c[0], c[1:]
    dependent = c.any(0) & ~c.all(0)
    hurt = ref & ~low.all(0) if len(low) else np.zeros_like(ref)
    helped = ~ref & low.any(0) if len(low) else np.zeros_like(ref)
    return {"dependent": dependent.mean(1), "hurt": hurt.mean(1), "help": helped.mean(1)}


def stratified_auroc(score: np.ndarray, label: np.ndarray, stratum: np.ndarray) -> tuple[float, int]:
    """P(score of a positive > score of a negative | same stratum), ties counting 1/2, pooled over strata
    weighted by (positives × negatives); NaN when no stratum has both. Returns (auroc, positives used)."""
    score, label, stratum = np.asarray(score, float), np.asarray(label, bool), np.asarray(stratum)
    num = den = 0.0
    used = 0
    for s in np.unique(stratum):
        k = stratum == s
        y, x = label[k], score[k]
        p, n = int(y.sum()), int((~y).sum())
        if p == 0 or n == 0:
            continue
        r = rankdata(x)                                # average ranks: ties count 1/2
        num += r[y].sum() - p * (p + 1) / 2            # Mann-Whitney U of the positives
        den += p * n
        used += p
    return (num / den if den else float("nan")), used


def flip_rows(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace) -> dict[str, np.ndarray]:
    """One row per (decision node, cheaper next level, sample): ``flip``/``hurt`` labels, the predicted
    difference ``delta`` = ê(run to L at the cheaper level) − ê(run to L at the node's level), and the
    ``stratum`` (node × n_levels + cheaper level). err_hat: (n_nodes, N, O) as the predictors give it."""
    tree, L, nq = opts.tree, opts.tree.L, opts.n_levels
    correct = cache.correct_np
    out = {k: [] for k in ("flip", "hurt", "delta", "stratum")}
    for node in np.flatnonzero(tree.depth < L):
        q = int(tree.level[node])
        o_a = (L - 1) * nq + q
        for q2 in tree.allowed_next(q):
            if q2 <= q:                                # levels are sorted costliest first: only cheaper ones
                continue
            o_b = (L - 1) * nq + q2
            a, b = opts.target[node, o_a], opts.target[node, o_b]
            if a < 0 or b < 0:
                continue
            ca, cb = correct[a], correct[b]
            out["flip"].append(ca != cb)
            out["hurt"].append(ca & ~cb)
            out["delta"].append(err_hat[node, :, o_b] - err_hat[node, :, o_a])
            out["stratum"].append(np.full(cache.n_samples, node * nq + q2))
    if not out["flip"]:
        return {k: np.zeros(0) for k in out}
    return {k: np.concatenate(v) for k, v in out.items()}


def grouped_auroc(score: np.ndarray, label: np.ndarray, stratum: np.ndarray) -> float:
    """:func:`stratified_auroc`'s AUROC (the same pooling over strata), grouping by one sort: for many strata."""
    score, label, stratum = np.asarray(score, float), np.asarray(label, bool), np.asarray(stratum)
    order = np.argsort(stratum, kind="stable")
    starts = np.flatnonzero(np.r_[True, stratum[order][1:] != stratum[order][:-1]])
    num = den = 0.0
    for k in np.split(order, starts[1:]) if len(order) else []:
        y = label[k]
        p, n = int(y.sum()), int((~y).sum())
        if p and n:
            num += rankdata(score[k])[y].sum() - p * (p + 1) / 2
            den += p * n
    return num / den if den else float("nan")


def plan_rows(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace) -> dict[str, np.ndarray]:
    """:func:`flip_rows` over every plan exit: one row per (decision node, cheaper next level q', plan exit m,
    sample) with ``hurt`` (the plan (m, q) at the node's level q right, (m, q') wrong), ``delta`` = ê(m, q') −
    ê(m, q), the ``stratum`` (node, q', m), and the row's ``node`` and ``sample``."""
    tree, L, nq, N = opts.tree, opts.tree.L, opts.n_levels, cache.n_samples
    correct, cols = cache.correct_np, np.arange(N)
    out = {k: [] for k in ("hurt", "delta", "stratum", "node", "sample")}
    for node in np.flatnonzero(tree.depth < L):
        q = int(tree.level[node])
        for q2 in (q2 for q2 in tree.allowed_next(q) if q2 > q):
            for m in range(int(tree.depth[node]) + 1, L + 1):
                o_a, o_b = (m - 1) * nq + q, (m - 1) * nq + q2
                a, b = opts.target[node, o_a], opts.target[node, o_b]
                if a < 0 or b < 0:
                    continue
                out["hurt"].append(correct[a] & ~correct[b])
                out["delta"].append(err_hat[node, :, o_b] - err_hat[node, :, o_a])
                out["stratum"].append(np.full(N, (node * nq + q2) * (L + 1) + m))
                out["node"].append(np.full(N, node))
                out["sample"].append(cols)
    if not out["hurt"]:
        return {k: np.zeros(0, dtype=bool if k == "hurt" else float) for k in out}
    return {k: np.concatenate(v) for k, v in out.items()}


def next_exit_dependence(cache: PathCache, tree) -> np.ndarray:
    """(n_nodes, N) bool: at a decision node, whether the answer at the next exit depends on the level the family
    allows for the next block (the children's correctness differs); False at the leaves."""
    table, correct = tree.child_table(), cache.correct_np
    out = np.zeros(correct.shape, dtype=bool)
    for node in np.flatnonzero(tree.depth < tree.L):
        kids = table[node][table[node] >= 0]
        out[node] = correct[kids].any(0) & ~correct[kids].all(0)
    return out


def decision_measures(rows: dict, dependent: np.ndarray, tree, visited: np.ndarray | None = None) -> list[dict]:
    """Per decision depth t = 1..L-1: ``decision_dependent``, ``decision_hurt_rate``, ``decision_hurt_auroc`` and
    ``decisions`` (module docstring). rows: :func:`plan_rows`; dependent: :func:`next_exit_dependence`;
    visited: (n_nodes, N) bool, the decisions to count (None: every decision node and sample)."""
    keep = np.ones(len(rows["hurt"]), bool) if visited is None else visited[rows["node"], rows["sample"]]
    row_depth = tree.depth[rows["node"]] if len(rows["node"]) else np.zeros(0, int)
    out = []
    for t in range(1, tree.L):
        at = tree.depth == t
        pairs = np.broadcast_to(at[:, None], dependent.shape) if visited is None else visited & at[:, None]
        k = keep & (row_depth == t)
        n = int(pairs.sum())
        out.append({"decision_dependent": float(dependent[pairs].mean()) if n else float("nan"),
                    "decision_hurt_rate": float(rows["hurt"][k].mean()) if k.any() else float("nan"),
                    "decision_hurt_auroc": grouped_auroc(rows["delta"][k], rows["hurt"][k], rows["stratum"][k]),
                    "decisions": n})
    return out


def room_measures(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace) -> dict:
    """Room of one split (see the module docstring): per-exit shares (lists over exits 1..L), the flip
    share and AUROCs of the decision nodes' cheaper-level plans."""
    tree = opts.tree
    uniform = np.array([[cache.node((q,) * t) for t in range(1, tree.L + 1)] for q in range(len(tree.levels))])
    shares = level_dependence(cache.correct_np[uniform])          # (Q, L, N) -> (L,) each
    rows = flip_rows(err_hat, cache, opts)
    flip_auroc, n_flip = stratified_auroc(np.abs(rows["delta"]), rows["flip"], rows["stratum"])
    hurt_auroc, n_hurt = stratified_auroc(rows["delta"], rows["hurt"], rows["stratum"])
    return {**{f"{k}_share": v.tolist() for k, v in shares.items()},
            "flip_rate": float(rows["flip"].mean()) if len(rows["flip"]) else 0.0,
            "flip_auroc": flip_auroc, "hurt_auroc": hurt_auroc, "flips": n_flip, "hurts": n_hurt}


def room_table(studies: list[Study], variant: str = "quee", budgets=None) -> pd.DataFrame:
    """Per seed and split (calib: out-of-fold estimates; test: the refitted predictor), one row per exit
    with the shares, and the node-level measures (flip rate, AUROCs) and ``oracle_uniform_gap`` (core AUC of
    that split, points) repeated on every row of the seed and split (``scope = "tree"``), with the decision
    measures of the decisions at that depth (module docstring). Then, per seed, split and budget of
    ``budgets`` (default: the config's), one row per decision depth with the decision measures of the
    decisions ``variant``'s budget-rule choice makes there (``scope = "visited@<budget>"``)."""
    rows, visited_rows = [], []
    for s in studies:
        tree = s.prep.tree
        c_budgets = np.linspace(*c_min_sat(s), 41)                 # the core AUC's budgets
        knobs = {b: s.select(variant, b)[0] for b in (s.cfg.eval.budgets if budgets is None else budgets)}
        for split in ("calib", "test"):
            auc = {m: _split_auc(s.points[m], c_budgets, split) for m in ("oracle", "oracle-uniform")}
            gap = 100 * (auc["oracle"] - auc["oracle-uniform"])
            cache, err_hat = s.prep.caches[split], s.predictors[variant][split]
            m = room_measures(err_hat, cache, s.opts)
            plans, dependent = plan_rows(err_hat, cache, s.opts), next_exit_dependence(cache, tree)
            per_depth = decision_measures(plans, dependent, tree)
            last = {"decision_dependent": np.nan, "decision_hurt_rate": np.nan, "decision_hurt_auroc": np.nan,
                    "decisions": 0}                                  # no decision at the last exit
            for t in range(tree.L):
                rows.append({"seed": s.prep.cfg.seed, "split": split, "exit": t + 1,
                             **{k: m[f"{k}_share"][t] for k in ("dependent", "hurt", "help")},
                             "flip_rate": m["flip_rate"], "flip_auroc": m["flip_auroc"],
                             "hurt_auroc": m["hurt_auroc"], "oracle_uniform_gap": gap, "scope": "tree",
                             **(per_depth[t] if t < tree.L - 1 else last)})
            for b, knob in knobs.items():
                node, sample = s.methods[variant].visited(split, knob)
                seen = np.zeros(dependent.shape, dtype=bool)
                seen[node, sample] = True
                for t, d in enumerate(decision_measures(plans, dependent, tree, seen)):
                    visited_rows.append({"seed": s.prep.cfg.seed, "split": split, "exit": t + 1,
                                         "scope": f"visited@{b:g}", **d})
    return pd.DataFrame(rows + visited_rows)


def _split_auc(points: pd.DataFrame, budgets, split: str) -> float:
    """Mean ``split`` accuracy of the budget rule's choice (made on calib) over ``budgets``; 0 where infeasible
    (used for the oracles, feasible from c_min on; :func:`quee_kit.study.points_auc` is the test AUC)."""
    idx, ok = select_points(points, budgets)
    return float(np.where(ok, points[f"acc_{split}"].to_numpy()[idx], 0.0).mean())


def room_summary(table: pd.DataFrame | Study | list) -> dict:
    """Seed means of :func:`room_table` per split: ``dependent_share_last`` (last exit),
    ``dependent_share_mean`` (over exits), flip rate, AUROCs, oracle − oracle-uniform (points)."""
    if not isinstance(table, pd.DataFrame):
        table = room_table([table] if isinstance(table, Study) else table)
    scoped = table.get("scope", pd.Series("tree", index=table.index))
    out = {}
    for split, g in table[scoped == "tree"].groupby("split"):
        last = g[g["exit"] == g["exit"].max()]
        per_seed = g.groupby("seed").first()
        out[split] = {"dependent_share_last": float(last["dependent"].mean()),
                      "dependent_share_mean": float(g["dependent"].mean()),
                      "hurt_share_last": float(last["hurt"].mean()),
                      **{k: float(per_seed[k].mean()) for k in ("flip_rate", "flip_auroc", "hurt_auroc",
                                                                "oracle_uniform_gap")}}
    return out


def decision_summary(table: pd.DataFrame) -> dict:
    """Seed means of :func:`room_table`'s decision measures per split and scope (``tree``, ``visited@<budget>``),
    lists over decision depths 1..L-1 (None where no decision was made)."""
    out: dict = {}
    decided = table[table.exit < table.exit.max()]
    for (split, scope), v in decided.groupby(["split", "scope"]):
        per_depth = v.groupby("exit")[["decision_dependent", "decision_hurt_auroc", "decisions"]].mean()
        out.setdefault(split, {})[scope] = {k: [None if np.isnan(x) else float(x) for x in per_depth[k]]
                                            for k in per_depth}
    return out


def calib_gain(study: Study, method: str, budgets, other: str = "best-single") -> pd.DataFrame:
    """Calib accuracy of ``method`` − ``other`` (points) at each budget, each with the knob the budget rule
    picks on calib: the evidence that may choose a setting (QuEE's calib estimates are out-of-fold)."""
    rows = []
    for b in budgets:
        a = study.at_budget(method, b, "calib")[2].accuracy
        o = study.at_budget(other, b, "calib")[2].accuracy
        rows.append({"seed": study.prep.cfg.seed, "budget": float(b), "method": method,
                     "calib_gain": 100 * (a - o)})
    return pd.DataFrame(rows)
