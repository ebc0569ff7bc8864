"""The CLI contract (SPEC §3): files, columns, and the promises they carry, on the digits config."""
import json

import pandas as pd
import pytest

from quee_kit.cli import main

FAST = ["model.epochs=15", "predictor.folds=3", "predictor.epochs=10", "eval.lambda_grid=30",
        "eval.bootstrap=200", "eval.budgets=[0.04,0.08,0.2]", "eval.auc_range=[0.04,0.3]"]


def _sets(tmp_path):
    out = []
    for s in [f"cache_dir={tmp_path / 'cache'}", *FAST]:
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    assert main(["run", "--config", "configs/digits.yaml", *_sets(tmp), "--seeds", "0,1", "--quiet",
                 "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def test_cache_command(tmp_path):
    assert main(["cache", "--config", "configs/digits.yaml", *_sets(tmp_path), "--quiet",
                 "--out", str(tmp_path / "c")]) == 0
    ex = pd.read_csv(tmp_path / "c" / "exits.csv")
    assert list(ex.columns) == ["level", "exit", "split", "accuracy", "cost"]
    assert set(ex.split) == {"calib", "test"} and len(ex) == 2 * 5 * 4
    ref_last = ex[(ex.level == "w16a16") & (ex.exit == 4)].cost
    assert (ref_last == 1.0).all()
    stats = json.loads((tmp_path / "c" / "cache_stats.json").read_text())
    assert stats["tree_nodes"] == 125 and stats["build_seconds"] > 0 and stats["peak_memory_mb"] > 0


def test_run_outputs(run_dir):
    curves = pd.read_csv(run_dir / "curves.csv")
    assert {"method", "param", "split", "cost", "accuracy"} <= set(curves.columns)
    budgets = pd.read_csv(run_dir / "budgets.csv")
    assert {"method", "budget", "split", "entry", "lambda", "cost", "accuracy", "diff_vs_best_single",
            "diff_lo", "diff_hi"} <= set(budgets.columns)
    assert set(budgets.seed.astype(str)) == {"0", "1", "all"}
    # the paired interval brackets its mean; best-single against itself is exactly zero
    assert (budgets.diff_lo <= budgets.diff_vs_best_single + 1e-12).all()
    assert (budgets.diff_vs_best_single <= budgets.diff_hi + 1e-12).all()
    bs = budgets[budgets.method == "best-single"]
    assert (bs.diff_vs_best_single == 0).all() and (bs.diff_lo == 0).all()
    s = json.loads((run_dir / "summary.json").read_text())
    for key in ["reference_accuracy", "c_min", "c_sat", "auc", "oracle_gap_share", "seeds", "timings", "predictors"]:
        assert key in s
    assert s["seeds"] == [0, 1]
    assert all(s["c_min"][i] < s["c_sat"][i] <= 1.0 for i in range(2))
    auc = {k: v["mean"] for k, v in s["auc"].items()}
    assert auc["oracle"] >= max(v for k, v in auc.items() if k != "oracle")
    assert s["oracle_gap_share"]["oracle"] == pytest.approx(1.0)
    assert s["oracle_gap_share"]["best-single"] == pytest.approx(0.0)


def test_same_config_and_seed_give_same_numbers(run_dir, tmp_path):
    # a second run reuses the cached artifacts and must report identical numbers
    out2 = tmp_path / "again"
    assert main(["run", "--config", "configs/digits.yaml", *_sets(run_dir.parent), "--seeds", "0,1", "--quiet",
                 "--out", str(out2)]) == 0
    a, b = pd.read_csv(run_dir / "budgets.csv"), pd.read_csv(out2 / "budgets.csv")
    pd.testing.assert_frame_equal(a, b)
