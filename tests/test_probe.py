"""The paid probe (quee-probe): its accounting on a hand-built tree, its rule against a plain loop, its
predictor against plain Platt, and the study, config and engine around it."""
import numpy as np
import pytest
import torch

from quee_kit.calibrated import PlattErrorPredictor, ProbePlattErrorPredictor
from quee_kit.config import ConfigError, load_config
from quee_kit.options import OptionSpace
from quee_kit.paths import FEATURE_NAMES, LOG_ODDS, PathCache, PathTree
from quee_kit.policy import call_needed, option_mask, simulate_many
from quee_kit.predictors import DecisionRows
from quee_kit.probe import PROBE_COLUMNS, Probe, probe_child
from quee_kit.quant import Level

BLOCK = {0: 0.3, 1: 0.1}   # block cost per level (0 = reference, 1 = cheap)
HEAD, CALL = 0.01, 0.001


def _tiny():
    """Two levels, three blocks, monotone: 9 nodes; node cost = blocks + every head on the way."""
    tree = PathTree([Level(8, 8), Level(4, 4)], 3, "monotone")
    cost = np.array([sum(BLOCK[q] + HEAD for q in p) for p in tree.paths])
    N = 3
    cache = PathCache(tree, torch.zeros(len(tree), N, 4), torch.zeros(N, dtype=torch.long), cost, cost)
    return tree, cache, OptionSpace(tree, cost)


def test_probe_cost_and_cost_to_go_equal_the_hand_computation():
    tree, cache, opts = _tiny()
    probe = Probe.build(opts, cache.node_cost, CALL)
    n0 = cache.node((0,))
    assert probe.child[n0] == cache.node((0, 1)) and probe.child[cache.node((0, 1))] == cache.node((0, 1, 1))
    assert (probe.child[tree.depth == 3] == -1).all()
    # a probe is block t+1 at the cheap level plus its head, wherever it is bought
    np.testing.assert_allclose(probe.cost[tree.depth < 3], BLOCK[1] + HEAD)
    P, nq = BLOCK[1] + HEAD, 2
    hand = {  # plan (m, q'): blocks + heads to go + calls on the way + later probes wasted - this probe reused
        (2, 0): (BLOCK[0] + HEAD) + CALL + P,              # exits at 2: its decision there wastes a probe
        (3, 0): 2 * (BLOCK[0] + HEAD) + CALL + P,          # at 2 it goes on at w8a8, not the probe's level
        (2, 1): (BLOCK[1] + HEAD) + CALL + P - P,          # the probe is block 2; the exit decision at 2 wastes one
        (3, 1): 2 * (BLOCK[1] + HEAD) + CALL - P,          # the probe is block 2, the one bought at 2 is block 3
    }
    for (m, q), v in hand.items():
        assert probe.delta[n0, (m - 1) * nq + q] == pytest.approx(v)
    assert probe.delta[n0, opts.exit_option[n0]] == 0.0


def test_accounted_cost_equals_the_hand_computation():
    tree, cache, opts = _tiny()
    probe = Probe.build(opts, cache.node_cost, CALL)
    nq = 2
    err = np.ones((len(tree), 3, opts.n_options), dtype=np.float32)
    n0, n01, n00 = cache.node((0,)), cache.node((0, 1)), cache.node((0, 0))
    err[n0, 0, 1 * nq + 1] = 0       # sample 0: at block 1 go on at the probe's level (plan to exit 2 at level 1)
    err[n01, 0, opts.exit_option[n01]] = 0   # ... then exit at 2
    err[n0, 1, opts.exit_option[n0]] = 0     # sample 1: exit at block 1 after buying the probe
    err[n0, 2, 1 * nq + 0] = 0               # sample 2: go on at w8a8 (probe wasted), exit at 2 (wasted again)
    err[n00, 2, opts.exit_option[n00]] = 0
    node, cost = simulate_many(err, cache, opts, np.array([0.0]), 0, call_cost=CALL, probe=probe)
    P = BLOCK[1] + HEAD
    c1, c2 = BLOCK[0] + HEAD, BLOCK[0] + HEAD + BLOCK[1] + HEAD
    assert node[0].tolist() == [n01, n0, n00]
    np.testing.assert_allclose(cost[0], [c2 + 2 * CALL + P,             # probe reused as block 2, probe at 2 wasted
                                         c1 + CALL + P,                 # the one probe wasted
                                         2 * c1 + 2 * CALL + 2 * P])    # both probes wasted
    # the same decisions without the probe pay only blocks, heads and calls
    _, plain = simulate_many(err, cache, opts, np.array([0.0]), 0, call_cost=CALL)
    np.testing.assert_allclose(cost[0] - plain[0], [P, P, 2 * P])


def _probe_rule(err, cache, opts, lams, entry, mask, call_cost, probe):
    """The probe rule written the plain way: one sample and one decision at a time."""
    base, need = opts.delta_cost(call_cost), call_needed(opts, mask, call_cost, lams)
    N = err.shape[1]
    node, cost = np.zeros((len(lams), N), int), np.zeros((len(lams), N))
    for k, lam in enumerate(lams):
        for i in range(N):
            n, paid = opts.tree.entry[entry], 0.0
            while True:
                d = probe.delta[n] if need[k, n] else base[n]
                score = np.where(mask[n], err[n, i] + lam * d, np.inf)
                nxt = opts.next_node[n, score.argmin()]
                if need[k, n]:
                    paid += call_cost + (probe.cost[n] if nxt != probe.child[n] else 0.0)
                if nxt < 0:
                    break
                n = nxt
            node[k, i], cost[k, i] = n, cache.node_cost[n] + paid
    return node, cost


