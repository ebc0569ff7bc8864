"""Path families, the prefix tree of paths, and the path cache.

A path runs blocks 1..e at levels (q_1..q_e) and exits at e. Levels are indexed by cost,
0 = reference (costliest). The **entry level** q_1 is free in every family; after that
``monotone`` lets the level stay or go down (index stays or grows), ``free`` allows any
level, ``uniform`` keeps q_1. Every prefix is a node; the cache evaluates every node once
per sample (breadth-first per chunk of samples, each shared prefix computed once).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from tqdm.auto import tqdm

from .costs import CostModel
from .models import EarlyExitModel, first_token_state, input_dtype
from .quant import Level
from .quant_features import quant_stats

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["FAMILIES", "PathTree", "PathCache", "build_path_cache", "softmax_features", "compact_features",
           "node_features", "FEATURE_NAMES", "HISTORY_FEATURES", "DISCRETE_FEATURES", "LOG_ODDS"]

FAMILIES = ("monotone", "free", "uniform")

# Compact per-node features (README, "What the kit computes": Features), in this column order.
FEATURE_NAMES = ["max_prob", "margin", "entropy", "p2", "p3", "log_odds", "logit_margin", "depth", "level",
                 "prev_max_prob", "agree_prev"]
HISTORY_FEATURES = ("prev_max_prob", "agree_prev")
DISCRETE_FEATURES = ("depth", "level", "agree_prev")  # kept out of clustering spaces
LOG_ODDS = FEATURE_NAMES.index("log_odds")


class PathTree:
    """Prefix tree of a path family.

    Node arrays (length ``n_nodes``): ``parent`` (-1 at depth 1), ``depth`` (1..L), ``level``
    (index into ``levels``). ``child[node][level]`` -> node; ``entry[level]`` -> depth-1 node.
    """

    def __init__(self, levels: list[Level], depth: int, family: str = "monotone"):
        if family not in FAMILIES:
            raise ValueError(f"paths.family must be one of {', '.join(FAMILIES)} (got {family!r})")
        self.levels, self.L, self.family = list(levels), depth, family
        self.parent, self.depth, self.level, self.paths = [], [], [], []
        self.child: list[dict[int, int]] = []
        self.entry = {}
        frontier = []
        for q in range(len(levels)):
            self.entry[q] = self._add(-1, 1, q, (q,))
            frontier.append(self.entry[q])
        for t in range(2, depth + 1):
            nxt = []
            for node in frontier:
                for q in self.allowed_next(self.level[node]):
                    c = self._add(node, t, q, self.paths[node] + (q,))
                    self.child[node][q] = c
                    nxt.append(c)
            frontier = nxt
        self.parent, self.depth, self.level = map(np.asarray, (self.parent, self.depth, self.level))
        self.index = {p: i for i, p in enumerate(self.paths)}

    def _add(self, parent, t, q, path):
        self.parent.append(parent)
        self.depth.append(t)
        self.level.append(q)
        self.paths.append(path)
        self.child.append({})
        return len(self.paths) - 1

    def allowed_next(self, q: int) -> list[int]:
        """Level indices block t+1 may run at after a block at level index ``q``."""
        if self.family == "monotone":
            return list(range(q, len(self.levels)))
        if self.family == "free":
            return list(range(len(self.levels)))
        return [q]

    def __len__(self) -> int:
        return len(self.paths)

    def child_table(self) -> np.ndarray:
        """(n_nodes, n_levels) int: child node per next level, -1 where none."""
        if not hasattr(self, "_child_table"):
            t = np.full((len(self), len(self.levels)), -1, dtype=np.int64)
            for n, ch in enumerate(self.child):
                for q, c in ch.items():
                    t[n, q] = c
            self._child_table = t
        return self._child_table

    def nodes_at(self, t: int) -> np.ndarray:
        return np.flatnonzero(self.depth == t)



def softmax_features(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) logits -> (..., 7): max prob, margin (p1 - p2), entropy / log C, p2, p3,
    log-odds of the top class log(p1 / (1 - p1)) and the top-2 logit margin.

    The two log-scale features keep apart confidences like 0.99 / 0.999 / 0.9999 that probabilities
    squash together, where most errors of a 94%-accurate head are decided.
    """
    logits = logits.float()
    p = logits.softmax(-1)
    top = p.topk(min(3, p.shape[-1]), dim=-1).values
    if top.shape[-1] < 3:
        top = torch.nn.functional.pad(top, (0, 3 - top.shape[-1]))
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / np.log(max(p.shape[-1], 2))
    tl = logits.topk(2, dim=-1)
    return torch.stack([top[..., 0], top[..., 0] - top[..., 1], ent, top[..., 1], top[..., 2], _log_odds(logits, tl),
                        tl.values[..., 0] - tl.values[..., 1]], -1)


