"""The hypotheses table (issue 29): its numbers are the budget table's and the calib rule's, and the
criterion applies issue 29's bar exactly."""
import numpy as np
import pandas as pd
import pytest

from quee_kit import hypotheses
from quee_kit.evaluate import budget_tables
from tests.conftest import STUDY_OVERRIDES


def test_criterion_known_values():
    gains = pd.DataFrame({"hypothesis": ["a", "a", "b", "c"], "budget": [0.03, 0.05, 0.03, 0.03],
                          "calib_gain": [1.5, 0.2, 2.0, 3.0], "diff": [1.2, 2.0, 1.5, 0.9],
                          "lo": [0.1, 0.5, 0.2, 0.1], "t_lo": [0.05, 0.4, -0.1, 0.2],
                          "precision_diversity": [0.25, 0.1, 0.5, 0.5]})
    rows = []
    for h, b, a1, a2 in [("a", 0.03, 0.71, 0.75), ("a", 0.05, 0.9, 0.9), ("b", 0.03, 0.8, 0.8), ("c", 0.03, 0.8, 0.8)]:
        rows += [{"hypothesis": h, "split": "test", "scope": f"visited@{b:g}", "depth": 1, "decision_hurt_auroc": a1},
                 {"hypothesis": h, "split": "test", "scope": f"visited@{b:g}", "depth": 2, "decision_hurt_auroc": a2},
                 {"hypothesis": h, "split": "test", "scope": "tree", "depth": 1, "decision_hurt_auroc": 0.1},
                 {"hypothesis": h, "split": "calib", "scope": f"visited@{b:g}", "depth": 1, "decision_hurt_auroc": 0.1}]
    out = hypotheses.criterion(gains, pd.DataFrame(rows)).set_index(["hypothesis", "budget"])
    assert out.loc[("a", 0.03), "met"]                                   # every condition holds
    assert out.loc[("a", 0.03), "visited_hurt_auroc_min"] == 0.71       # test, visited, depths 1-2 only
    assert not out.loc[("a", 0.05), "met"]                               # diversity 0.1 < 0.2
    assert not out.loc[("b", 0.03), "met"]                               # the t-interval reaches below 0
    assert not out.loc[("c", 0.03), "met"]                               # a gain under a point
    rows[0]["decision_hurt_auroc"] = np.nan                             # no decision visited there: fails
    assert not hypotheses.criterion(gains, pd.DataFrame(rows)).set_index(["hypothesis", "budget"]).loc[("a", 0.03), "met"]


def test_hypothesis_tables_are_the_budget_tables_numbers(study_cfg, study, monkeypatch):
    overrides = [f"cache_dir={study_cfg.cache_dir}", *STUDY_OVERRIDES]
    monkeypatch.setattr(hypotheses, "HYPOTHESES", {"digits": ("configs/digits.yaml", overrides, "quee", "test")})
    out = hypotheses.hypothesis_tables(seeds=(0,))
    gains = out["gains"].set_index("budget")
    budgets = study_cfg.eval.budgets
    table, _ = budget_tables([study], budgets, study_cfg.eval.bootstrap, study_cfg.eval.auc_range)
    pooled = table[(table.seed == "all") & (table.method == "quee")].set_index("budget")
    for b in budgets:
        g = gains.loc[b]
        assert g["diff"] == pytest.approx(100 * pooled.loc[b, "diff_vs_best_static"])
        calib = {m: study.at_budget(m, b, "calib")[2].accuracy for m in ("quee", "best-static")}
        assert g.calib_gain == pytest.approx(100 * (calib["quee"] - calib["best-static"]))
        assert np.isnan(g.t_lo) and g.verdict == "tie"                  # one seed: no t-interval, no verdict
    room = out["room"]
    assert set(room.depth) <= set(range(1, study_cfg.model.depth))      # decisions only before the last exit
    visited = room[room.scope.str.startswith("visited@")]
    assert {f"visited@{b:g}" for b in budgets} == set(visited.scope)
    with pytest.raises(ValueError, match="hypotheses must be among"):
        hypotheses.hypothesis_tables(["nope"])


@pytest.mark.usefixtures("plot_theme")
def test_hypotheses_plot_draws_the_numbers_given():
    budgets = [0.03, 0.05]
    gains = pd.DataFrame([{"hypothesis": h, "budget": b, "calib_gain": g + b, "diff": g, "lo": g - 1, "hi": g + 1}
                          for h, g in (("x", 0.5), ("y", -1.0)) for b in budgets])
    room = pd.DataFrame([{"hypothesis": h, "split": "test", "scope": s, "depth": d, "decision_hurt_auroc": a + 0.01 * d}
                         for h, a in (("x", 0.6), ("y", 0.55)) for s in ("tree", "visited@0.03") for d in (1, 2)])
    fig = hypotheses.hypotheses_plot(gains, room)
    ax, bx, cx = fig.axes[:3]
    for a in (ax, bx, cx):
        assert a.get_xlabel() and a.get_ylabel()
    lines = [l for l in ax.get_lines() if not l.get_label().startswith("_")]
    assert [l.get_label() for l in lines] == ["x", "y"]
    assert np.asarray(lines[0].get_ydata(), float) == pytest.approx([0.53, 0.55])
    assert [float(c.lines[0].get_ydata()[0]) for c in bx.containers] == pytest.approx([0.5, -1.0])
    tree = [l for l in cx.get_lines() if l.get_marker() == "s"]
    assert np.asarray(tree[0].get_ydata(), float) == pytest.approx([0.61, 0.62])
