"""Baselines and bounds on the same path cache (README, "What the kit computes").

Each is a :class:`~quee_kit.methods.Method` registered by name (:func:`~quee_kit.methods.register_method`):
the study builds every registered one, and the budget rule picks a knob on calib for every method alike.
"""
from __future__ import annotations

import copy

import numpy as np

from .methods import Envelope, Method, MethodContext, Outcome, make_outcome, register_method
from .paths import PathCache

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["StaticQuant", "ConfidenceExit", "PerExitConfidence", "BestSingle", "RandomRouting", "Oracle"]


@register_method("static-quant")
class StaticQuant(Method):
    """Full depth at one fixed level, only the final head evaluated. Knob: (level index,)."""

    knob_fields = ("entry",)

    def __init__(self, caches: dict[str, PathCache], name: str = "static-quant"):
        self.name, self.caches = name, caches
        self.tree = next(iter(caches.values())).tree
        self.knobs = [(q,) for q in range(len(self.tree.levels))]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "StaticQuant":
        return cls(ctx.caches, name)

    def outcome(self, split, knob) -> Outcome:
        c = self.caches[split]
        node = c.node((knob[0],) * self.tree.L)
        return make_outcome(c, np.full(c.n_samples, node), np.full(c.n_samples, c.static_cost[node]))


def _uniform_chain(cache: PathCache, q: int) -> np.ndarray:
    return np.array([cache.node((q,) * t) for t in range(1, cache.tree.L + 1)])


def _threshold_exit(cache: PathCache, q: int, thresholds) -> Outcome:
    """Every block at level ``q``; exit at the first head whose max prob >= its threshold
    (scalar or one per exit), at the last head otherwise; every head on the way is costed."""
    chain = _uniform_chain(cache, q)
    conf = cache.features[chain][:, :, 0].numpy()        # (L, N) max prob
    hit = conf >= np.reshape(thresholds, (-1, 1))
    hit[-1] = True
    node = chain[hit.argmax(0)]
    return make_outcome(cache, node, cache.node_cost[node])


@register_method("ee-confidence", "ee-confidence@q")
class ConfidenceExit(Method):
    """Exit at the first head whose max softmax >= τ, every block at level ``q`` (all heads costed).

    ``levels=None`` sweeps every level (``ee-confidence@q``); knob: (level index, τ).
    """

    knob_fields = ("entry", "tau")

    def __init__(self, caches, levels: list[int] | None = None, name: str = "ee-confidence",
                 taus: np.ndarray | None = None):
        self.name, self.caches = name, caches
        self.tree = next(iter(caches.values())).tree
        levels = range(len(self.tree.levels)) if levels is None else levels
        # τ = 0: every sample exits at exit 1 (the cheapest static choice, cost c_min); τ > 1: none exits early
        taus = np.concatenate([[0.0], np.linspace(0.3, 0.9, 13), 1 - np.logspace(-1, -5, 25), [1.01]]) \
            if taus is None else taus
        self.knobs = [(q, float(t)) for q in levels for t in taus]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "ConfidenceExit":
        """``ee-confidence``: at the reference level only; ``ee-confidence@q``: at every level."""
        return cls(ctx.caches, [0] if name == "ee-confidence" else None, name)

    def outcome(self, split, knob) -> Outcome:
        return _threshold_exit(self.caches[split], knob[0], knob[1])


@register_method("ee-confidence-perexit")
class PerExitConfidence(Method):
    """MSDNet-style: per-exit thresholds fitted on calib so that a geometric share ∝ r^(t-1)
    of the samples exits at exit t (Huang et al. 2018). Knob: (level index, r)."""

    knob_fields = ("entry", "r")

    def __init__(self, caches, rs=None, name: str = "ee-confidence-perexit"):
        self.name, self.caches = name, caches
        self.tree = next(iter(caches.values())).tree
        rs = np.concatenate([np.linspace(0.05, 1.0, 20), np.linspace(1.1, 3.0, 10)]) if rs is None else rs
        self.knobs = [(q, float(r)) for q in range(len(self.tree.levels)) for r in rs]
        self.fitted_thresholds: dict = {}   # knob -> per-exit thresholds, fitted on calib on first use

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "PerExitConfidence":
        return cls(ctx.caches, name=name)

    def thresholds(self, knob) -> np.ndarray:
        if knob not in self.fitted_thresholds:
            c = self.caches["calib"]
            q, r = knob
            L = self.tree.L
            share = r ** np.arange(L)
            share /= share.sum()
            conf = c.features[_uniform_chain(c, q)][:, :, 0].numpy()
            remaining = np.ones(c.n_samples, bool)
            th = np.full(L, -np.inf)
            for t in range(L - 1):
                k = int(round(share[t] * c.n_samples))
                vals = np.sort(conf[t, remaining])[::-1]
                # no sample left (ties at the threshold can exit all of a small calib set early): none exits
                th[t] = np.inf if k == 0 or not len(vals) else vals[min(k, len(vals)) - 1]
                remaining &= conf[t] < th[t]
            self.fitted_thresholds[knob] = th
        return self.fitted_thresholds[knob]

    def outcome(self, split, knob) -> Outcome:
        return _threshold_exit(self.caches[split], knob[0], self.thresholds(knob))


