"""Error predictors: decision rows, depth balance, held-out samples, binned tables, the seed x sample bootstrap."""
import numpy as np
import pytest

from quee_kit.calibrated import SCORE, BinnedErrorPredictor, PlattErrorPredictor
from quee_kit.evaluate import hierarchical_bootstrap, paired_bootstrap
from quee_kit.paths import FEATURE_NAMES
from quee_kit.options import OptionSpace
from quee_kit.predictors import (DecisionRows, decision_rows, depth_balanced_weights,
                                 expected_calibration_error, holdout_by_sample, subsample_by_depth)


def test_decision_rows_match_the_cache(digits_prep):
    cache, tree = digits_prep.caches["calib"], digits_prep.tree
    opts = OptionSpace(tree, cache.node_cost)
    samples = np.array([3, 0, 7])
    rows = decision_rows(cache, opts, samples)
    nodes = np.flatnonzero(tree.depth < tree.L)
    assert len(rows.node) == len(nodes) * 3 and set(rows.node) == set(nodes)
    r = 5                                                 # any row: its features and errors are the cache's
    n, smp = rows.node[r], rows.sample[r]
    np.testing.assert_array_equal(rows.x[r], cache.features[n, smp].numpy())
    o = opts.exit_option[n]
    assert rows.wrong[r, o] == float(not cache.correct[n, smp]) and rows.depth[r] == tree.depth[n]
    assert np.isnan(rows.wrong[r, ~opts.valid[n]]).all()


def test_depth_weights_give_every_depth_the_same_total():
    depth = np.array([1] * 5 + [2] * 50 + [3] * 500)
    w = depth_balanced_weights(depth, "depth")
    totals = [w[depth == t].sum() for t in (1, 2, 3)]
    assert totals == pytest.approx([totals[0]] * 3) and w.mean() == pytest.approx(1.0)
    assert (depth_balanced_weights(depth, "none") == 1).all()


def test_subsample_keeps_small_depths_whole():
    depth = np.array([1] * 30 + [2] * 300 + [3] * 3000)
    keep = subsample_by_depth(depth, 300, np.random.default_rng(0))
    counts = np.bincount(depth[keep], minlength=4)[1:]
    assert len(keep) == 300 and counts[0] == 30 and counts[1] == 135 and counts[2] == 135
    assert len(np.unique(keep)) == len(keep)
    np.testing.assert_array_equal(subsample_by_depth(depth[:40], 300, np.random.default_rng(0)), np.arange(40))


def test_holdout_is_by_sample():
    sample = np.tile(np.arange(50), 7)                    # 7 nodes x 50 samples, node-major
    held = holdout_by_sample(sample, 0.1, np.random.default_rng(0))
    assert len(np.unique(sample[held])) == 5
    assert not set(sample[held]) & set(sample[~held])      # no sample on both sides


def test_binned_predictor_known_values():
    # one node, one valid option: 4 samples with log-odds 0,1,2,3 -> 2 bins {0,1} and {2,3}
    x = np.zeros((4, len(FEATURE_NAMES)), np.float32)
    x[:, SCORE] = [0, 1, 2, 3]
    wrong = np.array([[1.0, np.nan], [1.0, np.nan], [0.0, np.nan], [1.0, np.nan]], np.float32)
    rows = DecisionRows(x, wrong, np.ones(4, int), np.zeros(4, int), np.zeros(4, int), np.arange(4))
    m = BinnedErrorPredictor.fit(rows, n_nodes=1, bins=2, prior_weight=1.0)
    node_mean = 0.75
    p = m.predict_rows(x, rows.depth, rows.node)
    np.testing.assert_allclose(p[:, 0], [(2 + node_mean) / 3] * 2 + [(1 + node_mean) / 3] * 2, rtol=1e-6)
    assert np.isnan(p[:, 1]).all() and m.macs == 1
    same = BinnedErrorPredictor.from_state(m.state()).predict_rows(x, rows.depth, rows.node)
    np.testing.assert_array_equal(same, p)


