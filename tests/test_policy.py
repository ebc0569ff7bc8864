"""QuEE policy, baselines and bounds on the digits cache: promised inequalities and oracle checks."""
import dataclasses

import numpy as np
import pytest
import torch

from quee_kit.config import ConfigError, load_config
from quee_kit.engine import DynamicModel
from quee_kit.evaluate import paired_bootstrap
from quee_kit.pipeline import check_config_against_data
from quee_kit.study import select_points
from quee_kit.policy import option_mask, select_for_budget, simulate, simulate_many
from quee_kit.options import OptionSpace
from quee_kit.predictors import discretized_targets


def test_option_space_structure(digits_prep):
    tree = digits_prep.tree
    opts = OptionSpace(tree, digits_prep.caches["calib"].node_cost)
    root_ref = tree.entry[0]
    # at the reference entry (depth 1) a monotone path may continue at any level to any later exit
    assert opts.valid[root_ref].sum() == 1 + (tree.L - 1) * len(tree.levels)
    assert opts.delta_cost()[root_ref, opts.exit_option[root_ref]] == 0
    with pytest.raises(ValueError, match="read-only"):   # shared by every method: never modified
        opts.valid[root_ref, 0] = False
    leaf = tree.nodes_at(tree.L)[0]
    assert opts.valid[leaf].sum() == 1  # only exit at the last block
    # a plan's target is the node reached by repeating its level
    o = (tree.L - 1) * len(tree.levels) + 2
    assert tree.paths[opts.target[root_ref, o]] == (0,) + (2,) * (tree.L - 1)


def test_discretized_targets_known_values():
    X = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]], dtype=np.float32)
    wrong = np.array([[1], [0], [0], [0], [0], [0]], dtype=np.float32)
    depth = np.ones(6, int)
    T = discretized_targets(X, wrong, depth, "kmeans", K=2, prior_weight=1.0)
    mean = 1 / 6
    # cell A: 1 error in 3 -> (1 + 1*mean) / (3 + 1); cell B: 0 in 3 -> mean / 4
    np.testing.assert_allclose(T[:3, 0], (1 + mean) / 4, rtol=1e-6)
    np.testing.assert_allclose(T[3:, 0], mean / 4, rtol=1e-6)
    np.testing.assert_array_equal(discretized_targets(X, wrong, depth, "raw"), wrong)
    # shrinkage keeps the depth mean: the average target equals the average error
    assert T[:, 0].mean() == pytest.approx(wrong.mean(), abs=0.05)


def test_oracle_bounds_every_policy_at_every_lambda(study):
    # Guaranteed: the oracle minimizes error + λ·node_cost per sample over every node, and every method
    # below pays at least the node cost of where a sample exits (all heads on the way; QuEE adds calls).
    # Ties are broken toward the cheaper node by 1e-9·cost, hence the tolerance of 1e-9 × the largest cost.
    oracle = study.methods["oracle"]
    tol = 1e-9 * 2.0
    obj = lambda r, lam: np.mean(~r.correct) + lam * r.mean_cost  # noqa: E731
    for name in ["quee", "quee-raw", "quee-exit-only", "quee-quant-only", "random"]:
        m = study.methods[name]
        for knob in m.knobs[::7]:
            lam = knob[1] if name != "random" else 1.0
            for split in ("calib", "test"):
                assert obj(oracle.outcome(split, (lam,)), lam) <= obj(m.outcome(split, knob), lam) + tol, (name, knob)
    # The same as points: every method's (cost, accuracy) lies on or under the oracle's lower convex hull,
    # i.e. above none of the oracle's supporting lines. (static-quant and best-single are left out: a static
    # model pays only its final head, less than the node cost the oracle is charged.)
    pts = study.points
    lams = np.array([k[0] for k in oracle.knobs])
    o = pts["oracle"]
    for name in ["quee", "ee-confidence@q", "ee-confidence-perexit", "random"]:
        for split in ("calib", "test"):
            c, a = pts[name][f"cost_{split}"].to_numpy(), pts[name][f"acc_{split}"].to_numpy()
            lhs = (1 - o[f"acc_{split}"].to_numpy())[:, None] + lams[:, None] * o[f"cost_{split}"].to_numpy()[:, None]
            rhs = (1 - a)[None, :] + lams[:, None] * c[None, :]
            assert (lhs <= rhs + tol).all(), (name, split)


def _min_plan_delta(opts, mask, call_cost):
    plans = mask & (opts.next_node >= 0)
    return opts.delta_cost(call_cost)[plans].min()


