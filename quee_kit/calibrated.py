"""Per-node calibrated confidence as an error predictor (``predictor.kind: binned`` or ``platt``).

Both read one score per row, the head's log-odds of its top class (the confidence the threshold
baselines use, on a log scale that keeps 0.99 / 0.999 / 0.9999 apart), and map it, separately for
every decision node and every option (exit now, or a plan to exit m at level q'), to an error
probability fitted on that node's samples. Per node they see exactly the samples a decision there is
about, which is where one MLP shared across depths is weakest (few shallow rows).

- ``binned``: histogram binning (Zadrozny & Elkan 2001). The score is cut into ``bins`` quantile bins
  per node; the table holds each option's mean 0/1 error in the bin, shrunk toward the node's mean
  error of the option with ``prior_weight`` pseudo-samples,
  ``(errors_in_bin + w * node_mean) / (count_in_bin + w)``. A call locates the bin: ``bins - 1``
  comparisons, costed like that many MACs at the reference bits.
- ``platt``: a logistic fit ``sigmoid(a * score + b)`` per node and option (Platt 1999, with Platt's
  smoothed targets ``(n_wrong + 1) / (n_wrong + 2)`` and ``1 / (n_right + 2)`` in place of 1 and 0), i.e. a temperature-and-bias rescaling
  of the confidence. Monotone in the score, so its error ranking at a node is the log-odds ranking
  itself. A call costs one multiply-add per option.
- ``platt`` with ``probe`` (variant ``quee-probe``, :mod:`quee_kit.probe`): the same logistic fit per node
  and option on three scores, the node head's log-odds, the probe head's log-odds and whether the probe
  agrees with the node head (:data:`~quee_kit.probe.PROBE_COLUMNS`). Three multiply-adds per option.
"""
from __future__ import annotations

import numpy as np

from .paths import FEATURE_NAMES, LOG_ODDS
from .probe import PROBE_COLUMNS
from .quant_features import QUANT_STATS, level_columns
from .registry import PREDICTOR_KINDS

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["BinnedErrorPredictor", "PlattErrorPredictor", "ProbePlattErrorPredictor", "PlattQuantErrorPredictor",
           "SCORE", "cell_sums"]

SCORE = LOG_ODDS   # the one feature column both read


def cell_sums(cell: np.ndarray, k: int, values: np.ndarray) -> np.ndarray:
    """(k, O) column sums of the rows of ``values`` (R, O) in each cell ``cell`` (R,) of 0..k-1. For 0/1
    values (errors, valid options) every sum is an exact integer, whatever the order of the additions."""
    O = values.shape[1]
    at = (cell[:, None] * O + np.arange(O)).ravel()
    return np.bincount(at, weights=values.ravel().astype(float), minlength=k * O).reshape(k, O)


def _node_rows(rows):
    """Per node present in ``rows``: (node, its row indices, valid (r, O) mask of the options that exist
    there, 0/1 errors (r, O) with 0 where invalid). The binned predictor fits one node at a time."""
    for node in np.unique(rows.node):
        r = np.flatnonzero(rows.node == node)
        valid = ~np.isnan(rows.wrong[r])
        yield node, r, valid, np.where(valid, rows.wrong[r], 0.0)