@pytest.mark.parametrize("variant", ["all", "exit-only"])
def test_vectorized_probe_rule_equals_the_plain_loop(digits_prep, variant):
    cache = digits_prep.caches["test"]
    opts = OptionSpace(digits_prep.tree, cache.node_cost)
    probe = Probe.build(opts, cache.node_cost, 0.002)
    err = (np.random.default_rng(3).integers(0, 4, (len(opts.tree), 30, opts.n_options)) / 4).astype(np.float32)
    mask = option_mask(opts, variant)
    lams = np.array([0.0, 0.5, 3.0, 40.0])
    for entry in range(len(opts.tree.levels)):
        node, cost = simulate_many(err, cache, opts, lams, entry, mask, 0.002, probe=probe)
        ref_node, ref_cost = _probe_rule(err, cache, opts, lams, entry, mask, 0.002, probe)
        np.testing.assert_array_equal(node, ref_node)
        np.testing.assert_allclose(cost, ref_cost, rtol=0, atol=1e-12)


def test_probe_child_is_the_cheapest_allowed_level():
    levels = [Level(8, 8), Level(4, 8), Level(4, 4)]
    for family, expect in [("monotone", lambda q: 2), ("free", lambda q: 2), ("uniform", lambda q: q)]:
        tree = PathTree(levels, 3, family)
        ch = probe_child(tree)
        for n in np.flatnonzero(tree.depth < 3):
            assert tree.parent[ch[n]] == n and tree.level[ch[n]] == expect(int(tree.level[n]))


def _rows(probe_signal: bool, S=600, seed=0):
    """Two nodes, 3 options; errors of option 1 depend on the probe's log-odds only (when ``probe_signal``)."""
    g = np.random.default_rng(seed)
    F = len(FEATURE_NAMES)
    x = np.zeros((2 * S, 2 * F))
    x[:, LOG_ODDS] = g.normal(0, 2, 2 * S)
    x[:, F + LOG_ODDS] = g.normal(0, 2, 2 * S) if probe_signal else 1.5
    x[:, F + FEATURE_NAMES.index("agree_prev")] = 1.0 if not probe_signal else g.integers(0, 2, 2 * S)
    p0 = 1 / (1 + np.exp(x[:, LOG_ODDS]))
    p1 = 1 / (1 + np.exp(x[:, F + LOG_ODDS])) if probe_signal else p0
    wrong = np.stack([g.random(2 * S) < p0, g.random(2 * S) < p1, np.zeros(2 * S, bool)], 1).astype(np.float32)
    wrong[:S, 2] = np.nan                                  # option 2 invalid at node 0
    node = np.repeat([0, 1], S)
    return DecisionRows(x, wrong, np.ones(2 * S, int), np.zeros(2 * S, int), node, np.tile(np.arange(S), 2))


def test_constant_probe_features_add_nothing_to_platt():
    rows = _rows(probe_signal=False)
    plain, probe = PlattErrorPredictor.fit(rows, 2), ProbePlattErrorPredictor.fit(rows, 2)
    a = plain.predict_rows(rows.x, rows.depth, rows.node)
    b = probe.predict_rows(rows.x, rows.depth, rows.node)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(b, a, atol=1e-5, equal_nan=True)   # the same fit: the probe columns get no weight
    assert probe.macs == len(PROBE_COLUMNS) * plain.macs


def test_an_informative_probe_beats_plain_platt_out_of_sample():
    fit, held = _rows(True, seed=1), _rows(True, seed=2)
    y = held.wrong[:, 1]

    def logloss(pred):
        p = np.clip(pred.predict_rows(held.x, held.depth, held.node)[:, 1], 1e-6, 1 - 1e-6)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    assert logloss(ProbePlattErrorPredictor.fit(fit, 2)) < logloss(PlattErrorPredictor.fit(fit, 2)) - 0.05


def test_probe_study_charges_its_probes_and_keeps_quee_unchanged(study_cfg, digits_prep, study):
    from quee_kit.study_run import run_study
    from quee_kit.variants import ALL_VARIANTS, QUEE_VARIANTS
    s = run_study(study_cfg, progress=False, prep=digits_prep, store=False,
                  variants={k: ALL_VARIANTS[k] for k in ("quee", "quee-probe")})
    assert "quee-probe" not in QUEE_VARIANTS                       # opt-in: default runs do not change
    assert s.points["quee"].equals(study.points["quee"])           # plain QuEE's numbers are not touched
    m = s.methods["quee-probe"]
    assert m.call_cost == pytest.approx(3 * s.methods["quee"].call_cost)
    assert isinstance(s.predictors["quee-probe"]["final"], ProbePlattErrorPredictor)
    cache = digits_prep.caches["test"]
    for knob in m.knobs[::17]:
        ref_node, ref_cost = _probe_rule(m.err_hat["test"], cache, m.opts, np.array([knob[1]]), knob[0], m.mask,
                                         m.call_cost, m.probe)
        out = m.outcome("test", knob)
        np.testing.assert_array_equal(out.node, ref_node[0])
        assert out.mean_cost == pytest.approx(ref_cost[0].mean(), abs=1e-12)
        assert (out.cost >= cache.node_cost[out.node] - 1e-12).all()
    with pytest.raises(ValueError, match="simulation only"):
        s.engine("quee-probe", 0.5)


def test_probe_config_errors_are_one_line():
    assert load_config(None, ["eval.variants=[quee, quee-probe]"]).eval.variants == ["quee", "quee-probe"]
    for over, match in [(["predictor.kind=mlp", "predictor.probe=true"], r"predictor\.probe must be false unless"),
                        (["predictor.kind=binned", "eval.variants=[quee, quee-probe]"], r"eval\.variants must be no quee-probe")]:
        with pytest.raises(ConfigError, match=match) as e:
            load_config(None, over)
        assert "\n" not in str(e.value)
