"""QuEE policy, baselines and bounds on the digits cache: promised inequalities and oracle checks."""
import dataclasses

import numpy as np
import pytest
import torch

from quee_kit.config import ConfigError, load_config
from quee_kit.engine import DynamicModel
from quee_kit.evaluate import check_config_against_data, paired_bootstrap, run_study
from quee_kit.policy import option_mask, select_for_budget, simulate
from quee_kit.predictors import OptionSpace, discretized_targets


@pytest.fixture(scope="session")
def study(digits_cfg, digits_prep):
    cfg = dataclasses.replace(digits_cfg, predictor=dataclasses.replace(digits_cfg.predictor, folds=3, epochs=15),
                              eval=dataclasses.replace(digits_cfg.eval, lambda_grid=40))
    return run_study(cfg, progress=False, prep=digits_prep)


def test_option_space_structure(digits_prep):
    tree = digits_prep.tree
    opts = OptionSpace(tree, digits_prep.caches["calib"].node_cost)
    root_ref = tree.entry[0]
    # at the reference entry (depth 1) a monotone path may continue at any level to any later exit
    assert opts.valid[root_ref].sum() == 1 + (tree.L - 1) * len(tree.levels)
    assert opts.delta_cost[root_ref, opts.exit_option[root_ref]] == 0
    leaf = tree.nodes_at(tree.L)[0]
    assert opts.valid[leaf].sum() == 1  # only exit at the last block
    # a plan's target is the node reached by repeating its level
    o = (tree.L - 1) * len(tree.levels) + 2
    assert tree.paths[opts.target[root_ref, o]] == (0,) + (2,) * (tree.L - 1)


def test_discretized_targets_known_values():
    X = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]], dtype=np.float32)
    E = np.array([[1], [0], [0], [0], [0], [0]], dtype=np.float32)
    depth = np.ones(6, int)
    T = discretized_targets(X, E, depth, "kmeans", K=2, prior_weight=1.0)
    mean = 1 / 6
    # cell A: 1 error in 3 -> (1 + 1*mean) / (3 + 1); cell B: 0 in 3 -> mean / 4
    np.testing.assert_allclose(T[:3, 0], (1 + mean) / 4, rtol=1e-6)
    np.testing.assert_allclose(T[3:, 0], mean / 4, rtol=1e-6)
    np.testing.assert_array_equal(discretized_targets(X, E, depth, "raw"), E)
    # shrinkage keeps the depth mean: the average target equals the average error
    assert T[:, 0].mean() == pytest.approx(E.mean(), abs=0.05)


def test_oracle_bounds_every_policy_at_every_lambda(study):
    oracle = study.methods["oracle"]
    for name in ["quee", "quee-raw", "quee-exit-only", "quee-quant-only", "random"]:
        m = study.methods[name]
        for knob in m.knobs[::7]:
            lam = knob[1] if name != "random" else 1.0
            for split in ("calib", "test"):
                p = m.outcome(split, knob)
                o = oracle.outcome(split, (lam,))
                obj = lambda r: np.mean(~r.correct) + lam * r.mean_cost  # noqa: E731
                assert obj(o) <= obj(p) + 1e-9, (name, knob, split)
    # and the oracle curve dominates: at its own cost, no policy point is more accurate
    pts = study.points
    for name in ["quee", "best-single", "ee-confidence@q", "static-quant"]:
        for _, r in pts[name].iterrows():
            better = pts["oracle"][pts["oracle"]["cost_test"] <= r["cost_test"] + 1e-12]
            if len(better):
                assert better["acc_test"].max() >= r["acc_test"] - 1e-12


def test_cost_non_increasing_in_lambda(study):
    p = study.points["quee"]
    for entry, g in p.groupby("entry", sort=False):
        g = g.sort_values("lambda")
        for split in ("calib", "test"):
            c = g[f"cost_{split}"].to_numpy()
            assert np.all(np.diff(c) <= 1e-12), (entry, split, c)


