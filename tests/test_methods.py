"""The method protocol: a new baseline is one class in one file (here, this test file), and the study,
its points and tables, and the explorer (level restriction included) take it up without another edit."""
import numpy as np
import pytest

from quee_kit.evaluate import budget_tables, curves_table, knob_value
from quee_kit.explorer import build_explorer_data
from quee_kit.methods import METHODS, Method, MethodContext, build_methods, make_outcome, register_method
from quee_kit.study import method_points
from quee_kit.study_run import run_study


class FixedExit(Method):
    """Every block at the entry level, exit at a fixed exit ``m`` (1-based). Knob: (entry level index, m)."""

    knob_fields = ("entry", "m")

    def __init__(self, caches, name="fixed-exit"):
        self.name, self.caches = name, caches
        self.tree = next(iter(caches.values())).tree
        self.knobs = [(q, m) for q in range(len(self.tree.levels)) for m in range(1, self.tree.L + 1)]

    @classmethod
    def build(cls, ctx: MethodContext, name: str) -> "FixedExit":
        return cls(ctx.caches, name)

    def outcome(self, split, knob):
        c = self.caches[split]
        q, m = knob
        node = c.node((q,) * m)
        return make_outcome(c, np.full(c.n_samples, node), np.full(c.n_samples, c.node_cost[node]))


@pytest.fixture()
def fixed_exit():
    register_method("fixed-exit")(FixedExit)
    yield FixedExit
    METHODS.pop("fixed-exit")   # the registry is global: leave it as the other tests expect it


def test_registry_order_is_the_study_order(study):
    assert list(study.methods)[-len(METHODS):] == list(METHODS)
    with pytest.raises(ValueError, match="already registered"):
        register_method("oracle")(FixedExit)


def test_every_method_describes_its_knobs_by_name(study):
    for name, m in study.methods.items():
        d = m.describe(m.knobs[-1])
        assert "entry" in d and set(d) - {"entry"} <= set(m.knob_fields), name
        assert list(study.points[name].columns[:len(d)]) == list(d), name


def test_a_new_baseline_is_one_class(study_cfg, digits_prep, fixed_exit):
    study = run_study(study_cfg, progress=False, prep=digits_prep, variants={"quee": ({}, "all")})
    m = study.methods["fixed-exit"]
    assert isinstance(m, FixedExit) and list(study.methods)[-1] == "fixed-exit"
    # its points: named knob fields, and the static-quant numbers at the last exit
    p = study.points["fixed-exit"]
    assert list(p.columns[:2]) == ["entry", "m"] and (p.entry == [lv.name for lv in study.prep.levels
                                                                  for _ in range(study.prep.tree.L)]).all()
    last = p[p.m == study.prep.tree.L]
    np.testing.assert_array_equal(last.acc_test, study.points["static-quant"].acc_test)
    # the tables: its continuous knob is m (the csv column `lambda` carries it)
    budgets, _ = budget_tables([study], [0.5], n_boot=50, auc_range=(0.1, 1.0))
    row = budgets[(budgets.method == "fixed-exit") & (budgets.seed != "all")].iloc[0]
    assert row["lambda"] == knob_value(m, m.describe(study.select("fixed-exit", 0.5)[0]))
    assert "fixed-exit" in set(curves_table([study]).method)
    # the explorer: its table, and a level subset through the method's own restrict
    data = build_explorer_data(study, fast=False, config="configs/digits.yaml")
    assert data.methods["fixed-exit"].knob_name == "m" and not data.methods["fixed-exit"].has_lambda
    sub = data.table("fixed-exit", (0,))
    assert {k[0] for k in sub.knobs} == {0}
    np.testing.assert_array_equal(sub.points.acc_test, p.acc_test[:study.prep.tree.L])


def test_restrict_keeps_numbers_inside_the_set(study):
    """Restricting to every level changes nothing; a subset only runs blocks at its levels."""
    every = tuple(range(len(study.prep.levels)))
    cols = ["cost_calib", "acc_calib", "cost_test", "acc_test"]
    for name, m in study.methods.items():
        np.testing.assert_array_equal(method_points(m.restrict(every))[cols].to_numpy(),
                                      study.points[name][cols].to_numpy(), err_msg=name)
        r = m.restrict((0, 1))
        for knob in r.knobs[:: max(1, len(r.knobs) // 5)]:
            nodes = np.unique(r.outcome("test", knob).node)
            assert {q for n in nodes for q in study.prep.tree.paths[n]} <= {0, 1}, (name, knob)


def test_build_methods_by_name(study):
    ctx = MethodContext(study.prep.caches, study.opts, np.array([0.0, 1.0]), seed=0)
    built = build_methods(ctx, ["static-quant", "ee-confidence@q", "best-single"])
    assert list(built) == ["static-quant", "ee-confidence@q", "best-single"]
    assert built["best-single"].parts["static"] is built["static-quant"]
