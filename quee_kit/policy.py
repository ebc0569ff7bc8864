"""The QuEE decision rule (receding horizon) on the path cache, and the shared budget rule.

At node t with trade-off λ >= 0: ``a* = argmin_a ê_a + λ · cost_a`` over exit-now and every
plan (m, q') the family allows; exit if a* is exit-now, else run only block t+1 at q' and
decide again. Every decision that consults the predictor pays one call; a decision that err_hat
cannot change (a single allowed option, or λ so large that exiting wins whatever err_hat says) is
taken without a call (:func:`call_needed`).
"""
from __future__ import annotations

import numpy as np

from .budget_rule import select_for_budget  # re-exported: the rule is shared, torch-free
from .methods import Method, Outcome, make_outcome
from .options import OptionSpace
from .paths import PathCache
from .probe import Probe

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["Outcome", "make_outcome", "call_needed", "simulate", "simulate_many", "option_mask", "lambda_grid", "select_for_budget",
           "QueePolicy", "VARIANTS"]

# Option restrictions of the QuEE ablations (quee-exit-only, quee-quant-only; README glossary).
VARIANTS = ("all", "exit-only", "quant-only")


def option_mask(opts: OptionSpace, variant: str = "all") -> np.ndarray:
    """(n_nodes, O) bool: options allowed at each node for a QuEE variant."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    m = opts.valid.copy()
    o = np.arange(opts.n_options)
    if variant == "exit-only":     # early exit only: the entry level for the whole path
        m &= opts.option_level(o)[None, :] == opts.tree.level[:, None]
    elif variant == "quant-only":  # no early exit: every plan ends at L
        m &= opts.option_exit(o)[None, :] == opts.tree.L
    return m


def call_needed(opts: OptionSpace, mask: np.ndarray, call_cost: float, lams) -> np.ndarray:
    """(len(lams), n_nodes) bool: whether the rule must call the predictor at a node for each λ.

    err_hat cannot change the choice where a single option is allowed, or where exit-now is allowed and
    ``λ · (cheapest allowed plan) >= 1``: err_hat is in [0, 1], so every plan then scores at least as much
    as exiting, and ties go to exit-now (the lowest option index at its node). There no call is made.
    """
    plans = mask & (opts.next_node >= 0)
    min_plan = np.where(plans, opts.delta_cost(call_cost), np.inf).min(1)
    exit_ok = mask[np.arange(len(mask)), opts.exit_option]
    with np.errstate(invalid="ignore"):                     # 0 · inf (no plan at all): not free, single
        free = exit_ok & (np.asarray(lams, dtype=float)[:, None] * min_plan[None, :] >= 1)
    return (mask.sum(1) > 1)[None, :] & ~free


def simulate_many(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace, lams: np.ndarray, entry: int,
                  mask: np.ndarray | None = None, call_cost: float = 0.0, visits: list | None = None,
                  probe: Probe | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The receding-horizon rule for every sample and every λ in ``lams`` at once.

    err_hat: (n_nodes, N, O) predicted error probabilities; lams: (K,) values >= 0; entry: level index
    of block 1; call_cost: normalized cost of one predictor call (charged for every call made).
    Returns (node, cost), both (K, N): where each sample exits and what it paid. ``visits``, when a
    list, receives one (lam index, node, sample) triple of arrays per decision step that called the
    predictor. ``probe`` (quee-probe, :mod:`quee_kit.probe`): every decision that calls the predictor first buys
    the probe, decides with its cost-to-go after the probe (``probe.delta``) and pays ``probe.cost`` of the node
    on top unless it continues at the probe's node; decisions without a call use the plain cost-to-go.
    """
    lams = np.atleast_1d(np.asarray(lams, dtype=float))
    if (lams < 0).any() or not np.isfinite(lams).all():
        raise ValueError(f"lambda must be a finite float >= 0 (got {lams[(lams < 0) | ~np.isfinite(lams)][0]})")
    tree = opts.tree
    mask = opts.valid if mask is None else mask
    delta = opts.delta_cost(call_cost)
    need = call_needed(opts, mask, call_cost, lams)              # (K, n_nodes)
    K, N = len(lams), err_hat.shape[1]
    cur = np.full(K * N, tree.entry[entry])
    sample = np.tile(np.arange(N), K)
    lam = np.repeat(lams, N)
    active = np.ones(K * N, bool)
    calls, wasted = np.zeros(K * N), np.zeros(K * N)
    allowed = [np.flatnonzero(row) for row in mask]            # per node, its allowed options, ascending
    for _ in range(tree.L - 1):
        ai = np.flatnonzero(active)
        if not len(ai):
            break
        nodes = cur[ai]
        a = np.zeros(len(ai), dtype=np.int64)
        # One node at a time, over its allowed options only (about 3 of 30): the same scores, and the
        # first minimum among them is the first over all options with the others at +inf.
        order = np.argsort(nodes, kind="stable")
        uniq, starts = np.unique(nodes[order], return_index=True)
        for n, rows in zip(uniq, np.split(order, starts[1:])):
            cols = allowed[n]
            if len(cols):
                r = ai[rows]
                d = delta[n, cols] if probe is None else np.where(need[r // N, n][:, None], probe.delta[n, cols],
                                                                   delta[n, cols])
                score = err_hat[n][np.ix_(sample[r], cols)] + lam[r, None] * d
                a[rows] = cols[score.argmin(1)]
        called = need[ai // N, nodes]
        calls[ai[called]] += 1
        if visits is not None:
            visits.append((ai[called] // N, nodes[called], sample[ai[called]]))
        nxt = opts.next_node[nodes, a]
        if probe is not None:
            wasted[ai[called]] += probe.wasted(nodes[called], nxt[called])
        go = nxt >= 0
        active[ai[~go]] = False
        cur[ai[go]] = nxt[go]
    cost = cache.node_cost[cur] + calls * call_cost + wasted
    return cur.reshape(K, N), cost.reshape(K, N)


def simulate(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace, lam: float, entry: int,
             mask: np.ndarray | None = None, call_cost: float = 0.0) -> Outcome:
    """The receding-horizon rule at one λ: an :class:`Outcome` for every sample of ``cache``."""
    node, cost = simulate_many(err_hat, cache, opts, np.array([lam]), entry, mask, call_cost)
    return make_outcome(cache, node[0], cost[0])


def lambda_grid(n: int) -> np.ndarray:
    """λ = 0 and ``n - 1`` log-spaced values in [1e-3, 1e4] (cost is a step function of λ)."""
    return np.concatenate([[0.0], np.logspace(-3, 4, n - 1)])


class QueePolicy(Method):
    """QuEE (or an ablation) as a method: knobs are (entry level index, λ).

    err_hat[split]: (n_nodes, N, O) predictions (out-of-fold on calib); call_cost: normalized cost of one
    call of the predictor that made them. The study builds one per QuEE variant (its fitted predictor
    and option restriction), not from the method registry.
    """

    knob_fields = ("entry", "lambda")

    def __init__(self, name: str, err_hat: dict[str, np.ndarray], caches: dict[str, PathCache],
                 opts: OptionSpace, lambdas: np.ndarray, variant: str = "all", mask: np.ndarray | None = None,
                 call_cost: float = 0.0, probe: bool = False):
        """``mask`` (n_nodes, O), when given, replaces the variant's option restriction; ``probe``: the paid
        probe's rule and accounting (:mod:`quee_kit.probe`; ``err_hat`` then comes from a probe predictor)."""
        self.name, self.err_hat, self.caches, self.opts, self.call_cost = name, err_hat, caches, opts, call_cost
        self.mask = option_mask(opts, variant) if mask is None else mask
        self.knobs = [(q, float(l)) for q in range(len(opts.tree.levels)) for l in lambdas]
        self.tree = opts.tree
        self.probe = Probe.build(opts, caches["calib"].node_cost, call_cost) if probe else None

    def restrict(self, levels) -> "QueePolicy":
        """Entries inside ``levels``, and every option whose level is outside them masked."""
        m = super().restrict(levels)
        ok = np.isin(self.opts.option_level(np.arange(self.opts.n_options)), list(levels))
        m.mask = self.mask & ok[None, :]
        return m

    def outcome(self, split: str, knob) -> Outcome:
        q, lam = knob
        node, cost = simulate_many(self.err_hat[split], self.caches[split], self.opts, np.array([lam]), q, self.mask,
                                   self.call_cost, probe=self.probe)
        return make_outcome(self.caches[split], node[0], cost[0])

    def outcomes(self, split: str) -> list[Outcome]:
        """Every knob at once (all λ of an entry level in one vectorized pass)."""
        out, cache = [], self.caches[split]
        for q in sorted({k[0] for k in self.knobs}):
            lams = np.array([k[1] for k in self.knobs if k[0] == q])
            node, cost = simulate_many(self.err_hat[split], cache, self.opts, lams, q, self.mask, self.call_cost,
                                       probe=self.probe)
            out += [make_outcome(cache, n, c) for n, c in zip(node, cost)]
        return out

    def visited(self, split: str, knob) -> tuple[np.ndarray, np.ndarray]:
        """(node, sample) of every decision that called the predictor at ``knob``."""
        q, lam = knob
        steps: list = []
        simulate_many(self.err_hat[split], self.caches[split], self.opts, np.array([lam]), q, self.mask,
                      self.call_cost, visits=steps, probe=self.probe)
        return (np.concatenate([s[1] for s in steps]) if steps else np.zeros(0, int),
                np.concatenate([s[2] for s in steps]) if steps else np.zeros(0, int))