def test_ece_known_value():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    wrong = np.array([0.0, 0.0, 1.0, 0.0])
    # bin of 0.05: observed 0 -> |0 - 0.05| * 0.5; bin of 0.95: observed 0.5 -> |0.5 - 0.95| * 0.5
    assert expected_calibration_error(p, wrong, 10) == pytest.approx(0.025 + 0.225)


def test_hierarchical_bootstrap_sees_seed_variation():
    # seed 0 always +1, seed 1 always -1: the seed-mean difference is 0 on every sample, so resampling
    # samples alone says [0, 0]; resampling seeds too must span both seeds' outcomes.
    diffs = np.stack([np.ones(400), -np.ones(400)])
    assert paired_bootstrap(diffs.mean(0), 1000) == (0.0, 0.0, 0.0)
    m, lo, hi = hierarchical_bootstrap(diffs, 1000, seed=0)
    assert m == 0 and lo == -1 and hi == 1
    # one seed: the same interval width as the sample bootstrap, up to resampling noise
    d = np.r_[np.ones(30), np.zeros(70)]
    _, lo1, hi1 = hierarchical_bootstrap(d[None, :], 4000, seed=1)
    _, lo2, hi2 = paired_bootstrap(d, 4000, seed=1)
    assert abs((hi1 - lo1) - (hi2 - lo2)) < 0.02


def test_platt_recovers_a_logistic_model_and_keeps_the_score_ranking():
    rng = np.random.default_rng(0)
    n = 40000
    x = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    x[:, SCORE] = rng.normal(3.0, 2.0, n)
    p_true = 1 / (1 + np.exp(-(-1.5 * x[:, SCORE] + 2.0)))
    wrong = np.stack([rng.random(n) < p_true, np.full(n, np.nan)], 1).astype(np.float32)
    rows = DecisionRows(x, wrong, np.ones(n, int), np.zeros(n, int), np.zeros(n, int), np.arange(n))
    m = PlattErrorPredictor.fit(rows, n_nodes=2)
    a, b = m.coef[0, 0]
    assert a == pytest.approx(-1.5, abs=0.05) and b == pytest.approx(2.0, abs=0.1)
    assert np.isnan(m.coef[0, 1]).all() and np.isnan(m.coef[1]).all()    # invalid option, unfitted node
    p = m.predict_rows(x, rows.depth, rows.node)[:, 0]
    order = np.argsort(-x[:, SCORE], kind="stable")
    assert (np.diff(p[order]) >= 0).all()                 # more confident -> lower predicted error
    same = PlattErrorPredictor.from_state(m.state()).predict_rows(x, rows.depth, rows.node)
    np.testing.assert_array_equal(same[:, 0], p)


def test_platt_gives_a_row_the_same_bits_in_a_few_rows_and_in_many():
    # the engine asks for a few rows at a time, the cache for every (node, sample) row: a row's prediction
    # must not depend on the rows beside it, or the engine would part from the cache simulation
    rng = np.random.default_rng(5)
    rows = _rows_of_nodes(rng, 3, 3000, 4, [{0, 2}, {1}, {0, 1, 3}])
    m = PlattErrorPredictor.fit(rows, n_nodes=4)
    many = m.predict_rows(rows.x, rows.depth, rows.node)                     # 9,000 rows
    pick = rng.choice(len(rows.node), 200, replace=False)
    few = m.predict_rows(rows.x[pick], rows.depth[pick], rows.node[pick])
    np.testing.assert_array_equal(few, many[pick])
    at1 = few[rows.node[pick] == 1]                                          # node 1: only option 1 fitted
    assert len(at1) and np.isnan(at1[:, [0, 2, 3]]).all() and not np.isnan(at1[:, 1]).any()
    unfitted = m.predict_rows(rows.x[:5], rows.depth[:5], np.full(5, 3))      # node 3 was never fitted
    assert np.isnan(unfitted).all()


