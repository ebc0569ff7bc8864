"""Dynamic inference: the QuEE rule on new inputs, each sample running only the blocks it needs.

Samples are grouped by the level of their next block; each group's block runs once at that
level; samples that exit leave the batch. Predictions and per-sample costs equal what the
path-cache simulation (:func:`quee_kit.policy.simulate`) says for the same inputs.

With ``quant.backend: fake`` the quantized blocks compute in floats (``paths.dtype``), so the engine saves time only
through the blocks it skips; the ``int`` and ``int-compiled`` backends make low-precision blocks cheaper
than float ones too (README, "Wall-clock"). With ``labels = True`` ``torch.profiler`` sees the engine's parts
as ``engine.blocks``, ``engine.heads``, ``engine.decide`` (with ``engine.predictor``) and ``engine.regroup``
(off by default: a label costs about 4 µs of host time, some 25 of them per batch).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function

from .costs import CostModel
from .models import EarlyExitModel, first_token_state, input_dtype
from .paths import FEATURE_NAMES, compact_features
from .quant_features import quant_stats
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
    ``labels``: name the engine's parts for ``torch.profiler`` (see the module's docstring).
    """

    labels = False

    def __init__(self, model: EarlyExitModel, qblocks: dict[int, list[nn.Module]], costs: CostModel,
                 predictor, opts: OptionSpace, entry: int, lam: float, mask: np.ndarray | None = None,
                 call_cost: float = 0.0):
        super().__init__()
        if getattr(predictor, "probe", False):
            raise ValueError("engine: the paid probe (quee-probe) runs in the path-cache simulation only, not in DynamicModel")
        self.model, self.qblocks, self.predictor, self.costs = model.eval(), qblocks, predictor, costs
        self.opts, self.entry, self.lam, self.call_cost = opts, entry, float(lam), call_cost
        self.mask = opts.valid if mask is None else mask
        # nodes where err_hat can change the decision (as in the cache simulation)
        self.calls_at = call_needed(opts, self.mask, call_cost, [self.lam])[0]
        self.tree = opts.tree
        self.cls_last = getattr(model.heads[-1], "reads_cls", False)
        self.dtype = input_dtype(model)   # the path cache's (``paths.dtype``): inputs are cast to it
        # block_cost[t, q]: normalized cost of block index t (0-based; depth t + 1) at level q
        self.block_cost = np.array([[costs.block(t + 1, lv) for lv in self.tree.levels] for t in range(self.tree.L)])
        self.head_cost = [0.0] + [costs.head(t) for t in range(1, self.tree.L + 1)]
        self.call_charge = np.where(self.calls_at, call_cost, 0.0)   # what a decision at each node pays
        # the rule's score is ê + λ·Δcost over the allowed options (lowest option index on ties); where ê is
        # not needed it is taken as 0, so the choice at such a node is fixed
        self.lam_delta = self.lam * opts.delta_cost(call_cost)
        free = np.where(self.mask, np.float32(0) + self.lam_delta, np.inf).argmin(1)
        self.free_next = opts.next_node[np.arange(len(free)), free]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> DynamicResult:
        tree, N = self.tree, len(x)
        pred = np.zeros(N, dtype=np.int64)
        cost = np.zeros(N)
        final = np.zeros(N, dtype=np.int64)
        idx = np.arange(N)                                   # samples still in the batch
        node = np.full(N, tree.entry[self.entry])
        dev = next(self.model.parameters()).device            # backbone on the GPU, predictors on the CPU
        with self._label("blocks"):
            h = self._block(self.qblocks[self.entry][0], self.model.stem(x.to(dev, self.dtype)), 0)
        # Costs are accumulated from what actually runs: stem, each block at its level, each head,
        # each predictor call.
        cost += self.costs.stem + self.costs.block(1, tree.levels[self.entry])
        blocks_run, prev_logits = N, None
        for t in range(1, tree.L + 1):
            with self._label("heads"):
                logits = self.model.heads[t - 1](h)
                if logits.dtype != torch.float32 or logits.device.type != "cpu":
                    logits = logits.float().cpu()
            cost[idx] += self.head_cost[t]
            with self._label("decide"):
                if t == tree.L:
                    go = np.zeros(len(idx), bool)
                else:
                    nxt = self._decide(logits, prev_logits, t, node, h)
                    cost[idx] += self.call_charge[node]       # + 0.0 where no call is made: the same bits
                    go = nxt >= 0
                if not go.all():
                    done = ~go
                    pred[idx[done]] = logits.argmax(-1).numpy()[done]
                    final[idx[done]] = node[done]
            if not go.any():
                break
            with self._label("regroup"):
                # The remaining samples, sorted by the level of their next block: one gather, then each
                # level's group is a contiguous slice that runs its block once. One level and nobody
                # leaving (always so at batch size 1): nothing to gather.
                keep = np.flatnonzero(go)
                level = tree.level[nxt[keep]]
                single = bool((level == level[0]).all())
                if not single:
                    order = np.argsort(level, kind="stable")
                    keep, level = keep[order], level[order]
                idx, node = idx[keep], nxt[keep]
                if len(keep) < len(go) or not single:
                    kt = torch.from_numpy(keep)
                    h, prev_logits = h.index_select(0, kt.to(dev)), logits.index_select(0, kt)
                else:
                    prev_logits = logits
            with self._label("blocks"):
                if single:
                    h = self._block(self.qblocks[int(level[0])][t], h, t)
                else:
                    levels, counts = np.unique(level, return_counts=True)
                    h = torch.cat([self._block(self.qblocks[int(q)][t], part, t)
                                   for q, part in zip(levels, torch.split(h, counts.tolist()))])
            blocks_run += len(idx)
            cost[idx] += self.block_cost[t, level]
        return DynamicResult(torch.from_numpy(pred), cost, final, blocks_run)

    def _label(self, part: str):
        return record_function(f"engine.{part}") if self.labels else nullcontext()

    def _block(self, block: nn.Module, h: torch.Tensor, t: int) -> torch.Tensor:
        """Block index ``t`` (0-based) on ``h``; the last one computes only what a CLS exit reads, as the path
        cache does (:func:`~quee_kit.models.first_token_state`, the same numbers)."""
        return first_token_state(block, h) if t == self.tree.L - 1 and self.cls_last else block(h)

    def _decide(self, logits: torch.Tensor, prev_logits, t: int, node: np.ndarray, h: torch.Tensor) -> np.ndarray:
        """The next node of each sample (-1: exit now) by the receding-horizon rule; ê is computed only
        where it can change the choice (elsewhere 0 gives the same argmin). ``h``: the state after block t."""
        call = self.calls_at[node]
        if not call.any():  # ê = 0 everywhere gives the same argmin: the choice was made once, in __init__
            return self.free_next[node]
        if call.all():      # the common case: no row to pick out
            err_hat = self._predict(logits, prev_logits, t, node, h).astype(np.float32, copy=False)
        else:
            err_hat = np.zeros((len(node), self.opts.n_options), dtype=np.float32)
            err_hat[call] = self._predict(logits[call], None if prev_logits is None else prev_logits[call], t,
                                          node[call], h[torch.from_numpy(call).to(h.device)])
        score = np.where(self.mask[node], err_hat + self.lam_delta[node], np.inf)
        return self.opts.next_node[node, score.argmin(1)]

    def _predict(self, logits: torch.Tensor, prev_logits, t: int, node: np.ndarray, h: torch.Tensor) -> np.ndarray:
        """``err_hat`` (rows, O) of rows at depth ``t`` and ``node``, computing only the features the predictor
        reads (``columns``; all of them when it does not say), the quantization-aware statistics of the state
        ``h`` (the columns after :data:`~quee_kit.paths.FEATURE_NAMES`) only when it reads them."""
        cols = getattr(self.predictor, "columns", None)
        quant = cols is not None and max(cols, default=0) >= len(FEATURE_NAMES)
        feats = compact_features(logits, prev_logits, t, self.tree.level[node], self.tree.L, len(self.tree.levels),
                                 [c for c in cols if c < len(FEATURE_NAMES)] if quant else cols)
        if quant:
            feats = torch.cat([feats, quant_stats(h, self.tree.levels).float().cpu()], -1)
        with self._label("predictor"):
            return self.predictor.predict_rows(feats.numpy(), np.full(len(node), t), node)
