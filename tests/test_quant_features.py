"""Quantization-aware predictor features (predictor.features: quant): known values, the quantizer's own
numbers, the same features in the path cache and the engine, the Platt extension, cost and config."""
import math

import numpy as np
import pytest
import torch

from quee_kit.calibrated import SCORE, PlattErrorPredictor, PlattQuantErrorPredictor
from quee_kit.config import ConfigError, load_config
from quee_kit.paths import FEATURE_NAMES
from quee_kit.predictors import DecisionRows
from quee_kit.quant import Level, fake_quant_act, parse_level
from quee_kit.quant_features import (QUANT_STATS, act_quantizers, act_scale, feature_ops, level_columns,
                                     quant_stats)

CLIP, MAX, RMS, ZERO, ERR = range(5)


def test_known_values_of_one_token_at_4_bits():
    # token [3, -1, 0, 0] at a4, per token: scale 3/7; x/scale = [7, -2.33, 0, 0] -> [7, -2, 0, 0]
    st = quant_stats(torch.tensor([[[3.0, -1.0, 0.0, 0.0]]]), [Level(16, 16), Level(4, 4)])[0]
    assert st.shape == (len(QUANT_STATS),)
    s = 3 / 7
    assert st[CLIP] == 0 and st[ZERO] == 0.5
    assert st[MAX] == pytest.approx(7.0, rel=1e-6)
    assert st[RMS] == pytest.approx(math.sqrt(10 / 4) / s, rel=1e-6)
    assert st[ERR] == pytest.approx((1 - 6 / 7) / math.sqrt(10), rel=1e-5)   # only -1 moves, to -6/7


def test_known_values_with_clipping_and_a_shared_quantizer():
    # clipped at the median |x| (1.0): scale 1/7, 4 clips to 1 -> one clipped entry, error 3
    x = torch.tensor([[[4.0, 1.0, 1.0, 1.0]]])
    lv = Level(4, 4, "token", 50.0)
    st = quant_stats(x, [lv])[0]
    assert st[CLIP] == 0.25 and st[ZERO] == 0
    assert st[MAX] == pytest.approx(28.0, rel=1e-6)
    assert st[RMS] == pytest.approx(7 * math.sqrt(19 / 4), rel=1e-6)
    assert st[ERR] == pytest.approx(3 / math.sqrt(19), rel=1e-6)
    # w8a8 and w4a8 quantize activations alike: one set of columns, which both levels point to
    levels = [Level(16, 16), Level(8, 8), Level(4, 8), Level(4, 4)]
    assert act_quantizers(levels) == [(8, "token", None), (4, "token", None)]
    cols = level_columns(levels, offset=11)
    assert cols[0] is None and cols[1] == cols[2] == list(range(11, 16)) and cols[3] == list(range(16, 21))


