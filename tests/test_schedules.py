"""Issue 29: the static-schedule baselines and best-static's envelope, seed-level verdicts and precision diversity."""
import numpy as np
import pytest
import torch

from quee_kit.baselines import BestSingle, ConfidenceExit, StaticQuant
from quee_kit.budget_rule import select_for_budget
from quee_kit.evaluate import budget_tables
from quee_kit.paths import PathCache, PathTree
from quee_kit.quant import parse_level
from quee_kit.schedules import BestStatic, ConfidenceSchedule, StaticSchedule, rule_frontier, schedule_name
from quee_kit.verdicts import level_table, precision_diversity, t_interval, two_interval_verdict

BUDGETS = np.linspace(0.02, 1.05, 60)   # below c_min (infeasible) to above the reference


def test_rule_frontier_gives_the_rules_choice_at_every_budget():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        costs = rng.choice([0.1, 0.2, 0.3, 0.4, 0.5], n)    # many ties in cost and accuracy
        accs = rng.choice([0.5, 0.6, 0.7], n)
        keep = rule_frontier(costs, accs)
        assert (np.diff(keep) > 0).all()
        for b in [0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.5, 0.9]:
            full = select_for_budget(costs, accs, b)
            sub = select_for_budget(costs[keep], accs[keep], b)
            assert (keep[sub[0]], sub[1]) == full, (n, b)


def _calib(study, name, b):
    knob, ok = study.select(name, b)
    return study.methods[name].outcome("calib", knob).accuracy, ok


def test_best_static_is_the_envelope_of_its_members(study):
    """The rule picks, over the union of the members' knobs, the most accurate within budget on calib: every
    feasible member's pick is in that union, so best-static's calib accuracy is at least its accuracy."""
    for b in BUDGETS:
        env, env_ok = _calib(study, "best-static", b)
        for member in ("best-single", "static-schedule", "ee-confidence-schedule"):
            acc, ok = _calib(study, member, b)
            if ok:
                assert env_ok and env >= acc, (member, b)
    # and it is strictly better than best-single somewhere (a schedule adds something on digits)
    assert any(_calib(study, "best-static", b)[0] > _calib(study, "best-single", b)[0] for b in BUDGETS)


def test_the_frontier_keeps_the_full_grids_choices(study):
    """ee-confidence-schedule keeps only its calib frontier: the rule on the full (node, τ) grid picks the same
    outcome at every budget."""
    m = study.methods["ee-confidence-schedule"]
    grid, costs, accs = m.grid("calib")
    assert len(grid) == len(study.prep.tree) * len(m.taus) > 10 * len(m.knobs)
    for b in BUDGETS:
        i, ok = select_for_budget(costs, accs, b)
        assert study.select("ee-confidence-schedule", b) == (grid[i], ok)
        out = m.outcome("calib", grid[i])
        assert (out.mean_cost, out.accuracy) == (costs[i], accs[i])   # the vectorized grid: the same numbers


def test_uniform_schedules_reproduce_best_single(study):
    """Restricted to the uniform full-depth schedules, the schedule baselines are static-quant and
    ee-confidence@q again, and their envelope picks best-single's outcome at every budget."""
    tree, caches = study.prep.tree, study.prep.caches
    uniform = [tree.index[(q,) * tree.L] for q in range(len(tree.levels))]
    ee = study.methods["ee-confidence@q"]
    taus = list(dict.fromkeys(k[1] for k in ee.knobs))
    env = BestStatic({"schedule": StaticSchedule(caches, uniform),
                      "ee-schedule": ConfidenceSchedule(caches, taus, uniform)})
    single = study.methods["best-single"]
    env_table, single_table = _table(env), _table(single)
    for b in BUDGETS:
        (i, ok), (j, single_ok) = select_for_budget(*env_table, b), select_for_budget(*single_table, b)
        assert ok == single_ok
        level = env.describe(env.knobs[i])["entry"].split(":")[-1]
        assert level == single.describe(single.knobs[j])["entry"].split(":")[-1]
        for split in ("calib", "test"):
            np.testing.assert_array_equal(env.outcome(split, env.knobs[i]).node,
                                          single.outcome(split, single.knobs[j]).node)


def _table(method):
    out = [method.outcome("calib", k) for k in method.knobs]
    return np.array([o.mean_cost for o in out]), np.array([o.accuracy for o in out])


@pytest.fixture()
def mixed_wins():
    """Two levels, two blocks. Only the mixed schedule (reference, then cheap) is right at the last exit; the
    reference schedule is right too but over the budget; exit 1 and the cheap schedule are wrong."""
    tree = PathTree([parse_level("w16a16"), parse_level("w4a4")], depth=2, family="monotone")
    right = {(0,): 0, (1,): 0, (0, 0): 1, (0, 1): 1, (1, 1): 0}
    logits = torch.zeros(len(tree), 6, 2)
    for path, r in right.items():   # label 0; a confident answer at exit 2, a hesitant one at exit 1
        logits[tree.index[path], :, 0] = (1 if r else -1) * (3.0 if len(path) == 2 else 0.1)
    cost = np.array([0.4, 0.2, 1.0, 0.6, 0.4])
    cache = PathCache(tree, logits, torch.zeros(6, dtype=torch.int64), cost, cost)
    caches = {"calib": cache, "test": cache}
    single = BestSingle(StaticQuant(caches), ConfidenceExit(caches))
    taus = list(dict.fromkeys(k[1] for k in single.parts["ee"].knobs))
    env = BestStatic({"single": single, "schedule": StaticSchedule(caches),
                      "ee-schedule": ConfidenceSchedule(caches, taus)})
    return tree, single, env