@register_method("best-single")
class BestSingle(Envelope):
    """The best *static* combination: the union of static quantization, early exit at the
    reference and early exit at every fixed level; the budget rule picks among all of them.
    Knob: ("static", level index) or ("ee", level index, τ)."""

    knob_fields = ("part", "entry", "tau")

    def __init__(self, static: StaticQuant, confidence: ConfidenceExit, name: str = "best-single"):
        self.name = name
        self.parts = {"static": static, "ee": confidence}
        self.knobs = [("static",) + k for k in static.knobs] + [("ee",) + k for k in confidence.knobs]
        self.tree = static.tree

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "BestSingle":
        return cls(ctx.built["static-quant"], ctx.built["ee-confidence@q"], name)

    def knob_levels(self, knob) -> set:
        return {knob[1]}


@register_method("random")
class RandomRouting(Method):
    """Random routing: at each node exit with probability p, else a uniformly random allowed
    level for the next block. Knob: (entry level index, p); the budget rule matches the cost."""

    knob_fields = ("entry", "p")

    def __init__(self, caches, tree, ps=None, seed: int = 0, name: str = "random"):
        self.name, self.caches, self.tree, self.seed = name, caches, tree, seed
        ps = np.linspace(0.0, 1.0, 21) if ps is None else ps
        self.knobs = [(q, float(p)) for q in range(len(self.tree.levels)) for p in ps]
        self.child_table = tree.child_table()   # (n_nodes, n_levels): the next levels it may draw

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "RandomRouting":
        return cls(ctx.caches, ctx.tree, seed=ctx.seed, name=name)

    def restrict(self, levels) -> "RandomRouting":
        """Entries inside ``levels``, and the next level drawn only among them."""
        m = super().restrict(levels)
        keep = np.isin(np.arange(len(self.tree.levels)), list(levels))
        m.child_table = np.where(keep[None, :], self.child_table, -1)
        return m

    def outcome(self, split, knob) -> Outcome:
        c, tree = self.caches[split], self.tree
        q, p = knob
        rng = np.random.default_rng([self.seed, q, int(p * 1000)])
        cur = np.full(c.n_samples, tree.entry[q])
        table = self.child_table
        active = np.ones(c.n_samples, bool)
        for _ in range(tree.L - 1):
            go = active & (rng.random(c.n_samples) >= p)
            allowed = table[cur] >= 0                                # (N, n_levels)
            # a uniformly random allowed level: the k-th allowed one, k uniform
            k = (rng.random(c.n_samples) * allowed.sum(1)).astype(int)
            nxt_level = (np.cumsum(allowed, 1) > k[:, None]).argmax(1)
            nxt = table[cur, nxt_level]
            active = go & (nxt >= 0)                                 # an exited sample stays exited
            cur = np.where(active, nxt, cur)
        return make_outcome(c, cur, c.node_cost[cur])


@register_method("oracle", "oracle-uniform")
class Oracle(Method):
    """Per sample, the node minimizing true error + λ·cost (perfect knowledge, no predictor).

    ``uniform=True`` restricts to one level per path (``oracle-uniform``). Knob: (λ,).
    """

    knob_fields = ("lambda",)

    def __init__(self, caches, lambdas, uniform: bool = False, name: str | None = None):
        self.name = name or ("oracle-uniform" if uniform else "oracle")
        self.caches = caches
        self.tree = next(iter(caches.values())).tree
        self.nodes = np.array([n for n, p in enumerate(self.tree.paths) if not uniform or len(set(p)) == 1])
        self.knobs = [(float(l),) for l in lambdas]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "Oracle":
        return cls(ctx.caches, ctx.lambdas, uniform=name == "oracle-uniform", name=name)

    def restrict(self, levels) -> "Oracle":
        """Only the paths whose every block runs at a level in ``levels``."""
        m = copy.copy(self)
        m.nodes = np.array([n for n in self.nodes if set(self.tree.paths[n]) <= set(levels)], dtype=int)
        if not len(m.nodes):
            raise ValueError(f"{self.name} has no path inside the level set {tuple(sorted(levels))}")
        return m

    def outcome(self, split, knob) -> Outcome:
        c = self.caches[split]
        wrong = (~c.correct[self.nodes]).numpy().astype(float)    # (n_nodes, N) true 0/1 errors
        cost = c.node_cost[self.nodes][:, None]
        score = wrong + knob[0] * cost + 1e-9 * cost                 # ties -> the cheaper node
        node = self.nodes[score.argmin(0)]
        return make_outcome(c, node, c.node_cost[node])

    def describe(self, knob) -> dict:
        return {"entry": "per-sample", "lambda": knob[0]}