def test_lambda_zero_exits_only_where_no_plan_predicts_fewer_errors(study):
    # At λ = 0 the rule is argmin ê: a sample exits before the last block only if no allowed plan has a
    # lower predicted error (ties go to exit-now, the lowest option index at its node).
    q, opts, tree = study.methods["quee"], study.opts, study.prep.tree
    for split in ("calib", "test"):
        E = q.err_hat[split]
        for entry in range(len(tree.levels)):
            out = simulate(E, study.prep.caches[split], opts, 0.0, entry, q.mask, q.call_cost)
            early = np.flatnonzero(tree.depth[out.node] < tree.L)
            nodes = out.node[early]
            e = E[nodes, early]                                            # (n, O)
            e_exit = e[np.arange(len(early)), opts.exit_option[nodes]]
            e_plans = np.where(q.mask[nodes] & (opts.next_node[nodes] >= 0), e, np.inf).min(1)
            assert (e_exit <= e_plans).all(), (split, entry)


def test_large_lambda_exits_every_sample_at_its_entry_node(study):
    # ê is in [0, 1] and every plan costs at least δ_min > 0 more than exiting, so for λ >= 1 / δ_min
    # exit-now wins at the entry node whatever ê says: no predictor call is needed, and that is the
    # cheapest any sample can be at that entry.
    q, opts, tree = study.methods["quee"], study.opts, study.prep.tree
    assert q.call_cost > 0
    lam_big = 1.01 / _min_plan_delta(opts, q.mask, q.call_cost)
    lams = np.concatenate([[0.0], np.logspace(-3, np.log10(lam_big), 25)])
    for split in ("calib", "test"):
        cache = study.prep.caches[split]
        for entry in range(len(tree.levels)):
            node, cost = simulate_many(q.err_hat[split], cache, opts, lams, entry, q.mask, q.call_cost)
            assert (node[-1] == tree.entry[entry]).all(), (split, entry)
            np.testing.assert_array_equal(cost[-1], cache.node_cost[tree.entry[entry]])   # no call made
            # at λ = 0 every sample that decides pays at least one call
            assert (cost[0] >= cache.node_cost[node[0]] + q.call_cost - 1e-12).all()
            assert (cost >= cost[-1][None, :] - 1e-12).all(), (split, entry)


def test_budget_rule_accuracy_non_decreasing_in_budget(study):
    # A larger budget only adds feasible knobs, so the chosen calib accuracy cannot fall.
    budgets = np.linspace(0.02, 1.2, 60)
    for name, pts in study.points.items():
        idx, ok = select_points(pts, budgets)
        acc = pts["acc_calib"].to_numpy()[idx][ok]
        assert (np.diff(acc) >= 0).all(), name
        assert (pts["cost_calib"].to_numpy()[idx][ok] <= budgets[ok] + 1e-12).all(), name


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
    for name in ("quee", "quee-binned", "quee-mlp"):
        q, fitted = study.methods[name], study.predictors[name]
        x = prep.data.test.x
        lam_free = 1.01 / _min_plan_delta(opts, q.mask, q.call_cost)     # decided without any call
        for entry, lam in [(0, 0.5), (2, 3.0), (4, 20.0), (1, 0.0), (3, lam_free)]:
            sim = simulate(fitted["test"], prep.caches["test"], opts, lam, entry, q.mask, q.call_cost)
            eng = DynamicModel(prep.model, prep.qblocks, prep.costs, fitted["final"], opts, entry, lam, q.mask,
                               q.call_cost)
            preds, costs, nodes = [], [], []
            for s, e in [(0, 1), (1, 8), (8, 72), (72, len(x))]:  # batches of mixed sizes
                r = eng(x[s:e])
                preds.append(r.pred), costs.append(r.cost), nodes.append(r.node)
                # really skipped: each sample ran exactly the blocks up to its exit, no more
                assert r.blocks_run == int(prep.tree.depth[r.node].sum())
            nodes = np.concatenate(nodes)
            np.testing.assert_array_equal(nodes, sim.node)
            np.testing.assert_array_equal(torch.cat(preds).numpy(),
                                          prep.caches["test"].pred.numpy()[sim.node, np.arange(len(x))])
            np.testing.assert_allclose(np.concatenate(costs), sim.cost, rtol=1e-12)  # the same calls are paid


def test_engine_names_its_parts_for_the_profiler_only_when_asked(study):
    from torch.profiler import profile
    prep, q = study.prep, study.methods["quee"]
    eng = DynamicModel(prep.model, prep.qblocks, prep.costs, study.predictors["quee"]["final"], study.opts, 0, 0.5,
                       q.mask, q.call_cost)
    seen = {}
    for labels in (False, True):
        eng.labels = labels
        with profile() as prof:
            out = eng(prep.data.test.x[:64])
        seen[labels] = ({e.key for e in prof.key_averages() if e.key.startswith("engine.")}, out.node)
    assert seen[False][0] == set()
    assert seen[True][0] == {f"engine.{p}" for p in ("blocks", "heads", "decide", "predictor", "regroup")}
    np.testing.assert_array_equal(seen[False][1], seen[True][1])