def _log_odds(logits: torch.Tensor, top2) -> torch.Tensor:
    """log(p1 / (1 - p1)) from float logits and their ``topk(2)``: the top logit minus the logsumexp of the others."""
    rest = logits.scatter(-1, top2.indices[..., :1], float("-inf")).logsumexp(-1)
    return top2.values[..., 0] - rest


@dataclass
class PathCache:
    """Every node of a :class:`PathTree` evaluated on one split.

    logits: (n_nodes, N, C) float32; y: (N,) int64; node_cost: (n_nodes,) normalized BOPs of
    reaching the node with every head on the way evaluated (what a dynamic policy pays);
    static_cost: (n_nodes,) the same with only the node's own head (a static model exiting there).
    ``features`` are derived from the logits on first use, followed by ``qstats`` where the cache has them:
    (n_nodes, N, Q) quantization-aware statistics of each decision node's state
    (:func:`~quee_kit.quant_features.quant_stats`; NaN at the leaves), built for ``predictor.features: quant``.
    """
    tree: PathTree
    logits: torch.Tensor
    y: torch.Tensor
    node_cost: np.ndarray
    static_cost: np.ndarray
    stats: dict = field(default_factory=dict)
    qstats: torch.Tensor | None = None

    @cached_property
    def features(self) -> torch.Tensor:
        """(n_nodes, N, len(FEATURE_NAMES) [+ Q]) float32, see :data:`FEATURE_NAMES` and ``qstats`` (computed once)."""
        f = node_features(self.tree, self.logits)
        return f if self.qstats is None else torch.cat([f, self.qstats], -1)

    @cached_property
    def pred(self) -> torch.Tensor:
        """(n_nodes, N) predicted class (computed once; the logits are never modified)."""
        return self.logits.argmax(-1)

    @cached_property
    def correct(self) -> torch.Tensor:
        """(n_nodes, N) bool."""
        return self.pred == self.y

    @cached_property
    def correct_np(self) -> np.ndarray:
        return self.correct.numpy()

    @property
    def n_samples(self) -> int:
        return self.logits.shape[1]

    @property
    def n_nodes(self) -> int:
        return self.logits.shape[0]

    def accuracy(self, node: int) -> float:
        return float(self.correct[node].float().mean())

    def node(self, levels: list[int] | tuple[int, ...]) -> int:
        return self.tree.index[tuple(levels)]


def compact_features(logits: torch.Tensor, prev_logits: torch.Tensor | None, depth, level,
                     L: int, n_levels: int, columns=None) -> torch.Tensor:
    """Features of :data:`FEATURE_NAMES` for rows of head outputs.

    logits, prev_logits: (..., C) at this head and the previous one (None at depth 1);
    depth, level: broadcastable to ``logits.shape[:-1]``. Shared by the cache and the engine so
    that both compute bit-identical features. ``columns``: the feature indices the caller reads (None:
    all); when that is the log-odds alone (what the per-node calibrated predictors read), only it is
    computed, with the same bits, and the other columns are NaN.
    """
    if columns is not None and set(columns) <= {LOG_ODDS}:
        out = torch.full((*logits.shape[:-1], len(FEATURE_NAMES)), float("nan"))
        lg = logits.float()
        out[..., LOG_ODDS] = _log_odds(lg, lg.topk(2, dim=-1))
        return out
    sm = softmax_features(logits)
    shape = logits.shape[:-1]
    d = torch.as_tensor(depth, dtype=torch.float32).expand(shape) / L
    q = torch.as_tensor(level, dtype=torch.float32).expand(shape) / max(n_levels - 1, 1)
    if prev_logits is None:
        prev_max, agree = torch.zeros(shape), torch.ones(shape)
    else:
        prev_max = prev_logits.float().softmax(-1).amax(-1)   # softmax_features' max prob: the same bits, 2 ops not 12
        agree = (logits.argmax(-1) == prev_logits.argmax(-1)).float()
    return torch.cat([sm, d.unsqueeze(-1), q.unsqueeze(-1), prev_max.unsqueeze(-1), agree.unsqueeze(-1)], -1)