def _rows_of_nodes(rng, n_nodes, S, n_opt, valid_sets):
    """Node-major rows: S samples at each of n_nodes nodes, options valid per node as in a cache."""
    x = np.zeros((n_nodes * S, len(FEATURE_NAMES)), np.float32)
    x[:, SCORE] = rng.normal(2.0, 2.0, n_nodes * S)
    wrong = (rng.random((n_nodes * S, n_opt)) < 0.3).astype(np.float32)
    for k, ok in enumerate(valid_sets):
        wrong[k * S:(k + 1) * S, [o for o in range(n_opt) if o not in ok]] = np.nan
    node = np.repeat(np.arange(n_nodes), S)
    return DecisionRows(x, wrong, np.ones(len(node), int), np.zeros(len(node), int), node,
                        np.tile(np.arange(S), n_nodes))


def test_platt_fits_every_node_and_option_as_its_own_newton_fit():
    # all (node, option) pairs are fitted together: each must equal a one-column Newton fit on its node alone
    rng = np.random.default_rng(3)
    rows = _rows_of_nodes(rng, 3, 300, 4, [{0, 2}, {1}, {0, 1, 3}])
    m = PlattErrorPredictor.fit(rows, n_nodes=4)
    for k, ok in enumerate([{0, 2}, {1}, {0, 1, 3}]):
        s = rows.x[k * 300:(k + 1) * 300, SCORE].astype(float)
        z = (s - s.mean()) / (s.std() + 1e-6)
        for o in range(4):
            if o not in ok:
                assert np.isnan(m.coef[k, o]).all()
                continue
            w = rows.wrong[k * 300:(k + 1) * 300, o]
            nw = w.sum()
            y = np.where(w > 0, (nw + 1) / (nw + 2), 1 / (300 - nw + 2))
            a = b = 0.0
            for _ in range(25):
                p = 1 / (1 + np.exp(-(a * z + b)))
                r, v = p - y, p * (1 - p)
                ga, gb = (z * r).mean() + 1e-5 * a, r.mean()
                haa, hab, hbb = (z * z * v).mean() + 1e-5, (z * v).mean(), v.mean() + 1e-9
                det = haa * hbb - hab ** 2
                a, b = a - (hbb * ga - hab * gb) / det, b - (haa * gb - hab * ga) / det
            sd = s.std() + 1e-6
            np.testing.assert_allclose(m.coef[k, o], [a / sd, b - a * s.mean() / sd], rtol=1e-9, atol=1e-12)
    assert np.isnan(m.coef[3]).all()                                      # a node without rows
    shuffled = DecisionRows(rows.x[::-1], rows.wrong[::-1], rows.depth, rows.level, rows.node[::-1], rows.sample)
    with pytest.raises(ValueError, match="node-major"):
        PlattErrorPredictor.fit(shuffled, n_nodes=4)


def test_binned_table_counts_every_bin_of_every_node():
    rng = np.random.default_rng(4)
    rows = _rows_of_nodes(rng, 2, 200, 3, [{0, 1}, {2}])
    m = BinnedErrorPredictor.fit(rows, n_nodes=2, bins=4, prior_weight=2.0)
    for k, ok in enumerate([{0, 1}, {2}]):
        r = slice(k * 200, (k + 1) * 200)
        b = np.searchsorted(m.edges[k], rows.x[r, SCORE], side="right")
        for o in range(3):
            w = rows.wrong[r, o]
            if o not in ok:
                assert np.isnan(m.table[k, :, o]).all()
                continue
            want = [(w[b == j].sum() + 2.0 * w.mean()) / ((b == j).sum() + 2.0) for j in range(4)]
            np.testing.assert_allclose(m.table[k, :, o], want, rtol=1e-6)
