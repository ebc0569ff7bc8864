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

import numpy as np
import torch
from tqdm.auto import tqdm

from .costs import CostModel
from .models import EarlyExitModel
from .quant import Level

__all__ = ["FAMILIES", "PathTree", "PathCache", "build_path_cache", "softmax_features",
           "FEATURE_NAMES", "HISTORY_FEATURES"]

FAMILIES = ("monotone", "free", "uniform")

# Compact per-node features (SPEC §2.4), in this column order.
FEATURE_NAMES = ["max_prob", "margin", "entropy", "p2", "p3", "depth", "level",
                 "prev_max_prob", "agree_prev"]
HISTORY_FEATURES = ("prev_max_prob", "agree_prev")


class PathTree:
    """Prefix tree of a path family.

    Node arrays (length ``n``): ``parent`` (-1 at depth 1), ``depth`` (1..L), ``level``
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

    def nodes_at(self, t: int) -> np.ndarray:
        return np.flatnonzero(self.depth == t)

    def describe(self, node: int) -> str:
        return "-".join(self.levels[q].name for q in self.paths[node])


def softmax_features(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) logits -> (..., 5): max prob, margin (p1 - p2), entropy / log C, p2, p3."""
    p = logits.float().softmax(-1)
    top = p.topk(min(3, p.shape[-1]), dim=-1).values
    if top.shape[-1] < 3:
        top = torch.nn.functional.pad(top, (0, 3 - top.shape[-1]))
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / np.log(max(p.shape[-1], 2))
    return torch.stack([top[..., 0], top[..., 0] - top[..., 1], ent, top[..., 1], top[..., 2]], -1)


@dataclass
class PathCache:
    """Every node of a :class:`PathTree` evaluated on one split.

    logits: (n_nodes, N, C) float32; y: (N,) int64; node_cost: (n_nodes,) normalized BOPs of
    reaching the node with every head on the way evaluated (what a dynamic policy pays);
    static_cost: (n_nodes,) the same with only the node's own head (a static model exiting there).
    features: (n_nodes, N, len(FEATURE_NAMES)) float32, see :data:`FEATURE_NAMES`.
    """
    tree: PathTree
    logits: torch.Tensor
    y: torch.Tensor
    node_cost: np.ndarray
    static_cost: np.ndarray
    features: torch.Tensor = field(repr=False, default=None)
    stats: dict = field(default_factory=dict)

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    @property
    def correct(self) -> torch.Tensor:
        """(n_nodes, N) bool."""
        return self.pred == self.y

    @property
    def n(self) -> int:
        return self.logits.shape[1]

    def accuracy(self, node: int) -> float:
        return float(self.correct[node].float().mean())

    def node(self, levels: list[int] | tuple[int, ...]) -> int:
        return self.tree.index[tuple(levels)]


def _features(tree: PathTree, logits: torch.Tensor) -> torch.Tensor:
    sm = softmax_features(logits)                               # (n, N, 5)
    n, N = logits.shape[:2]
    depth = torch.as_tensor(tree.depth / tree.L, dtype=torch.float32).view(n, 1, 1).expand(n, N, 1)
    lev = torch.as_tensor(tree.level / max(len(tree.levels) - 1, 1), dtype=torch.float32)
    lev = lev.view(n, 1, 1).expand(n, N, 1)
    par = torch.as_tensor(np.where(tree.parent < 0, np.arange(n), tree.parent))
    prev_max = torch.where(torch.as_tensor(tree.parent < 0).view(n, 1), 0.0, sm[par, :, 0])
    pred = logits.argmax(-1)
    agree = (pred == pred[par]).float()
    return torch.cat([sm, depth, lev, prev_max.unsqueeze(-1), agree.unsqueeze(-1)], -1).contiguous()


@torch.no_grad()
def build_path_cache(model: EarlyExitModel, qblocks: dict[int, list[torch.nn.Module]], tree: PathTree,
                     costs: CostModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
                     device: str = "cpu", progress: bool = True, desc: str = "path cache") -> PathCache:
    """Evaluate every node of ``tree`` on ``(x, y)``.

    ``qblocks[q][t]`` is block ``t`` prepared at level index ``q`` (see
    :func:`quee_kit.quant.apply_level`). Breadth-first per chunk of ``batch_size`` samples: the
    states of one depth are kept, each node's block runs once on its parent's state.
    """
    model.eval()
    n, N = len(tree), len(x)
    logits = None
    t0 = time.perf_counter()
    steps = n * ((N + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc=f"{desc} ({n} nodes)", disable=not progress, leave=False)
    for s in range(0, N, batch_size):
        xb = x[s:s + batch_size].to(device)
        root = model.stem(xb)
        states = {-1: root}
        for t in range(1, tree.L + 1):
            new = {}
            for node in tree.nodes_at(t):
                h = qblocks[int(tree.level[node])][t - 1](states[int(tree.parent[node])])
                out = model.heads[t - 1](h).float().cpu()
                if logits is None:
                    logits = torch.empty(n, N, out.shape[-1])
                logits[node, s:s + len(xb)] = out
                if t < tree.L:
                    new[int(node)] = h
                bar.update(1)
            states = new
    bar.close()
    seconds = time.perf_counter() - t0
    node_cost = np.array([costs.path([tree.levels[q] for q in p]) for p in tree.paths])
    static_cost = np.array([node_cost[i] - sum(costs.head(t) for t in range(len(p) - 1))
                            for i, p in enumerate(tree.paths)])
    cache = PathCache(tree, logits, y.cpu().long(), node_cost, static_cost)
    cache.features = _features(tree, logits)
    cache.stats = {"nodes": n, "samples": N, "seconds": seconds,
                   "node_samples_per_s": n * N / max(seconds, 1e-9)}
    return cache
