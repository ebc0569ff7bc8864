"""Dynamic inference: the QuEE rule on new inputs, each sample running only the blocks it needs.

Samples are grouped by the level of their next block; each group's block runs once at that
level; samples that exit leave the batch. Predictions and per-sample costs equal what the
path-cache simulation (:func:`quee_kit.policy.simulate`) says for the same inputs.

Fake quantization computes in float32, so this engine saves wall-clock time only through the
blocks it skips (early exits), not through lower precision: that needs integer kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .costs import CostModel
from .models import EarlyExitModel
from .paths import compact_features
from .policy import call_needed
from .options import OptionSpace

__all__ = ["DynamicModel", "DynamicResult"]


@dataclass
class DynamicResult:
    """pred: (N,) classes; cost: (N,) normalized BOPs; node: (N,) path-tree node where each exited;
    blocks_run: total block evaluations (sum over samples)."""
    pred: torch.Tensor
    cost: np.ndarray
    node: np.ndarray
    blocks_run: int


class DynamicModel(nn.Module):
    """QuEE as a module: ``forward(x)`` -> :class:`DynamicResult`.

    model: the trained early-exit backbone; qblocks[q][t]: block t (0-based) at level q; predictor: the
    error predictor applied on new inputs (``predict_rows``; the one refitted on all of calib, as for
    test in the cache); opts: the option space; entry, lam: the chosen entry level index and λ; mask:
    (n_nodes, O) allowed options (the QuEE variant); call_cost: normalized cost of one predictor call.
    """

    def __init__(self, model: EarlyExitModel, qblocks: dict[int, list[nn.Module]], costs: CostModel,
                 predictor, opts: OptionSpace, entry: int, lam: float, mask: np.ndarray | None = None,
                 call_cost: float = 0.0):
        super().__init__()
        self.model, self.qblocks, self.predictor, self.costs = model.eval(), qblocks, predictor, costs
        self.opts, self.entry, self.lam, self.call_cost = opts, entry, float(lam), call_cost
        self.mask = opts.valid if mask is None else mask
        self.delta = opts.delta_cost(call_cost)
        # nodes where err_hat can change the decision (as in the cache simulation)
        self.calls_at = call_needed(opts, self.mask, call_cost, [self.lam])[0]
        self.tree = opts.tree

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> DynamicResult:
        tree, opts, N = self.tree, self.opts, len(x)
        pred = torch.empty(N, dtype=torch.long)
        cost = np.zeros(N)
        final = np.zeros(N, dtype=np.int64)
        idx = np.arange(N)                                   # samples still in the batch
        node = np.full(N, tree.entry[self.entry])
        dev = next(self.model.parameters()).device            # backbone on the GPU, predictors on the CPU
        h = self.qblocks[self.entry][0](self.model.stem(x.to(dev)))
        # Costs are accumulated from what actually runs: stem, each block at its level, each head,
        # each predictor call.
        cost += self.costs.stem + self.costs.block(1, tree.levels[self.entry])
        blocks_run, prev_logits = N, None
        for t in range(1, tree.L + 1):
            logits = self.model.heads[t - 1](h).float().cpu()
            cost[idx] += self.costs.head(t)
            feats = compact_features(logits, prev_logits, t, torch.as_tensor(tree.level[node]).float(),
                                     tree.L, len(tree.levels))
            if t == tree.L:
                go = np.zeros(len(idx), bool)
            else:
                # err_hat only where it can change the choice (elsewhere 0 gives the same argmin)
                call = self.calls_at[node]
                err_hat = np.zeros((len(idx), opts.n_options), dtype=np.float32)
                if call.any():
                    err_hat[call] = self.predictor.predict_rows(feats[call].numpy(), np.full(int(call.sum()), t),
                                                                node[call])
                score = np.where(self.mask[node], err_hat + self.lam * self.delta[node], np.inf)
                nxt = opts.next_node[node, score.argmin(1)]
                cost[idx[call]] += self.call_cost
                go = nxt >= 0
            done = ~go
            pred[idx[done]] = logits[done].argmax(-1)
            final[idx[done]] = node[done]
            if not go.any():
                break
            keep = torch.as_tensor(go)
            idx, node, h, prev_logits = idx[go], nxt[go], h[keep.to(dev)], logits[keep]
            # Group the remaining samples by the level of their next block; run it once per group.
            nh = torch.empty_like(h)
            for q in np.unique(tree.level[node]):
                g = torch.as_tensor(tree.level[node] == q)
                gd = g.to(dev)
                nh[gd] = self.qblocks[int(q)][t](h[gd])        # block t + 1 (the list is 0-based)
                blocks_run += int(g.sum())
                cost[idx[g.numpy()]] += self.costs.block(t + 1, tree.levels[int(q)])
            h = nh
        return DynamicResult(pred, cost, final, blocks_run)
