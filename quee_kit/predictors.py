"""Predicting probabilities of error: options, decision rows, discretized targets, cross-fitted predictors.

At a decision node (depth t < L, level q) the options are **exit now** or a **plan** (m, q'):
run blocks t+1..m at level q' (allowed by the family) and exit at m. Options are indexed
``(m - 1) * n_levels + q'`` over all (m, q') pairs, so one shared MLP covers every depth;
exit-now at node (t, q) is option ``(t - 1) * n_levels + q``; invalid options are masked.

Two kinds of predictor map a row (a node and a sample) to an estimated error probability ``err_hat``
for every option:

- ``mlp``: one small MLP on the compact features (:data:`~quee_kit.paths.FEATURE_NAMES`), fitted to
  soft targets by discretization. Decision nodes are very unequal in number per depth (a monotone
  tree with 5 levels has 5 depth-1 nodes and 126 depth-5 ones) while low-budget decisions are taken
  at depth 1-3, so the fitting rows are weighted to give every depth the same total weight, and early
  stopping watches a depth-balanced loss on samples held out *by sample*.
- ``binned`` and ``platt`` (:mod:`quee_kit.calibrated`): per node and option, a calibration map of the
  head's log-odds (histogram bins, or a logistic fit): the confidence the threshold baselines use,
  calibrated where each decision is taken.

Targets by discretization: rows are grouped per (depth, level) and partitioned into cells on their
continuous features only (k-means with ``K`` cells on standardized features, or the k nearest
neighbours); discrete columns (depth, level, agreement) stay out of the clustering space. The target
of option a for a row is the mean error of a in its cell, shrunk toward the group's mean error with
``prior_weight`` pseudo-samples, ``(errors_in_cell + w * group_mean) / (count_in_cell + w)``: unbiased
at the group level, unlike +1/+2 Laplace smoothing (which pulls a 5% error rate in a 10-sample cell
to 17%). ``raw`` uses the 0/1 labels themselves (the ablation).

Cross-fitting: k fold predictors on the calib *samples* give out-of-fold calib estimates (where λ and
the entry level are chosen); one predictor of the same kind refitted on all of calib serves test and
the dynamic engine, so every test decision is exactly one paid call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .calibrated import (BinnedErrorPredictor, PlattErrorPredictor, PlattQuantErrorPredictor,
                         ProbePlattErrorPredictor)
from .calibration import expected_calibration_error, quality_metrics
from .costs import mlp_macs
from .options import OptionSpace
from .paths import DISCRETE_FEATURES, FEATURE_NAMES, HISTORY_FEATURES, PathCache
from .probe import probe_rows
from .registry import PREDICTOR_KINDS
from .targets import depth_balanced_weights, discretized_targets, holdout_by_sample, subsample_by_depth
from .threads import one_thread

CALIBRATED = {"binned": BinnedErrorPredictor, "platt": PlattErrorPredictor, "platt-probe": ProbePlattErrorPredictor,
              "platt-quant": PlattQuantErrorPredictor}

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["DecisionRows", "decision_rows", "feature_columns", "discretized_targets",
           "depth_balanced_weights", "subsample_by_depth", "holdout_by_sample",
           "ErrorPredictor", "predictor_macs", "fit_predictor", "predictor_from_state", "fit_cross_fitted", "CrossFitted",
           "fit_task", "cross_fit_plan", "cross_fitted_from_states",
           "predict_nodes", "exit_now_rows", "quality_metrics", "predictor_quality", "expected_calibration_error"]


def feature_columns(history: bool = True, n_quant: int = 0) -> list[int]:   # + n_quant quant columns at the end
    return [i for i, f in enumerate(FEATURE_NAMES) if history or f not in HISTORY_FEATURES] + \
        list(range(len(FEATURE_NAMES), len(FEATURE_NAMES) + n_quant))


def predictor_macs(cfg, n_options: int, n_quant: int = 0) -> int:
    """MACs of one call of the predictor a :class:`~quee_kit.config.PredictorConfig` fits, known before
    fitting: the MLP's layers (one MLP runs per call, shared or not), ``bins - 1`` comparisons of
    ``binned``, one multiply-add per option of ``platt`` (per score with the probe, 1 + k with ``features: quant``); ``n_quant``: the quant
    columns a ``features: quant`` MLP reads (computing them is charged apart)."""
    return PREDICTOR_KINDS.get(cfg.kind).config_macs(cfg, n_options, n_quant)


@dataclass
class DecisionRows:
    """One row per (decision node, sample), node-major. x: (R, F) every feature column; wrong: (R, O)
    0/1 true errors of every option, NaN where invalid (None when not asked for); depth, level, node,
    sample: (R,) ints."""
    x: np.ndarray
    wrong: np.ndarray | None
    depth: np.ndarray
    level: np.ndarray
    node: np.ndarray
    sample: np.ndarray


def decision_rows(cache: PathCache, opts: OptionSpace, samples: np.ndarray, nodes: np.ndarray | None = None,
                  errors: bool = True, probe: bool = False) -> DecisionRows:
    """Rows of ``samples`` at ``nodes`` (default: every decision node, depth < L); ``errors=False``
    leaves ``wrong`` None (prediction needs only the features); ``probe``: each row's probe features follow
    its own (:func:`quee_kit.probe.probe_rows`)."""
    tree = opts.tree
    nodes = np.flatnonzero(tree.depth < tree.L) if nodes is None else np.asarray(nodes)
    x = cache.features[nodes][:, samples].reshape(len(nodes) * len(samples), -1).numpy()
    x = np.concatenate([x, probe_rows(cache, nodes, samples)], 1) if probe else x
    wrong = None
    if errors:
        tgt = opts.target[nodes]                                                  # (nn, O)
        wrong = (~cache.correct).numpy()[np.where(tgt >= 0, tgt, 0)][:, :, samples]  # (nn, O, S)
        wrong = np.where((tgt >= 0)[:, :, None], wrong, np.nan).astype(np.float32)
        wrong = wrong.transpose(0, 2, 1).reshape(-1, opts.n_options)
    S = len(samples)
    return DecisionRows(x, wrong, np.repeat(tree.depth[nodes], S), np.repeat(tree.level[nodes], S),
                        np.repeat(nodes, S), np.tile(np.asarray(samples), len(nodes)))


@PREDICTOR_KINDS.register("mlp")
class ErrorPredictor(nn.Module):
    """MLP: features (R, len(columns)) -> error-probability logits (R, O). ``shared=False``: one MLP per
    depth. ``columns`` are the feature columns it reads; ``macs`` the MACs of one call."""

    kind = "mlp"
    reads_quant_features = True    # with ``features: quant``, the quant columns are inputs

    @classmethod
    def fit_config(cls, rows, pcfg, opts, seed: int = 0) -> "ErrorPredictor":
        """The kind's fit from a predictor section ``pcfg`` (soft targets, depth-balanced rows, early stopping)."""
        return _fit_mlp(rows, pcfg, opts.tree.L, opts.n_options, seed)

    @staticmethod
    def config_macs(pcfg, n_options: int, n_quant: int = 0) -> int:
        """The MLP's layers (one MLP runs per call, shared or not) on its feature columns."""
        return mlp_macs([len(feature_columns(pcfg.history, n_quant if pcfg.features == "quant" else 0))]
                        + [pcfg.hidden] * pcfg.layers + [n_options])

    @staticmethod
    def fit_seconds(pcfg) -> float:
        """Rough single-core seconds of one fit on 2,000 calib digits (it only orders warm's tasks; k-NN
        targets take about twice as long)."""
        return 3.0 * (2.0 if pcfg.targets == "knn" else 1.0)

    @staticmethod
    def describe(pcfg) -> str:
        """The kind and what tells its fits apart, for people: ``mlp kmeans K8``."""
        return f"mlp {pcfg.targets} K{pcfg.K}"

    def __init__(self, columns: list[int], n_options: int, depth: int, hidden: int = 32, layers: int = 2,
                 shared: bool = True):
        super().__init__()
        self.columns, self.arch = list(columns), dict(n_options=n_options, depth=depth, hidden=hidden,
                                                        layers=layers, shared=shared)
        sizes = [len(columns)] + [hidden] * layers + [n_options]

        def mlp():
            mods = []
            for a, b in zip(sizes[:-2], sizes[1:-1]):
                mods += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*mods, nn.Linear(sizes[-2], sizes[-1]))

        self.shared = shared
        self.nets = nn.ModuleList([mlp() for _ in range(1 if shared else depth)])
        self.macs = mlp_macs(sizes)
        self.register_buffer("mu", torch.zeros(len(columns)))
        self.register_buffer("sd", torch.ones(len(columns)))

    def forward(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) / self.sd
        if self.shared:
            return self.nets[0](z)
        out = torch.empty(len(x), self.nets[0][-1].out_features, dtype=z.dtype)
        for t in torch.unique(depth).tolist():
            m = depth == t
            out[m] = self.nets[t - 1](z[m])
        return out

    @torch.no_grad()
    def predict_rows(self, x: np.ndarray, depth: np.ndarray, node: np.ndarray) -> np.ndarray:
        """(R, F) every feature column, (R,) depths and nodes -> (R, O) error probabilities."""
        logits = self(torch.as_tensor(x[:, self.columns]), torch.as_tensor(depth))
        return torch.sigmoid(logits).numpy()

    def state(self) -> dict:
        return {"kind": self.kind, "columns": self.columns, "arch": self.arch, "weights": self.state_dict()}