@PREDICTOR_KINDS.register("binned")
class BinnedErrorPredictor:
    """edges: (n_nodes, bins - 1) inner bin edges of the log-odds per node; table: (n_nodes, bins, O)
    shrunk mean error of every option per bin (NaN at nodes never fitted or invalid options)."""

    kind = "binned"
    columns = [SCORE]   # the feature columns predict_rows reads
    reads_quant_features = False   # a call reads the log-odds alone, whatever ``features`` says

    @classmethod
    def fit_config(cls, rows, pcfg, opts, seed: int = 0) -> "BinnedErrorPredictor":
        """The kind's fit from a predictor section ``pcfg`` (its ``bins``, ``prior_weight``)."""
        return cls.fit(rows, len(opts.tree), pcfg.bins, pcfg.prior_weight)

    @staticmethod
    def config_macs(pcfg, n_options: int, n_quant: int = 0) -> int:
        """``bins - 1`` comparisons locate the bin."""
        return pcfg.bins - 1

    @staticmethod
    def fit_seconds(pcfg) -> float:
        """Rough single-core seconds of one fit on 2,000 calib digits (it only orders warm's tasks)."""
        return 0.2

    @staticmethod
    def describe(pcfg) -> str:
        """The kind, for people (a task's label)."""
        return "binned"

    def __init__(self, edges: np.ndarray, table: np.ndarray):
        self.edges, self.table = edges, table
        self.macs = edges.shape[1]

    @classmethod
    def fit(cls, rows, n_nodes: int, bins: int = 10, prior_weight: float = 5.0) -> "BinnedErrorPredictor":
        """``rows``: :class:`~quee_kit.predictors.DecisionRows` of the fitting samples."""
        n_opt = rows.wrong.shape[1]
        edges = np.full((n_nodes, bins - 1), np.inf)
        table = np.full((n_nodes, bins, n_opt), np.nan, dtype=np.float32)
        score = rows.x[:, SCORE]
        for node, r, valid, wrong in _node_rows(rows):
            s = score[r]
            edges[node] = np.quantile(s, np.arange(1, bins) / bins)
            b = np.searchsorted(edges[node], s, side="right")
            node_mean = wrong.sum(0) / np.maximum(valid.sum(0), 1)
            S, C = cell_sums(b, bins, wrong), cell_sums(b, bins, valid)
            table[node] = np.where(valid.any(0), (S + prior_weight * node_mean) / (C + prior_weight), np.nan)
        return cls(edges, table)

    def predict_rows(self, x: np.ndarray, depth: np.ndarray, node: np.ndarray) -> np.ndarray:
        """(R, F) every feature column, (R,) depths and nodes -> (R, O) error probabilities."""
        node = np.asarray(node)
        s = x[:, SCORE]
        b = (s[:, None] >= self.edges[node]).sum(1)        # the bin searchsorted(side="right") gives
        return self.table[node, b]

    def state(self) -> dict:
        return {"kind": self.kind, "edges": self.edges, "table": self.table}

    @classmethod
    def from_state(cls, state: dict) -> "BinnedErrorPredictor":
        return cls(state["edges"], state["table"])


def _platt_fit(z: np.ndarray, y: np.ndarray, iters: int = 25, ridge: float = 1e-5):
    """Logistic regression of soft targets ``y`` (N, C) on standardized scores ``z`` (N, C), column ``c`` on
    ``z[:, c]`` alone, by Newton's method (2 parameters per column); ``ridge`` keeps the slope finite under
    separation. Returns (a, b), both (C,), on ``z``."""
    a, b = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    n = np.full(y.shape[1], float(len(y)))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(z * a + b)))
        r, v = p - y, p * (1 - p)
        ga, gb = (z * r).sum(0) / n + ridge * a, r.sum(0) / n
        haa = (z ** 2 * v).sum(0) / n + ridge
        hab, hbb = (z * v).sum(0) / n, v.sum(0) / n + 1e-9
        det = haa * hbb - hab ** 2
        a, b = a - (hbb * ga - hab * gb) / det, b - (haa * gb - hab * ga) / det
    return a, b


