"""The strongest static baselines: one level *schedule* (a level per block, the same for every input).

``best-single`` holds only single-level paths. A schedule may step down in precision along the blocks (any
path the tree allows, e.g. w8a8 > w8a8 > w4a8 > w4a4), and it is still static: every input runs the same
levels, the only per-input choice is when to exit. These baselines ask whether QuEE's per-input precision
beats that (issue 29):

- ``static-schedule``: a fixed level sequence and a fixed exit (only its head evaluated). Knob: every node of
  the path tree (its path is the schedule, its depth the exit).
- ``ee-confidence-schedule``: confidence exits on a fixed level sequence with a depth cap M: exit at the first
  head whose max prob >= τ, at block M otherwise (every head on the way costed). Knob: (the schedule's node at
  depth M, τ) over every node and the τ grid of ``ee-confidence@q`` (461 × 41 knobs on the default tree).
- ``best-static``: the envelope of ``best-single`` and these two, the budget rule picking among all of them.

The last two keep only the knobs the budget rule can ever pick on calib (:func:`rule_frontier`): the same
choice at every budget as the full grid (tested), so their points, curves and stored test nodes stay small.
"""
from __future__ import annotations

import numpy as np

from . import baselines  # noqa: F401  (registered first: the study builds methods in registration order, and
#                           best-static and the schedules read the baselines already built)
from .methods import Envelope, Method, MethodContext, Outcome, make_outcome, register_method
from .paths import PathCache, PathTree

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["rule_frontier", "confidence_exit_nodes", "StaticSchedule", "ConfidenceSchedule", "BestStatic",
           "schedule_name"]


def rule_frontier(costs: np.ndarray, accs: np.ndarray) -> np.ndarray:
    """Ascending indices of the knobs :func:`~quee_kit.budget_rule.select_for_budget` can pick: on them it
    picks the same knob as on all of them, at every budget.

    The rule picks, among knobs with cost <= budget, the first by (−acc, cost, index); no knob before the pick
    in the order (cost, −acc, index) is as accurate (it would be feasible and preferred), so the pick is a
    knob more accurate than every knob before it in that order: those are kept. An infeasible budget gets the
    first cheapest knob (``argmin``), kept as well."""
    costs, accs = np.asarray(costs, float), np.asarray(accs, float)
    order = np.lexsort((np.arange(len(costs)), -accs, costs))
    best = np.maximum.accumulate(accs[order])
    gain = np.r_[True, best[1:] > best[:-1]]
    return np.union1d(order[gain], [int(costs.argmin())]).astype(int)


def schedule_name(tree: PathTree, path) -> str:
    """A schedule's levels by name, block 1 first: ``w8a8>w8a8>w4a4`` (its length is the exit or depth cap)."""
    return ">".join(tree.levels[q].name for q in path)


def confidence_exit_nodes(cache: PathCache, tau: float) -> np.ndarray:
    """(n_nodes, N) int: for a schedule capped at each node, the node each sample exits at with confidence
    exits at ``tau``: the first strict ancestor whose head's max prob >= τ, else the cap node itself."""
    tree = cache.tree
    hit = cache.features[:, :, 0].numpy() >= tau                  # (n_nodes, N)
    first = np.full(hit.shape, -1, dtype=np.int64)                # first hit on the chain, the node included
    exit_node = np.empty(hit.shape, dtype=np.int64)
    for t in range(1, tree.L + 1):
        nodes = tree.nodes_at(t)
        prev = np.full((len(nodes), hit.shape[1]), -1) if t == 1 else first[tree.parent[nodes]]
        exit_node[nodes] = np.where(prev >= 0, prev, nodes[:, None])
        first[nodes] = np.where(prev >= 0, prev, np.where(hit[nodes], nodes[:, None], -1))
    return exit_node


@register_method("static-schedule")
class StaticSchedule(Method):
    """A fixed level sequence over blocks 1..e and exit e, only that head evaluated (a static model). Knob:
    (schedule, entry): the path of a tree node (level indices) and its first level."""

    knob_fields = ("schedule", "entry")   # no continuous knob: the last field is the entry level

    def __init__(self, caches: dict[str, PathCache], nodes=None, name: str = "static-schedule"):
        self.name, self.caches = name, caches
        self.tree = next(iter(caches.values())).tree
        nodes = range(len(self.tree)) if nodes is None else nodes
        self.knobs = [(self.tree.paths[n], self.tree.paths[n][0]) for n in nodes]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "StaticSchedule":
        return cls(ctx.caches, name=name)

    def describe(self, knob) -> dict:
        return {"entry": self.tree.levels[knob[1]].name, "schedule": schedule_name(self.tree, knob[0])}

    def knob_levels(self, knob) -> set:
        return set(knob[0])

    def outcome(self, split, knob) -> Outcome:
        c = self.caches[split]
        node = c.node(knob[0])
        return make_outcome(c, np.full(c.n_samples, node), np.full(c.n_samples, c.static_cost[node]))