def test_every_test_decision_is_one_call_of_the_refitted_predictor(study):
    from quee_kit.predictors import predict_nodes
    for name in ("quee", "quee-binned", "quee-mlp"):
        q, fitted = study.methods[name], study.predictors[name]
        final = fitted["final"]
        assert q.call_cost == pytest.approx(study.prep.costs.call_cost(final.macs)) and q.call_cost > 0
        np.testing.assert_array_equal(fitted["test"], predict_nodes(final, study.prep.caches["test"], study.opts,
                                                                    np.arange(study.prep.caches["test"].n_samples)))
    kinds = {n: study.predictors[n]["final"].kind for n in ("quee", "quee-binned", "quee-mlp")}
    assert kinds == {"quee": study.cfg.predictor.kind, "quee-binned": "binned", "quee-mlp": "mlp"}
    # a per-node calibration call (a few comparisons or multiply-adds) is far cheaper than an MLP call
    for name in ("quee-binned", "quee"):
        assert study.methods[name].call_cost < study.methods["quee-mlp"].call_cost / 20


def test_bad_values_fail_clearly(study, digits_cfg):
    with pytest.raises(ValueError, match="lambda must be"):
        simulate(study.methods["quee"].err_hat["calib"], study.prep.caches["calib"], study.opts, -1.0, 0)
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
    # MSDNet-style thresholds: by exit t at least the target counts of exits 1..t have exited
    m, tree = study.methods["ee-confidence-perexit"], study.prep.tree
    for q, r in [(0, 0.5), (4, 1.0), (2, 2.0)]:
        out = m.outcome("calib", (q, r))
        share = r ** np.arange(tree.L)
        share /= share.sum()
        n = len(out.node)
        exited = np.cumsum(np.bincount(tree.depth[out.node], minlength=tree.L + 1)[1:])
        # exit t takes round(share_t · n) of the samples still there (all of them if fewer remain)
        target = np.minimum(np.cumsum(np.round(share * n)), n)
        target[-1] = n
        assert np.all(exited >= target), (q, r, exited, target)
        assert set(tree.level[out.node]) == {q}


def test_best_single_and_quee_can_meet_a_budget_of_exactly_c_min(study):
    # c_min = exit 1 at the cheapest level: best-single reaches it with τ = 0 (everyone exits at exit 1),
    # QuEE with a λ so large that exiting wins whatever err_hat says (no predictor call is paid).
    from quee_kit.evaluate import c_min_sat
    c_min = c_min_sat(study)[0]
    for name in ("best-single", "ee-confidence@q", "quee", "quee-binned"):
        knob, ok = study.select(name, c_min)
        assert ok, name
        assert study.methods[name].outcome("calib", knob).mean_cost <= c_min + 1e-12, name


def _dense_rule(err_hat, opts, lams, entry, mask, call_cost):
    """The rule written the plain way: every option scored, the disallowed ones at +inf, first minimum."""
    tree, delta, N = opts.tree, opts.delta_cost(call_cost), err_hat.shape[1]
    node = np.full((len(lams), N), tree.entry[entry])
    for k, lam in enumerate(lams):
        for i in range(N):
            while True:
                n = node[k, i]
                score = np.where(mask[n], err_hat[n, i] + lam * delta[n], np.inf)
                nxt = opts.next_node[n, score.argmin()]
                if nxt < 0:
                    break
                node[k, i] = nxt
    return node


@pytest.mark.parametrize("variant", ["all", "exit-only", "quant-only"])
def test_vectorized_rule_equals_the_plain_rule(digits_prep, variant):
    # simulate_many scores each node's allowed options only, grouped by node: it must take the decisions
    # of the dense rule, ties included (err_hat on a coarse grid makes many), for every lambda and entry
    cache = digits_prep.caches["test"]
    opts = OptionSpace(digits_prep.tree, cache.node_cost)
    rng = np.random.default_rng(5)
    err = (rng.integers(0, 4, (len(opts.tree), 40, opts.n_options)) / 4).astype(np.float32)
    mask = option_mask(opts, variant)
    lams = np.array([0.0, 0.5, 3.0, 40.0])
    for entry in range(len(opts.tree.levels)):
        node, _ = simulate_many(err, cache, opts, lams, entry, mask, call_cost=0.01)
        np.testing.assert_array_equal(node, _dense_rule(err, opts, lams, entry, mask, 0.01))