@pytest.mark.parametrize("level", ["w4a4", "w8a3", "w4a8"])
@pytest.mark.parametrize("gran,clip", [("token", None), ("tensor", None), ("token", 99.0)])
def test_stats_are_those_of_the_quantizer_the_blocks_run(level, gran, clip):
    # reference: the quantizer of quant.py itself (its scale and its rounding), on a random state
    x = torch.randn(6, 5, 16) * torch.rand(6, 5, 1) * 3
    lv = parse_level(level, gran, clip)
    st = quant_stats(x, [lv])
    ref = fake_quant_act(x, lv.a_bits, gran, clip)
    rel = ((ref - x) ** 2).sum((1, 2)).sqrt() / (x ** 2).sum((1, 2)).sqrt()
    torch.testing.assert_close(st[:, ERR], rel, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(st[:, ZERO], (ref == 0).float().mean((1, 2)))
    s = act_scale(x, lv.a_bits, gran, clip)
    q = 2 ** (lv.a_bits - 1) - 1
    torch.testing.assert_close(st[:, CLIP], ((x / s).round().abs() > q).float().mean((1, 2)))
    if clip is None:   # a max-based scale never clips, and the largest entry sits at qmax
        assert (st[:, CLIP] == 0).all()
        if gran == "token":
            torch.testing.assert_close(st[:, MAX], torch.full((6,), float(q)))
    # one sample at a time: the same bits as in the batch (the engine's batches are not the cache's)
    alone = torch.cat([quant_stats(x[i:i + 1], [lv]) for i in range(len(x))])
    torch.testing.assert_close(alone, st, rtol=0, atol=0)


def _rows(rng, S, n_opt, extra):
    """One node at depth 1 with S samples, a log-odds column and ``extra`` (S, k) quant columns after the
    softmax ones; options 0..n_opt-1 all valid."""
    x = np.zeros((S, len(FEATURE_NAMES) + extra.shape[1]), np.float32)
    x[:, SCORE] = rng.normal(2.0, 2.0, S)
    x[:, len(FEATURE_NAMES):] = extra
    return x


def test_platt_quant_reduces_to_platt_when_the_statistics_are_constant():
    rng = np.random.default_rng(0)
    S, k = 800, len(QUANT_STATS)
    x = _rows(rng, S, 4, np.tile(rng.normal(size=k), (S, 1)))            # constant columns
    wrong = (rng.random((S, 4)) < 1 / (1 + np.exp(x[:, [SCORE]]))).astype(np.float32)
    rows = DecisionRows(x, wrong, np.ones(S, int), np.zeros(S, int), np.zeros(S, int), np.arange(S))
    F = len(FEATURE_NAMES)
    qcols = [None, list(range(F, F + k))]                                 # 2 levels: options 2, 3 are plans
    pq = PlattQuantErrorPredictor.fit(rows, 1, qcols, ridge=1e-5)
    p = PlattErrorPredictor.fit(rows, 1)
    np.testing.assert_allclose(pq.predict_rows(x, rows.depth, rows.node), p.predict_rows(x, rows.depth, rows.node),
                               rtol=1e-5, atol=1e-7)
    assert (pq.coef[0, :, 1:-1] == 0).all()
    assert pq.macs == 4 * (1 + k)


def test_platt_quant_ranks_errors_a_statistic_explains_and_platt_cannot():
    # the error of the plan at the quantized level depends on a statistic, not on the log-odds
    rng = np.random.default_rng(1)
    S, k = 3000, len(QUANT_STATS)
    extra = rng.normal(size=(S, k)).astype(np.float32)
    x = _rows(rng, S, 4, extra)
    wrong = (rng.random((S, 4)) < 0.3).astype(np.float32)
    wrong[:, 3] = (rng.random(S) < 1 / (1 + np.exp(-3 * extra[:, RMS]))).astype(np.float32)
    rows = DecisionRows(x, wrong, np.ones(S, int), np.zeros(S, int), np.zeros(S, int), np.arange(S))
    F = len(FEATURE_NAMES)
    pq = PlattQuantErrorPredictor.fit(rows, 1, [None, list(range(F, F + k))])
    from sklearn.metrics import roc_auc_score
    auc_q = roc_auc_score(wrong[:, 3], pq.predict_rows(x, rows.depth, rows.node)[:, 3])
    auc_p = roc_auc_score(wrong[:, 3], PlattErrorPredictor.fit(rows, 1).predict_rows(x, rows.depth, rows.node)[:, 3])
    assert auc_q > 0.8 and auc_p < 0.6
    # exit-now (option 1 at a depth-1 node of level 1: option (1 - 1) * 2 + 1) keeps Platt's fit
    assert (pq.coef[0, :2, 1:-1] == 0).all()


def test_config_rejects_an_unknown_feature_set_naming_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("configs/digits.yaml", ["predictor.features=logits"])
    msg = str(e.value)
    assert "predictor.features" in msg and "'softmax' or 'quant'" in msg and "\n" not in msg


# ------------------------------------------------------------------ on the digits model: cache, engine, cost

@pytest.fixture(scope="module")
def quant_study(digits_cfg, digits_prep):
    from quee_kit.prepare import prepare
    from quee_kit.study_run import run_study
    cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", "model.epochs=15",
                                              "predictor.folds=3", "predictor.epochs=15", "eval.lambda_grid=40",
                                              "predictor.features=quant"])
    prep = prepare(cfg, progress=False)
    return run_study(cfg, progress=False, prep=prep, store=False)