@PREDICTOR_KINDS.register("platt")
class PlattErrorPredictor:
    """coef: (n_nodes, O, 2) slope and intercept on the log-odds per node and option (NaN where the
    option is invalid or the node was never fitted)."""

    kind = "platt"
    columns = [SCORE]   # the feature columns predict_rows reads
    reads_quant_features = True    # with ``features: quant`` (PlattQuantErrorPredictor)

    @classmethod
    def fit_config(cls, rows, pcfg, opts, seed: int = 0):
        """The kind's fit from a predictor section ``pcfg``: with ``probe`` the probe's three scores
        (:class:`ProbePlattErrorPredictor`), with ``features: quant`` the quantizers' statistics too
        (:class:`PlattQuantErrorPredictor`), else the log-odds alone."""
        if pcfg.probe:
            return ProbePlattErrorPredictor.fit(rows, len(opts.tree))
        if pcfg.features == "quant":
            return PlattQuantErrorPredictor.fit(rows, len(opts.tree), level_columns(opts.tree.levels, len(FEATURE_NAMES)))
        return cls.fit(rows, len(opts.tree))

    @staticmethod
    def config_macs(pcfg, n_options: int, n_quant: int = 0) -> int:
        """One multiply-add per option and score read (the probe's three, or 1 + the quant statistics)."""
        return n_options * (len(PROBE_COLUMNS) if pcfg.probe else 1 + (len(QUANT_STATS) if pcfg.features == "quant" else 0))

    @staticmethod
    def fit_seconds(pcfg) -> float:
        """Rough single-core seconds of one fit on 2,000 calib digits (it only orders warm's tasks)."""
        return 0.4

    @staticmethod
    def describe(pcfg) -> str:
        """The kind, for people (a task's label)."""
        return "platt"

    def __init__(self, coef: np.ndarray):
        self.coef = coef
        self.macs = coef.shape[1]
        self.fitted = ~np.isnan(coef[:, :, 0])                  # (n_nodes, O): the options fitted at each node

    @classmethod
    def fit(cls, rows, n_nodes: int) -> "PlattErrorPredictor":
        """``rows``: :class:`~quee_kit.predictors.DecisionRows` of the fitting samples."""
        coef = np.full((n_nodes, rows.wrong.shape[1], 2), np.nan)
        nodes = np.unique(rows.node)
        if not len(nodes):
            return cls(coef)
        S = len(rows.node) // len(nodes)                         # node-major rows, S samples per node
        if len(nodes) * S != len(rows.node) or not np.array_equal(rows.node[::S], nodes):
            raise ValueError("Platt fit: decision rows must be node-major with the same samples at every node")
        score = rows.x[:, SCORE].astype(float).reshape(len(nodes), S)
        mu, sd = score.mean(1), score.std(1) + 1e-6
        z = (score - mu[:, None]) / sd[:, None]                  # standardized per node: a well-conditioned Newton step
        wrong = rows.wrong.reshape(len(nodes), S, -1)
        # An option is valid at a node for all its rows or for none (about 3 of 30 are): every valid
        # (node, option) pair is one column of one fit, all nodes at once.
        ni, ci = np.nonzero(~np.isnan(wrong[:, 0]))
        # (S, pairs) in C order: numpy then sums each column row after row, as it did over a node's own
        # (S, 30) block when nodes were fitted one at a time, so the coefficients keep their bits
        w = np.ascontiguousarray(wrong[ni, :, ci].T)             # 0/1 errors
        n_wrong = w.sum(0)
        # Platt's smoothed targets: (n_wrong + 1) / (n_wrong + 2) for a wrong row, 1 / (n_right + 2) for a right one
        y = np.where(w > 0, (n_wrong + 1) / (n_wrong + 2), 1 / (np.full(len(ni), S) - n_wrong + 2))
        a, b = _platt_fit(np.ascontiguousarray(z[ni].T), np.ascontiguousarray(y))
        coef[nodes[ni], ci] = np.stack([a / sd[ni], b - a * mu[ni] / sd[ni]], 1)   # back on the raw score
        return cls(coef)

    def predict_rows(self, x: np.ndarray, depth: np.ndarray, node: np.ndarray) -> np.ndarray:
        """(R, F) every feature column, (R,) depths and nodes -> (R, O) error probabilities."""
        node = np.asarray(node)
        ri, oi = np.nonzero(self.fitted[node])                  # fitted options only (NaN elsewhere)
        c = self.coef[node[ri], oi]                              # (P, 2)
        out = np.full((len(node), self.coef.shape[1]), np.nan, dtype=np.float32)
        out[ri, oi] = 1 / (1 + np.exp(-(c[:, 0] * x[ri, SCORE] + c[:, 1])))
        return out

    def state(self) -> dict:
        return {"kind": self.kind, "coef": self.coef}

    @classmethod
    def from_state(cls, state: dict) -> "PlattErrorPredictor":
        return cls(state["coef"])


def _logistic_fit(z: np.ndarray, y: np.ndarray, iters: int = 25, ridge: float = 1e-5) -> np.ndarray:
    """:func:`_platt_fit` on k scores: ``z`` (P, S, k) standardized scores of each of P columns, ``y`` (P, S)
    soft targets -> (P, k + 1) slopes and intercept, by Newton's method with ``ridge`` on the slopes."""
    P, S, k = z.shape
    X = np.concatenate([z, np.ones((P, S, 1))], 2)
    reg = np.full(k + 1, ridge)
    reg[-1] = 1e-9
    w = np.zeros((P, k + 1))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.einsum("psk,pk->ps", X, w)))
        g = np.einsum("psk,ps->pk", X, p - y) / S + reg * w
        H = np.einsum("psk,ps,psl->pkl", X, p * (1 - p), X) / S + np.diag(reg)
        w = w - np.linalg.solve(H, g[..., None])[..., 0]
    return w