@register_method("ee-confidence-schedule")
class ConfidenceSchedule(Method):
    """Confidence exits on a fixed level sequence with a depth cap: exit at the first head whose max prob
    >= τ, at the cap otherwise; every head on the way costed. Knob: (entry, schedule, τ), the schedule a
    node's path (its length the cap). ``nodes``: the schedules' nodes (default every node of the tree);
    only the knobs the budget rule can pick on calib are kept (:func:`rule_frontier`)."""

    knob_fields = ("entry", "schedule", "tau")

    def __init__(self, caches: dict[str, PathCache], taus, nodes=None, name: str = "ee-confidence-schedule"):
        self.name, self.caches, self.taus = name, caches, np.asarray(taus, dtype=float)
        self.tree = next(iter(caches.values())).tree
        self.nodes = np.arange(len(self.tree)) if nodes is None else np.asarray(nodes, dtype=int)
        if not len(self.nodes):
            raise ValueError(f"{name} needs at least one schedule node")
        grid, costs, accs = self.grid("calib")
        self.knobs = [grid[i] for i in rule_frontier(costs, accs)]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "ConfidenceSchedule":
        """τ grid: the one of ``ee-confidence@q`` (best-single's confidence exits)."""
        taus = list(dict.fromkeys(k[1] for k in ctx.built["ee-confidence@q"].knobs))
        return cls(ctx.caches, taus, name=name)

    def grid(self, split: str) -> tuple[list, np.ndarray, np.ndarray]:
        """Every (schedule node, τ) knob, node-major, with its mean cost and accuracy on ``split`` (the numbers
        :meth:`outcome` gives, vectorized over nodes; the means taken as an :class:`Outcome` takes them)."""
        c = self.caches[split]
        knobs, costs, accs = [], [], []
        cols = np.arange(c.n_samples)
        per_tau = []
        for tau in self.taus:
            e = confidence_exit_nodes(c, tau)[self.nodes]                  # (n_schedules, N)
            cost = c.node_cost[e]
            per_tau.append((np.array([row.mean() for row in cost]), c.correct_np[e, cols].mean(1)))
        for i, n in enumerate(self.nodes):
            path = self.tree.paths[n]
            for j, tau in enumerate(self.taus):
                knobs.append((path[0], path, float(tau)))
                costs.append(per_tau[j][0][i])
                accs.append(per_tau[j][1][i])
        return knobs, np.array(costs), np.array(accs)

    def describe(self, knob) -> dict:
        return {"entry": self.tree.levels[knob[0]].name, "schedule": schedule_name(self.tree, knob[1]),
                "tau": knob[2]}

    def knob_levels(self, knob) -> set:
        return set(knob[1])

    def restrict(self, levels) -> "ConfidenceSchedule":
        """The schedules whose every block runs at a level in ``levels``, their frontier taken afresh."""
        keep = [n for n in self.nodes if set(self.tree.paths[n]) <= set(int(q) for q in levels)]
        if not keep:
            raise ValueError(f"{self.name} has no schedule inside the level set {tuple(sorted(levels))}")
        return ConfidenceSchedule(self.caches, self.taus, keep, self.name)

    def outcome(self, split, knob) -> Outcome:
        c = self.caches[split]
        path, tau = knob[1], knob[2]
        chain = np.array([c.node(path[:t]) for t in range(1, len(path) + 1)])
        hit = c.features[chain][:, :, 0].numpy() >= tau                     # (M, N)
        hit[-1] = True                                                       # the cap: every sample exits
        node = chain[hit.argmax(0)]
        return make_outcome(c, node, c.node_cost[node])


@register_method("best-static")
class BestStatic(Envelope):
    """The envelope of the static baselines: ``best-single``, ``static-schedule`` and
    ``ee-confidence-schedule``, the budget rule picking among all their knobs; so its calib accuracy at a
    budget is at least every feasible member's (tested). Knob: (part, *the member's knob), part one of
    ``single``, ``schedule``, ``ee-schedule``; only the knobs the rule can pick on calib are kept, in member
    order (best-single's first: a tie keeps best-single's choice)."""

    knob_fields = ("part", "entry", "schedule", "tau")

    def __init__(self, members: dict, name: str = "best-static"):
        self.name, self.parts = name, dict(members)
        self.tree = next(iter(self.parts.values())).tree
        union = [(part,) + tuple(k) for part, m in self.parts.items() for k in m.knobs]
        calib = [self.outcome("calib", k) for k in union]
        keep = rule_frontier(np.array([o.mean_cost for o in calib]), np.array([o.accuracy for o in calib]))
        self.knobs = [union[i] for i in keep]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "BestStatic":
        return cls({"single": ctx.built["best-single"], "schedule": ctx.built["static-schedule"],
                    "ee-schedule": ctx.built["ee-confidence-schedule"]}, name)

    def knob_levels(self, knob) -> set:
        return self.parts[knob[0]].knob_levels(knob[1:])

    def restrict(self, levels) -> "BestStatic":
        """Every member restricted to ``levels`` (a member with no knob there left out), the envelope rebuilt."""
        members = {}
        for part, m in self.parts.items():
            try:
                members[part] = m.restrict(levels)
            except ValueError:
                continue
        if not members:
            raise ValueError(f"{self.name} has no knob inside the level set {tuple(sorted(levels))}")
        return BestStatic(members, self.name)