def test_quant_caches_are_their_own_artifact_with_the_same_forward_pass(quant_study, digits_prep):
    from quee_kit.prepare import cache_path
    prep = quant_study.prep
    assert cache_path(prep, "test")[0] != cache_path(digits_prep, "test")[0]
    assert digits_prep.caches["test"].qstats is None
    a, b = prep.caches["test"], digits_prep.caches["test"]
    assert torch.equal(a.logits, b.logits)
    F, tree = len(FEATURE_NAMES), prep.tree
    assert a.features.shape[-1] == F + len(QUANT_STATS) * len(act_quantizers(tree.levels))
    torch.testing.assert_close(a.features[..., :F], b.features, rtol=0, atol=0, equal_nan=True)
    dec = torch.as_tensor(tree.depth < tree.L)
    assert torch.isfinite(a.qstats[dec]).all() and torch.isnan(a.qstats[~dec]).all()


class _Recorder:
    """A predictor that records the feature rows it is called on, and answers like the wrapped one."""

    def __init__(self, inner):
        self.inner, self.columns, self.seen = inner, inner.columns, []

    def predict_rows(self, x, depth, node):
        self.seen.append((np.asarray(node).copy(), x.copy()))
        return self.inner.predict_rows(x, depth, node)


@pytest.mark.parametrize("name", ["quee", "quee-mlp"])
def test_engine_computes_the_cache_features_bit_for_bit(quant_study, name):
    from quee_kit.engine import DynamicModel
    st, prep = quant_study, quant_study.prep
    q, fitted = st.methods[name], st.predictors[name]
    rec = _Recorder(fitted["final"])
    cols = rec.columns
    assert max(cols) >= len(FEATURE_NAMES)                       # it reads quant columns
    eng = DynamicModel(prep.model, prep.qblocks, prep.costs, rec, st.opts, 0, 0.5, q.mask, q.call_cost)
    cache, x = prep.caches["test"], prep.data.test.x
    n = 0
    for i in range(0, 40, 3):                                    # one sample per batch: each row is sample i
        rec.seen.clear()
        eng(x[i:i + 1])
        for node, row in rec.seen:
            want = cache.features[int(node[0]), i].numpy()
            # the statistics: bit for bit; the head's own features may move in the last bit with a batch of one
            # (the head's matmul takes another kernel path), as they do without quant features
            q = [c for c in cols if c >= len(FEATURE_NAMES)]
            np.testing.assert_array_equal(row[0, q], want[q])
            sm = [c for c in cols if c < len(FEATURE_NAMES)]
            np.testing.assert_allclose(row[0, sm], want[sm], rtol=1e-6, atol=1e-6)
            n += 1
    assert n >= 20


@pytest.mark.parametrize("name", ["quee", "quee-mlp"])
def test_engine_matches_cache_simulation_with_quant_features(quant_study, name):
    from quee_kit.engine import DynamicModel
    from quee_kit.policy import simulate
    st, prep = quant_study, quant_study.prep
    q, fitted = st.methods[name], st.predictors[name]
    x = prep.data.test.x
    for entry, lam in [(0, 0.5), (2, 3.0), (1, 0.05)]:
        sim = simulate(fitted["test"], prep.caches["test"], st.opts, lam, entry, q.mask, q.call_cost)
        eng = DynamicModel(prep.model, prep.qblocks, prep.costs, fitted["final"], st.opts, entry, lam, q.mask,
                           q.call_cost)
        nodes, costs = [], []
        for s, e in [(0, 1), (1, 8), (8, 72), (72, len(x))]:     # batches of mixed sizes
            r = eng(x[s:e])
            nodes.append(r.node), costs.append(r.cost)
        np.testing.assert_array_equal(np.concatenate(nodes), sim.node)
        np.testing.assert_allclose(np.concatenate(costs), sim.cost, rtol=1e-12)


def test_a_call_pays_for_the_statistics_it_reads(quant_study):
    st, prep = quant_study, quant_study.prep
    O, cfg = st.opts.n_options, prep.cfg
    numel = (16 + 1) * cfg.model.dim                             # digits: 16 patches + CLS, dim 32
    n_aq = 2                                                     # a8 (w8a8, w4a8, w3a8) and a4 (w4a4)
    assert feature_ops(prep.levels, numel) == numel * (3 + 7 * n_aq)
    assert st.methods["quee"].call_cost == pytest.approx(prep.costs.call_cost(O * 6 + numel * (3 + 7 * n_aq)),
                                                         rel=1e-12)
    assert st.predictors["quee"]["final"].macs == O * 6
    # binned reads the log-odds alone: it computes no statistic and pays for none
    assert st.methods["quee-binned"].call_cost == pytest.approx(prep.costs.call_cost(cfg.predictor.bins - 1))