def test_a_mixed_schedule_that_wins_is_picked(mixed_wins):
    tree, single, env = mixed_wins
    i, ok = select_for_budget(*_table(env), 0.7)
    knob = env.knobs[i]
    assert ok and knob[0] == "schedule" and knob[1] == (0, 1)        # the static schedule w16a16 > w4a4
    assert env.outcome("calib", knob).accuracy == 1.0
    j, sok = select_for_budget(*_table(single), 0.7)
    assert sok and single.outcome("calib", single.knobs[j]).accuracy == 0.0
    # under 0.6 the mixed schedule is out of reach, and best-static is best-single again
    i, _ = select_for_budget(*_table(env), 0.5)
    assert env.outcome("calib", env.knobs[i]).accuracy == 0.0


def test_precision_diversity_known_values():
    paths = [(0,), (1,), (0, 0), (0, 1), (1, 1), (0, 1, 1), (0, 0, 0)]
    lv = level_table(paths, 3)
    assert lv.tolist()[5] == [0, 1, 1] and lv.tolist()[0] == [0, -1, -1]
    # one schedule (0, 1, 1), exits at every depth: every block runs at one level -> 0
    assert precision_diversity(lv, np.array([0, 3, 5, 5, 3, 0])) == 0.0
    # 7 samples at (0, 0), 3 at (1, 1): block 1's modal level is 0, the 3 others differ
    assert precision_diversity(lv, np.array([2] * 7 + [4] * 3)) == pytest.approx(0.3)
    # block 1 all at 0; block 2 run by three, at 0, 1, 1: the one at 0 differs -> 1 of 4
    assert precision_diversity(lv, np.array([2, 3, 3, 0])) == pytest.approx(0.25)
    # a tie goes to the costlier level: (0,) vs (1,) -> the sample at 1 differs
    assert precision_diversity(lv, np.array([0, 1])) == pytest.approx(0.5)


def test_t_interval_by_hand():
    m, lo, hi = t_interval(np.array([1.0, 2.0, 3.0, 6.0]))
    half = 3.182446305284263 * np.sqrt(14 / 3) / 2        # t(0.975, 3) * sd / sqrt(4); sd^2 = (4+1+0+9)/3
    assert m == 3.0 and lo == pytest.approx(3 - half) and hi == pytest.approx(3 + half)
    m, lo, hi = t_interval(np.array([0.02]))
    assert m == 0.02 and np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="per_seed"):
        t_interval(np.zeros(0))


def test_verdict_needs_both_intervals_on_one_side():
    assert two_interval_verdict(0.01, 0.05, 0.002, 0.07) == "win"
    assert two_interval_verdict(-0.05, -0.01, -0.07, -0.002) == "loss"
    assert two_interval_verdict(0.006, 0.049, -0.024, 0.077) == "tie"     # the case at 0.03
    assert two_interval_verdict(-0.01, 0.02, 0.01, 0.03) == "tie"
    assert two_interval_verdict(0.01, 0.02, np.nan, np.nan) == "tie"      # one seed: no t-interval
    assert two_interval_verdict(0.01, 0.02, -0.03, -0.01) == "tie"        # opposite sides


def test_budget_tables_vs_best_static(study):
    budgets = [0.05, 0.1, 0.3]
    df, _ = budget_tables([study], budgets, n_boot=50, auc_range=(0.1, 1.0))
    seed, pooled = df[df.seed != "all"], df[df.seed == "all"]
    for b in budgets:
        ref = study.at_budget("best-static", b)[2].accuracy
        for _, r in seed[seed.budget == b].iterrows():
            assert r.diff_vs_best_static == pytest.approx(r.accuracy - ref)
            assert r.diff_lo_static <= r.diff_vs_best_static <= r.diff_hi_static
    # static methods run one level per block for every input; QuEE's choices vary somewhere
    static = ["static-quant", "ee-confidence@q", "best-single", "static-schedule", "ee-confidence-schedule",
              "best-static"]
    assert (seed[seed.method.isin(static)].precision_diversity == 0).all()
    assert (seed[seed.method == "oracle"].precision_diversity > 0).all()
    # one seed: no t-interval, so no win or loss
    assert pooled.diff_t_lo_static.isna().all() and (pooled.verdict_static == "tie").all()
    assert (pooled[pooled.method == "best-static"].diff_vs_best_static == 0).all()
    # the chosen schedule, by name, its first level the entry
    for _, r in seed[seed.method == "ee-confidence-schedule"].iterrows():
        knob = study.select("ee-confidence-schedule", r.budget)[0]
        assert r.schedule == schedule_name(study.prep.tree, knob[1]) and r.schedule.split(">")[0] == r.entry
