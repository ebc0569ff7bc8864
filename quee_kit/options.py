"""The option space of the decision rule: at every node of a path tree, exit now or a plan.

At a decision node (depth t < L, level q) the options are **exit now** or a **plan** (m, q'): run
blocks t+1..m at level q' (allowed by the family) and exit at m. Options are indexed
``(m - 1) * n_levels + q'`` over all (m, q') pairs (m 1-based), so one shared predictor covers every
depth; exit-now at node (t, q) is option ``(t - 1) * n_levels + q``; invalid options are masked.
Numpy only: the policy, the baselines and the engine need it without the predictors' MLP.
"""
from __future__ import annotations

import numpy as np

from .paths import PathTree

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["OptionSpace"]


class OptionSpace:
    """Options at every node of a tree.

    ``target[n, o]``: node reached by option o from node n (-1 if invalid), ``valid`` its mask,
    ``next_node[n, o]``: the node one block ahead (-1 for exit-now), ``exit_option[n]``,
    ``block_delta[n, o]``: normalized cost-to-go of the blocks and heads, ``calls[n, o]``: predictor
    calls on the way; :meth:`delta_cost` adds what those calls cost.
    """

    def __init__(self, tree: PathTree, node_cost: np.ndarray):
        nq, L, n = len(tree.levels), tree.L, len(tree)
        self.n_options, self.n_levels = L * nq, nq
        self.target = np.full((n, self.n_options), -1, dtype=np.int64)
        self.next_node = np.full((n, self.n_options), -1, dtype=np.int64)
        self.exit_option = (tree.depth - 1) * nq + tree.level
        self.target[np.arange(n), self.exit_option] = np.arange(n)
        self.calls = np.zeros((n, self.n_options))
        for node in range(n):
            t = int(tree.depth[node])
            for q2 in tree.allowed_next(int(tree.level[node])) if t < L else []:
                cur = node
                for m in range(t + 1, L + 1):
                    cur = tree.child[cur][q2]
                    o = (m - 1) * nq + q2
                    self.target[node, o] = cur
                    self.next_node[node, o] = tree.child[node][q2]
                    self.calls[node, o] = (m - t) if m < L else (m - t - 1)  # decisions on the way
        self.valid = self.target >= 0
        tgt = np.where(self.valid, self.target, 0)
        self.block_delta = np.where(self.valid, node_cost[tgt] - node_cost[:, None], 0.0)  # invalid: masked
        self.tree = tree
        for a in (self.target, self.next_node, self.exit_option, self.calls, self.valid, self.block_delta):
            a.flags.writeable = False   # shared by every method of a study: never modified after construction

    def delta_cost(self, call_cost: float = 0.0) -> np.ndarray:
        """(n_nodes, O) normalized cost-to-go of every option, predictor calls at ``call_cost`` each."""
        return self.block_delta + self.calls * call_cost

    def option_level(self, o: np.ndarray) -> np.ndarray:
        return o % self.n_levels

    def option_exit(self, o: np.ndarray) -> np.ndarray:
        return o // self.n_levels + 1
