"""A paid probe (variant ``quee-probe``, issue 29): buy one block of information before deciding.

At a decision node n (block t done at level q, t < L) where the rule calls its predictor, it first runs
block t+1 at the **cheapest level allowed after q** and that block's exit head (the *probe*), and the
predictor sees the probe head's features (its log-odds and whether it agrees with the current head)
next to the node's own. In the path cache the probe's output is the cache entry of that child node
(:attr:`Probe.child`), so simulation needs no new forward pass.

Accounting (what a sample pays), explicit and tested:

- the probe costs ``P(n) = node_cost[child] - node_cost[n]``: block t+1 at the cheapest level plus head
  t+1, the costs of :mod:`quee_kit.costs` through the cache's node costs, charged in full;
- it is paid at every decision that calls the predictor (none where the call is not needed, as for the
  call itself: :func:`quee_kit.policy.call_needed`, judged before the probe is bought);
- if the decision then continues at exactly the probe's level, the next node *is* the probe's node: its
  block and head are not run again, so the sample's cost is the cost of the node it reaches (the probe was
  the next step). Any other choice (exit now, or a plan at another level) wastes the probe: ``P(n)`` is
  added on top of the node cost. So a sample pays ``node_cost[exit node] + calls * call_cost +
  sum of P(n) over its wasted probes``.

The rule's cost-to-go after the probe (:attr:`Probe.delta`): exit now 0 (the probe is sunk); plan (m, q')
its block cost-to-go and predictor calls as for plain QuEE, minus ``P(n)`` when q' is the probe's level
(the first block is paid), plus the probes the plan's later decisions buy and waste (assuming each of them
calls the predictor, the same assumption the plain rule makes about calls).
Numpy only, like :mod:`quee_kit.options`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import OptionSpace
from .paths import FEATURE_NAMES, LOG_ODDS, PathCache, PathTree

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["Probe", "probe_child", "probe_rows", "PROBE_COLUMNS"]

# The columns the probe predictor reads from a row of [node features | probe features]: the node head's
# log-odds, the probe head's log-odds and the probe's agreement with the node head (its agree_prev).
PROBE_COLUMNS = [LOG_ODDS, len(FEATURE_NAMES) + LOG_ODDS, len(FEATURE_NAMES) + FEATURE_NAMES.index("agree_prev")]


def probe_child(tree: PathTree) -> np.ndarray:
    """(n_nodes,) the node one block ahead at the cheapest level allowed after each node's level; -1 at
    the last depth (no decision there)."""
    ch = tree.child_table()
    out = np.full(len(tree), -1, dtype=np.int64)
    for n in np.flatnonzero(tree.depth < tree.L):
        out[n] = ch[n, max(tree.allowed_next(int(tree.level[n])))]
    return out


@dataclass(frozen=True)
class Probe:
    """child: (n_nodes,) probe node (-1 at leaves); cost: (n_nodes,) ``P(n)`` (0 at leaves); delta: (n_nodes,
    O) the rule's cost-to-go of every option after the probe at n is paid (module docstring)."""
    child: np.ndarray
    cost: np.ndarray
    delta: np.ndarray

    @classmethod
    def build(cls, opts: OptionSpace, node_cost: np.ndarray, call_cost: float) -> "Probe":
        tree, nq = opts.tree, opts.n_levels
        child = probe_child(tree)
        cost = np.where(child >= 0, node_cost[np.maximum(child, 0)] - node_cost, 0.0)
        delta = opts.delta_cost(call_cost).copy()
        for n in np.flatnonzero(child >= 0):
            t, q_probe = int(tree.depth[n]), int(tree.level[child[n]])
            for q2 in tree.allowed_next(int(tree.level[n])):
                cont, cur = 0.0, n   # probes bought and wasted at the plan's decisions t+1..m-1 (it goes on at q2 there)
                for m in range(t + 1, tree.L + 1):
                    cur = tree.child[cur][q2]
                    exit_probe = cost[cur] if m < tree.L else 0.0     # the exit decision at m < L buys one and exits
                    delta[n, (m - 1) * nq + q2] += cont + exit_probe - (cost[n] if q2 == q_probe else 0.0)
                    if m < tree.L and tree.level[child[cur]] != q2:
                        cont += cost[cur]
        for a in (child, cost, delta):
            a.flags.writeable = False
        return cls(child, cost, delta)

    def wasted(self, node: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """``P(node)`` where the decision at ``node`` went to ``nxt`` (-1: exit) other than the probe's node, else 0."""
        return np.where(nxt != self.child[node], self.cost[node], 0.0)


def probe_rows(cache: PathCache, nodes: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """(len(nodes) * len(samples), F) features of each node's probe node, node-major (the rows of
    :func:`quee_kit.predictors.decision_rows`)."""
    child = probe_child(cache.tree)[np.asarray(nodes)]
    if (child < 0).any():
        raise ValueError("probe features asked at a node of the last depth (no block left to probe)")
    return cache.features[child][:, samples].reshape(-1, len(FEATURE_NAMES)).numpy()