class ProbePlattErrorPredictor:
    """coef: (n_nodes, O, 4) slopes on :data:`~quee_kit.probe.PROBE_COLUMNS` and intercept per node and option
    (NaN where invalid or never fitted). Reads rows of [node features | probe features]."""

    kind = "platt-probe"
    probe = True
    columns = PROBE_COLUMNS

    def __init__(self, coef: np.ndarray):
        self.coef = coef
        self.macs = coef.shape[1] * len(self.columns)
        self.fitted = ~np.isnan(coef[:, :, 0])

    @classmethod
    def fit(cls, rows, n_nodes: int) -> "ProbePlattErrorPredictor":
        """``rows``: :class:`~quee_kit.predictors.DecisionRows` with probe features, node-major."""
        k = len(cls.columns)
        coef = np.full((n_nodes, rows.wrong.shape[1], k + 1), np.nan)
        nodes = np.unique(rows.node)
        if not len(nodes):
            return cls(coef)
        S = len(rows.node) // len(nodes)
        if len(nodes) * S != len(rows.node) or not np.array_equal(rows.node[::S], nodes):
            raise ValueError("Platt fit: decision rows must be node-major with the same samples at every node")
        score = rows.x[:, cls.columns].astype(float).reshape(len(nodes), S, k)
        mu, sd = score.mean(1), score.std(1) + 1e-6                       # (nodes, k)
        z = (score - mu[:, None]) / sd[:, None]
        wrong = rows.wrong.reshape(len(nodes), S, -1)
        ni, ci = np.nonzero(~np.isnan(wrong[:, 0]))
        for s in range(0, len(ni), 256):                                   # 256 columns at a time: bounded memory
            a, c = ni[s:s + 256], ci[s:s + 256]
            w = wrong[a, :, c]                                             # (P, S) 0/1 errors
            n_wrong = w.sum(1, keepdims=True)
            y = np.where(w > 0, (n_wrong + 1) / (n_wrong + 2), 1 / (S - n_wrong + 2))
            fit = _logistic_fit(z[a], y)
            slope = fit[:, :k] / sd[a]
            coef[nodes[a], c] = np.concatenate([slope, fit[:, k:] - (slope * mu[a]).sum(1, keepdims=True)], 1)
        return cls(coef)

    def predict_rows(self, x: np.ndarray, depth: np.ndarray, node: np.ndarray) -> np.ndarray:
        """(R, 2F) node and probe feature columns, (R,) depths and nodes -> (R, O) error probabilities."""
        node = np.asarray(node)
        ri, oi = np.nonzero(self.fitted[node])
        c = self.coef[node[ri], oi]                                        # (P, k + 1)
        out = np.full((len(node), self.coef.shape[1]), np.nan, dtype=np.float32)
        out[ri, oi] = 1 / (1 + np.exp(-((c[:, :-1] * x[ri][:, self.columns]).sum(1) + c[:, -1])))
        return out

    def state(self) -> dict:
        return {"kind": self.kind, "coef": self.coef}

    @classmethod
    def from_state(cls, state: dict) -> "ProbePlattErrorPredictor":
        return cls(state["coef"])


def _logistic_fit_columns(X: np.ndarray, Y: np.ndarray, iters: int = 25, ridge: float = 1e-3) -> np.ndarray:
    """Logistic regressions of the soft targets ``Y`` (S, M) on the standardized columns ``X`` (S, D) plus an
    intercept, one per target column, by Newton's method; ``ridge`` on the slopes. Returns (M, D + 1) with the
    intercept last."""
    S, D = X.shape
    X1 = np.concatenate([X, np.ones((S, 1))], 1)
    beta = np.zeros((Y.shape[1], D + 1))
    pen = np.full(D + 1, ridge)
    pen[-1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X1 @ beta.T)))                       # (S, M)
        g = (X1.T @ (p - Y)).T / S + pen * beta                    # (M, D + 1)
        H = np.einsum("sd,sm,se->mde", X1, p * (1 - p), X1) / S + np.diag(pen + 1e-9)
        beta = beta - np.linalg.solve(H, g[..., None])[..., 0]
    return beta