def predictor_from_state(state: dict):
    """Rebuild a predictor saved with ``.state()`` (either kind)."""
    if state["kind"] in CALIBRATED:
        return CALIBRATED[state["kind"]].from_state(state)
    m = ErrorPredictor(state["columns"], **state["arch"])
    m.load_state_dict(state["weights"])
    return m.eval()


def _masked_bce(logits, target, mask, weight):
    """Row-weighted mean BCE over the valid options (``weight``: (R,), any scale)."""
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), reduction="none")
    w = mask * weight[:, None]
    return (loss * w).sum() / w.sum().clamp_min(1e-12)



def _fit_mlp(rows: DecisionRows, cfg, L: int, n_options: int, seed: int) -> ErrorPredictor:
    """Fit on soft targets with depth-balanced row weights; early stopping on the depth-balanced 0/1
    BCE of 10% of the *samples*, held out with all their rows."""
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    held = holdout_by_sample(rows.sample, 0.1, g)
    cols = feature_columns(cfg.history, rows.x.shape[1] - len(FEATURE_NAMES) if cfg.features == "quant" else 0)
    cont = [i for i, c in enumerate(cols) if c >= len(FEATURE_NAMES) or FEATURE_NAMES[c] not in DISCRETE_FEATURES]
    tr_idx = np.flatnonzero(~held)
    tr_idx = tr_idx[subsample_by_depth(rows.depth[tr_idx], cfg.max_rows, g)]
    va_idx = np.flatnonzero(held)
    X = rows.x[:, cols]
    group = rows.depth * 1000 + rows.level
    T = np.full_like(rows.wrong, np.nan)
    T[tr_idx] = discretized_targets(X[tr_idx][:, cont], rows.wrong[tr_idx], group[tr_idx], cfg.targets, cfg.K,
                                    cfg.knn_k, cfg.prior_weight, seed)
    model = ErrorPredictor(cols, n_options, L, cfg.hidden, cfg.layers, cfg.shared)
    model.mu.copy_(torch.as_tensor(X[tr_idx].mean(0)))
    model.sd.copy_(torch.as_tensor(X[tr_idx].std(0) + 1e-6))
    # C order: picking the column-ordered X row by row every epoch took 38 ms instead of 4 (the gathered
    # rows are C-ordered either way, so the fit's numbers are the same)
    Xt, Tt, Et, Dt = (torch.as_tensor(a) for a in (np.ascontiguousarray(X), T, rows.wrong, rows.depth))
    Mt = ~torch.isnan(Et)
    Wt = torch.zeros(len(X))
    Wt[tr_idx] = torch.as_tensor(depth_balanced_weights(rows.depth[tr_idx], cfg.balance))
    Wt[va_idx] = torch.as_tensor(depth_balanced_weights(rows.depth[va_idx], cfg.balance))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    best, best_state, bad = np.inf, None, 0
    vb = torch.as_tensor(va_idx)
    for _ in range(cfg.epochs):
        model.train()
        idx = torch.as_tensor(g.permutation(tr_idx))
        Xe, De, Te, Me, We = (a.index_select(0, idx) for a in (Xt, Dt, Tt, Mt, Wt))  # this epoch's order; batches: slices
        for s in range(0, len(idx), 2048):
            b = slice(s, s + 2048)
            loss = _masked_bce(model(Xe[b], De[b]), Te[b], Me[b], We[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(_masked_bce(model(Xt[vb], Dt[vb]), Et[vb], Mt[vb], Wt[vb]))
        if val < best - 1e-5:
            best, best_state, bad = val, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


def fit_predictor(cache: PathCache, opts: OptionSpace, cfg, samples: np.ndarray, seed: int = 0):
    """One predictor of ``cfg.kind`` fitted on the decision rows of ``samples``."""
    rows = decision_rows(cache, opts, samples, probe=cfg.probe)   # probe: the config allows it with platt only
    return PREDICTOR_KINDS.get(cfg.kind).fit_config(rows, cfg, opts, seed)


def _decision_predictions(predictor, cache: PathCache, opts: OptionSpace, samples: np.ndarray, memo=None):
    """The decision nodes (ascending) and ``err_hat`` of ``samples`` there, (nodes, len(samples), O) with
    NaN at invalid options. ``memo``: a dict keeping the feature rows for the next predictor on these samples."""
    memo = {} if memo is None else memo
    probe = getattr(predictor, "probe", False)
    key = (id(cache), np.asarray(samples).tobytes(), probe)   # the memo lives no longer than the caches it holds rows of
    if key not in memo:
        memo[key] = decision_rows(cache, opts, samples, errors=False, probe=probe)
    rows = memo[key]
    nodes = np.unique(rows.node)
    with one_thread():   # the same bits on any thread count, like the fits
        p = predictor.predict_rows(rows.x, rows.depth, rows.node).astype(np.float32, copy=False)
    p = p.reshape(len(nodes), len(samples), -1)    # a new array: NaN written into it, not into a copy of it
    np.copyto(p, np.float32(np.nan), where=~opts.valid[nodes][:, None, :])
    return nodes, p


def _leaves_nan(out: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """``out`` with NaN at every node not in ``nodes`` (each element written once: these arrays are large)."""
    out[np.setdiff1d(np.arange(len(out)), nodes)] = np.nan
    return out


def predict_nodes(predictor, cache: PathCache, opts: OptionSpace, samples: np.ndarray, memo=None) -> np.ndarray:
    """``err_hat`` of ``samples`` at every node: (n_nodes, len(samples), O), NaN at invalid options and leaves."""
    nodes, p = _decision_predictions(predictor, cache, opts, samples, memo)
    out = _leaves_nan(np.empty((len(opts.tree), len(samples), opts.n_options), dtype=np.float32), nodes)
    out[nodes] = p
    return out


@dataclass
class CrossFitted:
    """``folds[k]``: predictor fitted without the calib samples whose ``fold_of`` entry is k;
    ``final``: the same kind refitted on all of calib (what test and the engine use)."""
    folds: list
    final: object
    fold_of: np.ndarray

    def predict(self, calib: PathCache, test: PathCache, opts: OptionSpace, memo=None) -> dict[str, np.ndarray]:
        """Out-of-fold calib and final-model test estimates ``err_hat``, both (n_nodes, N, O). ``memo``: a dict
        shared by the predictors of one study (the features of a fold's rows are gathered once)."""
        oof = np.empty((len(opts.tree), calib.n_samples, opts.n_options), dtype=np.float32)
        nodes = np.zeros(0, dtype=np.int64)        # every fold predicts at the same decision nodes
        for k, m in enumerate(self.folds):
            ho = np.flatnonzero(self.fold_of == k)
            nodes, p = _decision_predictions(m, calib, opts, ho, memo)
            oof[nodes[:, None], ho[None, :]] = p
        _leaves_nan(oof, nodes)
        return {"calib": oof, "test": predict_nodes(self.final, test, opts, np.arange(test.n_samples), memo)}


def fit_task(shared, task) -> dict:
    """One fit of a cross-fitting plan (:func:`cross_fit_plan`): ``shared`` = (calib cache, option space,
    seed), ``task`` = (predictor config, its training samples, fold index k; k = folds: the refit on all
    of calib). Returns the fitted predictor's ``state()``; a module-level function, so that worker
    processes can run it."""
    calib, opts, seed = shared
    cfg, samples, k = task
    return fit_predictor(calib, opts, cfg, samples, seed + k).state()


def cross_fit_plan(cfgs: list, n_samples: int, seed: int = 0) -> tuple[list[tuple], list[np.ndarray]]:
    """The independent fits of each predictor config in ``cfgs`` on ``n_samples`` calib samples: the tasks
    of :func:`fit_task` (``cfg.folds`` fold fits, then the refit on all of calib, config after config) and
    each config's fold assignment ``fold_of`` (N,)."""
    N, tasks, fold_ofs = n_samples, [], []
    for cfg in cfgs:
        if cfg.kind == "mlp" and cfg.targets == "kmeans" and cfg.K > N * (cfg.folds - 1) // cfg.folds:
            raise ValueError(f"predictor.K={cfg.K} is larger than a training fold "
                             f"({N * (cfg.folds - 1) // cfg.folds} calib samples)")
        fold_of = np.random.default_rng(seed).permutation(N) % cfg.folds
        fold_ofs.append(fold_of)
        tasks += [(cfg, np.flatnonzero(fold_of != k) if k < cfg.folds else np.arange(N), k)
                  for k in range(cfg.folds + 1)]
    return tasks, fold_ofs


def cross_fitted_from_states(cfgs: list, fold_ofs: list, states: list) -> list[CrossFitted]:
    """The :class:`CrossFitted` of each config from the ``states`` of its plan's fits, in the plan's order."""
    it, out = iter(states), []
    for cfg, fold_of in zip(cfgs, fold_ofs):
        fits = [predictor_from_state(next(it)) for _ in range(cfg.folds + 1)]
        out.append(CrossFitted(fits[:-1], fits[-1], fold_of))
    return out


def fit_cross_fitted(calib: PathCache, opts: OptionSpace, cfgs, seed: int = 0, progress: bool = True):
    """``cfg.folds`` fold predictors on calib plus one refitted on all of calib, for one predictor config
    or a list of them (then a list of :class:`CrossFitted`). Every fit is independent and runs on one
    thread, one after another here (sharing them out over processes gives the same result:
    :func:`quee_kit.study_run.fit_cross_fitted_jobs`)."""
    one = not isinstance(cfgs, (list, tuple))
    cfgs = [cfgs] if one else list(cfgs)
    tasks, fold_ofs = cross_fit_plan(cfgs, calib.n_samples, seed)
    with one_thread():
        states = [fit_task((calib, opts, seed), t)
                  for t in tqdm(tasks, desc="predictors", disable=not progress, leave=False)]
    out = cross_fitted_from_states(cfgs, fold_ofs, states)
    return out[0] if one else out


def exit_now_rows(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace, nodes: np.ndarray | None = None):
    """Predicted error of exiting now, true 0/1 error, head max prob and depth at every decision node
    (or ``nodes``) and sample, flattened: four (R,) arrays."""
    tree = opts.tree
    nodes = np.flatnonzero(tree.depth < tree.L) if nodes is None else np.asarray(nodes)
    p = err_hat[nodes, :, opts.exit_option[nodes]].reshape(-1)      # (nodes, N): no copy of the nodes' rows first
    wrong = (~cache.correct[nodes]).numpy().reshape(-1).astype(float)
    conf = cache.features[torch.as_tensor(nodes), :, 0].numpy().reshape(-1)
    return p, wrong, conf, np.repeat(tree.depth[nodes], cache.n_samples)


def predictor_quality(err_hat: np.ndarray, cache: PathCache, opts: OptionSpace, n_bins: int = 15,
                      auroc_maxprob: float | None = None) -> dict:
    """:func:`~quee_kit.calibration.quality_metrics` of the exit-now option over every decision node and sample
    (``auroc_maxprob``: that of another predictor on the same cache, the same rows)."""
    return quality_metrics(*exit_now_rows(err_hat, cache, opts)[:3], n_bins=n_bins, auroc_maxprob=auroc_maxprob)
