"""Predicting probabilities of error: options, discretized targets, the cross-fitted MLP.

At a decision node (depth t < L, level q) the options are **exit now** or a **plan** (m, q'):
run blocks t+1..m at level q' (allowed by the family) and exit at m. Options are indexed
``(m - 1) * n_levels + q'`` over all (m, q') pairs, so one shared MLP covers every depth;
exit-now at node (t, q) is option ``(t - 1) * n_levels + q``; invalid options are masked.

Targets by discretization (SPEC §2.4): per depth, the predictor-training rows are
partitioned into cells (k-means on standardized features, or the k nearest neighbours);
the target of option a for a row is the mean error of a in its cell, shrunk toward the
depth's mean error of a with ``prior_weight`` pseudo-samples:
``(errors_in_cell + w * depth_mean) / (count_in_cell + w)``. Unlike +1/+2 Laplace
smoothing, which pulls a 5% error rate in a 10-sample cell to 17%, this is unbiased at the
depth level. ``raw`` uses the 0/1 labels themselves (the ablation).

Cross-fitting: the MLP is trained k-fold over the calib *samples*; calib predictions are
out-of-fold, test predictions are the mean of the k fold models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors
from torch import nn
from tqdm.auto import tqdm

from .costs import mlp_macs
from .paths import FEATURE_NAMES, HISTORY_FEATURES, PathCache, PathTree

__all__ = ["OptionSpace", "feature_columns", "discretized_targets", "ErrorPredictor", "fit_cross_fitted",
           "CrossFitted",
           "predictor_quality", "exit_now_rows"]


class OptionSpace:
    """Options at every node of a tree.

    ``target[n, o]``: node reached by option o from node n (-1 if invalid), ``valid`` its mask,
    ``next_node[n, o]``: the node one block ahead (-1 for exit-now), ``exit_option[n]``,
    ``delta_cost[n, o]``: normalized cost-to-go (blocks, heads and future predictor calls).
    """

    def __init__(self, tree: PathTree, node_cost: np.ndarray, predictor_cost: float = 0.0):
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
        self.base_delta = np.where(self.valid, node_cost[tgt] - node_cost[:, None], 0.0)  # invalid: masked
        self.set_predictor_cost(predictor_cost)
        self.tree = tree

    def set_predictor_cost(self, c: float) -> None:
        self.predictor_cost = c
        self.delta_cost = self.base_delta + self.calls * c

    def option_level(self, o: np.ndarray) -> np.ndarray:
        return o % self.n_levels

    def option_exit(self, o: np.ndarray) -> np.ndarray:
        return o // self.n_levels + 1


def feature_columns(history: bool = True) -> list[int]:
    return [i for i, f in enumerate(FEATURE_NAMES) if history or f not in HISTORY_FEATURES]


def _errors(cache: PathCache, opts: OptionSpace, nodes: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """0/1 errors (rows = nodes x samples, options) with NaN for invalid options."""
    err = (~cache.correct).numpy()                                   # (n_nodes, N)
    tgt = opts.target[nodes]                                         # (nn, O)
    e = err[np.where(tgt >= 0, tgt, 0)][:, :, samples]               # (nn, O, S)
    e = np.where((tgt >= 0)[:, :, None], e, np.nan).astype(np.float32)
    return e.transpose(0, 2, 1).reshape(-1, opts.n_options)


def discretized_targets(X: np.ndarray, E: np.ndarray, depth: np.ndarray, scheme: str, K: int = 8,
                        knn_k: int = 50, prior_weight: float = 5.0, seed: int = 0) -> np.ndarray:
    """Soft targets per row and option.

    X: (R, F) features; E: (R, O) 0/1 errors with NaN where invalid; depth: (R,) depth of each
    row. Returns (R, O) float32 targets (NaN where invalid).
    """
    if scheme == "raw":
        return E.copy()
    T = np.full_like(E, np.nan)
    for t in np.unique(depth):
        rows = np.flatnonzero(depth == t)
        Xt, Et = X[rows], E[rows]
        mu, sd = Xt.mean(0), Xt.std(0) + 1e-6
        Z = (Xt - mu) / sd
        valid = ~np.isnan(Et)
        Ez = np.where(valid, Et, 0.0)
        depth_mean = Ez.sum(0) / np.maximum(valid.sum(0), 1)
        if scheme == "kmeans":
            k = min(K, len(rows))
            fit_rows = np.random.default_rng(seed).choice(len(rows), min(len(rows), 20000), replace=False)
            km = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(Z[fit_rows])
            cell = km.predict(Z)
            S = np.zeros((k, E.shape[1]))
            C = np.zeros((k, E.shape[1]))
            np.add.at(S, cell, Ez)
            np.add.at(C, cell, valid)
            T[rows] = ((S + prior_weight * depth_mean) / (C + prior_weight))[cell]
        elif scheme == "knn":
            ref = np.random.default_rng(seed).choice(len(rows), min(len(rows), 20000), replace=False)
            nn_ = NearestNeighbors(n_neighbors=min(knn_k, len(ref))).fit(Z[ref])
            idx = nn_.kneighbors(Z, return_distance=False)              # (R_t, k)
            S = Ez[ref][idx].sum(1)
            C = valid[ref][idx].sum(1)
            T[rows] = (S + prior_weight * depth_mean) / (C + prior_weight)
        else:
            raise ValueError(f"predictor.targets must be kmeans, knn or raw (got {scheme!r})")
        T[rows] = np.where(valid, T[rows], np.nan)
    return T.astype(np.float32)


class ErrorPredictor(nn.Module):
    """MLP: features (R, F) -> error probability logits (R, O). ``shared=False``: one MLP per depth."""

    def __init__(self, n_features: int, n_options: int, depth: int, hidden: int = 32, layers: int = 2,
                 shared: bool = True):
        super().__init__()
        sizes = [n_features] + [hidden] * layers + [n_options]

        def mlp():
            mods = []
            for a, b in zip(sizes[:-2], sizes[1:-1]):
                mods += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*mods, nn.Linear(sizes[-2], sizes[-1]))

        self.shared = shared
        self.nets = nn.ModuleList([mlp() for _ in range(1 if shared else depth)])
        self.macs = mlp_macs(sizes)  # MACs of one call (one sample at one node)
        self.register_buffer("mu", torch.zeros(n_features))
        self.register_buffer("sd", torch.ones(n_features))

    def forward(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) / self.sd
        if self.shared:
            return self.nets[0](z)
        out = torch.empty(len(x), self.nets[0][-1].out_features, dtype=z.dtype)
        for t in torch.unique(depth).tolist():
            m = depth == t
            out[m] = self.nets[t - 1](z[m])
        return out


def _rows(cache: PathCache, opts: OptionSpace, samples: np.ndarray, cols: list[int]):
    """Decision rows (node depth < L) for ``samples``: features, 0/1 errors, depth, node ids."""
    tree = opts.tree
    nodes = np.flatnonzero(tree.depth < tree.L)
    X = cache.features[nodes][:, samples][:, :, cols].reshape(-1, len(cols)).numpy()
    E = _errors(cache, opts, nodes, samples)
    depth = np.repeat(tree.depth[nodes], len(samples))
    return X, E, depth, nodes


def _masked_bce(logits, target, mask):
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def _fit_one(X, T, E, depth, cfg, L: int, n_options: int, seed: int) -> ErrorPredictor:
    """Fit on soft targets T with early stopping on held-out 0/1 BCE (10% of rows' samples)."""
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    R = len(X)
    if R > cfg.max_rows:
        keep = g.choice(R, cfg.max_rows, replace=False)
        X, T, E, depth = X[keep], T[keep], E[keep], depth[keep]
        R = cfg.max_rows
    perm = g.permutation(R)
    n_val = max(1, R // 10)
    va, tr = perm[:n_val], perm[n_val:]
    model = ErrorPredictor(X.shape[1], n_options, L, cfg.hidden, cfg.layers, cfg.shared)
    model.mu.copy_(torch.as_tensor(X[tr].mean(0)))
    model.sd.copy_(torch.as_tensor(X[tr].std(0) + 1e-6))
    Xt, Tt, Et, Dt = (torch.as_tensor(a) for a in (X, T, E, depth))
    Mt = ~torch.isnan(Tt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    best, best_state, bad = np.inf, None, 0
    bs = 2048
    for _ in range(cfg.epochs):
        model.train()
        idx = torch.as_tensor(g.permutation(tr))
        for s in range(0, len(idx), bs):
            b = idx[s:s + bs]
            loss = _masked_bce(model(Xt[b], Dt[b]), Tt[b], Mt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vb = torch.as_tensor(va)
            val = float(_masked_bce(model(Xt[vb], Dt[vb]), Et[vb], Mt[vb]))
        if val < best - 1e-5:
            best, best_state, bad = val, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def _predict(models: list[ErrorPredictor], cache: PathCache, opts: OptionSpace, samples: np.ndarray,
             cols: list[int]) -> np.ndarray:
    """Mean predicted error probability over ``models``: (n_nodes, len(samples), O), NaN at invalid/leaf."""
    X, _, depth, nodes = _rows(cache, opts, samples, cols)
    Xt, Dt = torch.as_tensor(X), torch.as_tensor(depth)
    P = sum(torch.sigmoid(m(Xt, Dt)) for m in models) / len(models)
    out = np.full((len(opts.tree), len(samples), opts.n_options), np.nan, dtype=np.float32)
    out[nodes] = P.numpy().reshape(len(nodes), len(samples), -1)
    out[~np.broadcast_to(opts.valid[:, None, :], out.shape)] = np.nan
    return out


@dataclass
class CrossFitted:
    """The fold models of a cross-fitted predictor: ``models[k]`` was fitted without the calib samples
    whose ``folds`` entry is k; ``columns`` are the feature columns they read."""
    models: list
    folds: np.ndarray      # fold id of every calib sample
    columns: list[int]

    def predict(self, calib: PathCache, test: PathCache, opts: OptionSpace) -> dict[str, np.ndarray]:
        """Out-of-fold calib and fold-averaged test error estimates, both (n_nodes, N, O)."""
        oof = np.full((len(opts.tree), calib.n, opts.n_options), np.nan, dtype=np.float32)
        for k, m in enumerate(self.models):
            ho = np.flatnonzero(self.folds == k)
            oof[:, ho] = _predict([m], calib, opts, ho, self.columns)
        return {"calib": oof, "test": _predict(self.models, test, opts, np.arange(test.n), self.columns)}


def fit_cross_fitted(calib: PathCache, opts: OptionSpace, cfg, seed: int = 0, progress: bool = True) -> CrossFitted:
    """Train ``cfg.folds`` predictors on calib folds (targets per ``cfg.targets``)."""
    N = calib.n
    if cfg.targets == "kmeans" and cfg.K > N * (cfg.folds - 1) // cfg.folds:
        raise ValueError(f"predictor.K={cfg.K} is larger than a training fold "
                         f"({N * (cfg.folds - 1) // cfg.folds} calib samples)")
    cols = feature_columns(cfg.history)
    folds = np.random.default_rng(seed).permutation(N) % cfg.folds
    models = []
    for k in tqdm(range(cfg.folds), desc=f"predictors ({cfg.targets})", disable=not progress, leave=False):
        X, E, depth, _ = _rows(calib, opts, np.flatnonzero(folds != k), cols)
        T = discretized_targets(X, E, depth, cfg.targets, cfg.K, cfg.knn_k, cfg.prior_weight, seed + k)
        models.append(_fit_one(X, T, E, depth, cfg, opts.tree.L, opts.n_options, seed + k))
    return CrossFitted(models, folds, cols)


def exit_now_rows(pred: np.ndarray, cache: PathCache, opts: OptionSpace):
    """Predicted error of exiting now, actual 0/1 error and head max prob at every decision node
    and sample, flattened: three (R,) arrays."""
    nodes = np.flatnonzero(opts.tree.depth < opts.tree.L)
    p = pred[nodes, :, :][np.arange(len(nodes)), :, opts.exit_option[nodes]].reshape(-1)
    err = (~cache.correct[nodes]).numpy().reshape(-1).astype(float)
    conf = cache.features[nodes][:, :, 0].numpy().reshape(-1)
    return p, err, conf


def predictor_quality(pred: np.ndarray, cache: PathCache, opts: OptionSpace, n_bins: int = 15) -> dict:
    """Brier, ECE and AUROC of error detection of the exit-now option over every decision node,
    beside the AUROC of plain ``1 - max prob`` on the same rows."""
    from sklearn.metrics import roc_auc_score
    p, err, conf = exit_now_rows(pred, cache, opts)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = sum(abs(err[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean()
              for b in range(n_bins) if (bins == b).any())
    both = 0 < err.mean() < 1
    return {"brier": float(((p - err) ** 2).mean()), "ece": float(ece),
            "auroc": float(roc_auc_score(err, p)) if both else float("nan"),
            "auroc_maxprob": float(roc_auc_score(err, 1 - conf)) if both else float("nan"),
            "error_rate": float(err.mean())}