class PlattQuantErrorPredictor:
    """``platt`` with the quantization-aware statistics (``predictor.features: quant``): per node and option, a
    logistic fit on the log-odds **and** the statistics of the option's own level (the quantizer the plan would
    run at, :func:`~quee_kit.quant_features.level_columns`) of the node's state, with Platt's smoothed targets
    and a small ridge on the standardized slopes. Exit-now and plans at a float level keep the plain Platt
    fit (their statistics' slopes are 0). coef: (n_nodes, O, 2 + k): the log-odds slope, k statistic slopes,
    the intercept; optcols: (O, k) the feature column each option's slopes read. A call costs 1 + k
    multiply-adds per option."""

    kind = "platt-quant"

    def __init__(self, coef: np.ndarray, optcols: np.ndarray):
        self.coef, self.optcols = coef, np.asarray(optcols, dtype=np.int64)
        self.macs = coef.shape[1] * (coef.shape[2] - 1)
        self.fitted = ~np.isnan(coef[:, :, 0])
        self.columns = sorted({SCORE, *self.optcols.ravel().tolist()})

    @classmethod
    def fit(cls, rows, n_nodes: int, qcols: list, ridge: float = 1e-3) -> "PlattQuantErrorPredictor":
        """``qcols``: per level of the menu, the feature columns of its quantizer's statistics (None for a float
        level; all of one length k)."""
        n_lv, k = len(qcols), len(next(c for c in qcols if c is not None))
        n_opt = rows.wrong.shape[1]
        optcols = np.array([qcols[o % n_lv] or [SCORE] * k for o in range(n_opt)])
        base = PlattErrorPredictor.fit(rows, n_nodes).coef
        coef = np.zeros((n_nodes, n_opt, k + 2))
        coef[:, :, 0], coef[:, :, -1] = base[:, :, 0], base[:, :, 1]
        coef[np.isnan(base[:, :, 0])] = np.nan
        for node in np.unique(rows.node):
            r = np.flatnonzero(rows.node == node)
            t = rows.depth[r[0]]
            wrong = rows.wrong[r]
            for q, cols in enumerate(qcols):
                opts = [o for o in range(q, n_opt, n_lv) if o // n_lv + 1 > t and not np.isnan(wrong[0, o])]
                if cols is None or not opts:
                    continue
                X = rows.x[r][:, [SCORE, *cols]].astype(float)
                mu, sd = X.mean(0), X.std(0)
                flat = sd <= 1e-9 * (np.abs(mu) + 1)                 # a constant column: left out (slope 0)
                Z = np.where(flat, 0.0, (X - mu) / np.where(flat, 1.0, sd))
                w = wrong[:, opts].astype(float)
                n_wrong = w.sum(0)
                Y = np.where(w > 0, (n_wrong + 1) / (n_wrong + 2), 1 / (len(r) - n_wrong + 2))
                beta = _logistic_fit_columns(Z, Y, ridge=ridge)             # (len(opts), k + 2) on Z
                slope = np.where(flat, 0.0, beta[:, :-1] / np.where(flat, 1.0, sd))
                coef[node, opts, :-1] = slope
                coef[node, opts, -1] = beta[:, -1] - (slope * mu).sum(1)
        return cls(coef, optcols)

    def predict_rows(self, x: np.ndarray, depth: np.ndarray, node: np.ndarray) -> np.ndarray:
        """(R, F) every feature column, (R,) depths and nodes -> (R, O) error probabilities."""
        node = np.asarray(node)
        ri, oi = np.nonzero(self.fitted[node])
        c = self.coef[node[ri], oi]                                  # (P, k + 2)
        feats = np.concatenate([x[ri, SCORE][:, None], x[ri[:, None], self.optcols[oi]]], 1).astype(float)
        out = np.full((len(node), self.coef.shape[1]), np.nan, dtype=np.float32)
        out[ri, oi] = 1 / (1 + np.exp(-((c[:, :-1] * feats).sum(1) + c[:, -1])))
        return out

    def state(self) -> dict:
        return {"kind": self.kind, "coef": self.coef, "optcols": self.optcols}

    @classmethod
    def from_state(cls, state: dict) -> "PlattQuantErrorPredictor":
        return cls(state["coef"], state["optcols"])