def node_features(tree: PathTree, logits: torch.Tensor) -> torch.Tensor:
    """(n_nodes, N, F) features of every node of a cache."""
    out = torch.empty(*logits.shape[:2], len(FEATURE_NAMES))
    nq = len(tree.levels)
    for t in range(1, tree.L + 1):
        nodes = tree.nodes_at(t)
        prev = None if t == 1 else logits[tree.parent[nodes]]
        out[nodes] = compact_features(logits[nodes], prev, torch.as_tensor(tree.depth[nodes]).view(-1, 1),
                                      torch.as_tensor(tree.level[nodes]).view(-1, 1), tree.L, nq)
    return out


@torch.no_grad()
def build_path_cache(model: EarlyExitModel, qblocks: dict[int, list[torch.nn.Module]], tree: PathTree,
                     costs: CostModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
                     device: str = "cpu", progress: bool = True, desc: str = "path cache",
                     quant_features: bool = False) -> PathCache:
    """Evaluate every node of ``tree`` on ``(x, y)``.

    ``qblocks[q][t - 1]`` is block ``t`` (1-based depth) prepared at level index ``q`` (see
    :func:`quee_kit.quant.apply_level`). Breadth-first per chunk of ``batch_size`` samples: the
    states of one depth are kept, each node's block runs once on its parent's state. When the last exit
    reads only the CLS token, the last block computes that token alone
    (:func:`~quee_kit.models.first_token_state`, the same numbers), as the dynamic engine does.
    ``quant_features``: also the statistics of every decision node's state (``PathCache.qstats``).
    """
    model.eval()
    dtype = input_dtype(model)   # float32, or float64 with ``paths.dtype`` (logits are stored in float32 either way)
    cls_last = getattr(model.heads[tree.L - 1], "reads_cls", False)
    n_nodes, N = len(tree), len(x)
    logits = qstats = None
    t0 = time.perf_counter()
    steps = n_nodes * ((N + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc=f"{desc} ({n_nodes} nodes)", disable=not progress, leave=False)
    for s in range(0, N, batch_size):
        xb = x[s:s + batch_size].to(device, dtype)
        root = model.stem(xb)
        states = {-1: root}
        for t in range(1, tree.L + 1):
            new = {}
            for node in tree.nodes_at(t):
                block, parent = qblocks[int(tree.level[node])][t - 1], states[int(tree.parent[node])]
                # after the last block only the exit reads the state: its CLS token is all a CLS head needs
                h = first_token_state(block, parent) if t == tree.L and cls_last else block(parent)
                out = model.heads[t - 1](h).float().cpu()
                if logits is None:
                    logits = torch.empty(n_nodes, N, out.shape[-1])
                logits[node, s:s + len(xb)] = out
                if t < tree.L:
                    new[int(node)] = h
                    if quant_features:
                        st = quant_stats(h, tree.levels).float().cpu()
                        if qstats is None:
                            qstats = torch.full((n_nodes, N, st.shape[-1]), float("nan"))
                        qstats[node, s:s + len(xb)] = st
                bar.update(1)
            states = new
    bar.close()
    seconds = time.perf_counter() - t0
    node_cost = np.array([costs.path([tree.levels[q] for q in p]) for p in tree.paths])
    static_cost = np.array([node_cost[i] - sum(costs.head(t) for t in range(1, len(p)))
                            for i, p in enumerate(tree.paths)])
    return PathCache(tree, logits, y.cpu().long(), node_cost, static_cost,
                     stats={"nodes": n_nodes, "samples": N, "seconds": seconds,
                            "node_samples_per_s": n_nodes * N / max(seconds, 1e-9)}, qstats=qstats)