def test_budget_rule_never_exceeds_budget_on_calib(study):
    c_min = study.prep.caches["calib"].node_cost[study.prep.tree.nodes_at(1)].min()
    for name in study.methods:
        for b in [c_min * 1.2, 0.05, 0.1, 0.3]:
            knob, ok = study.select(name, b)
            cost = study.methods[name].outcome("calib", knob).mean_cost
            if ok:
                assert cost <= b + 1e-12, (name, b)
    assert select_for_budget(np.array([0.5, 0.2, 0.2]), np.array([0.9, 0.8, 0.8]), 0.3) == (1, True)
    assert select_for_budget(np.array([0.5, 0.4]), np.array([0.9, 0.8]), 0.3) == (1, False)


def test_engine_matches_cache_simulation(study):
    prep, opts = study.prep, study.opts
    q, fitted = study.methods["quee"], study.predictors["quee"]
    x = prep.data.test.x
    for entry, lam in [(0, 0.5), (2, 3.0), (4, 20.0), (1, 0.0)]:
        sim = simulate(fitted["test"], prep.caches["test"], opts, lam, entry, q.mask)
        eng = DynamicModel(prep.model, prep.qblocks, prep.costs, fitted["models"], fitted["columns"],
                           opts, entry, lam, q.mask)
        preds, costs, nodes = [], [], []
        for s, e in [(0, 1), (1, 8), (8, 72), (72, len(x))]:  # batches of mixed sizes
            r = eng(x[s:e])
            preds.append(r.pred), costs.append(r.cost), nodes.append(r.node)
            # really skipped: each sample ran exactly the blocks up to its exit, no more
            assert r.blocks_run == int(prep.tree.depth[r.node].sum())
        nodes = np.concatenate(nodes)
        np.testing.assert_array_equal(nodes, sim.node)
        np.testing.assert_array_equal(torch.cat(preds).numpy(), prep.caches["test"].pred.numpy()[sim.node, np.arange(len(x))])
        np.testing.assert_allclose(np.concatenate(costs), sim.cost, rtol=1e-12)


def test_bad_values_fail_clearly(study, digits_cfg):
    with pytest.raises(ValueError, match="lambda must be"):
        simulate(study.methods["quee"].E["calib"], study.prep.caches["calib"], study.opts, -1.0, 0)
    with pytest.raises(ValueError, match="budget must be > 0"):
        select_for_budget(np.array([0.1]), np.array([0.9]), 0.0)
    with pytest.raises(ConfigError, match="predictor.K must be <="):
        check_config_against_data(dataclasses.replace(digits_cfg, predictor=dataclasses.replace(
            digits_cfg.predictor, K=10_000)))
    with pytest.raises(ConfigError, match="predictor.K must be an int >= 1"):
        load_config("configs/digits.yaml", ["predictor.K=0"])
    with pytest.raises(ValueError, match="variant must be"):
        option_mask(study.opts, "sometimes")


def test_paired_bootstrap():
    assert paired_bootstrap(np.zeros(50)) == (0.0, 0.0, 0.0)
    d = np.r_[np.ones(30), np.zeros(70)]
    m, lo, hi = paired_bootstrap(d, 2000)
    assert m == pytest.approx(0.3) and lo < 0.3 < hi and 0.18 < lo and hi < 0.42


def test_perexit_thresholds_meet_target_shares_on_calib(study):
    # MSDNet-style thresholds: by exit t at least the target share sum_{s<=t} r^(s-1) / sum r^s has exited
    m, tree = study.methods["ee-confidence-perexit"], study.prep.tree
    for q, r in [(0, 0.5), (4, 1.0), (2, 2.0)]:
        out = m.outcome("calib", (q, r))
        share = r ** np.arange(tree.L)
        share /= share.sum()
        exited = np.cumsum(np.bincount(tree.depth[out.node], minlength=tree.L + 1)[1:]) / len(out.node)
        assert np.all(exited >= np.cumsum(share) - 1.0 / len(out.node) - 1e-9), (q, r, exited)
        assert set(tree.level[out.node]) == {q}
