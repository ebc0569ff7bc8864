"""The CLI contract (README, "Two commands" and "What the kit computes"): files, columns, and the promises they carry, on the digits config."""
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
    # the headline comparison: best-static, with the t-interval over the two seeds centred on the pooled mean
    pooled = budgets[budgets.seed.astype(str) == "all"]
    assert (pooled.diff_t_lo_static < pooled.diff_t_hi_static).any()
    centre = (pooled.diff_t_lo_static + pooled.diff_t_hi_static) / 2
    assert (centre - pooled.diff_vs_best_static).abs().max() < 1e-6
    assert set(pooled.verdict_static) <= {"win", "loss", "tie"}
    assert [r["budget"] for r in s["vs_best_static"]["quee"]] == [0.04, 0.08, 0.2]
    assert s["seeds"] == [0, 1]
    assert all(s["c_min"][i] < s["c_sat"][i] <= 1.0 for i in range(2))
    auc = {k: v["mean"] for k, v in s["auc"].items()}
    assert auc["oracle"] >= max(v for k, v in auc.items() if k != "oracle" and v is not None)
    # a method that cannot meet some budget of the range has no AUC and no share: null, not 0 (JSON has no NaN)
    assert auc["ee-confidence"] is None and s["oracle_gap_share"]["ee-confidence"] is None
    assert all((v is None) == (s["oracle_gap_share"][k] is None) for k, v in auc.items())
    assert s["oracle_gap_share"]["oracle"] == pytest.approx(1.0)
    assert s["oracle_gap_share"]["best-single"] == pytest.approx(0.0)


def test_run_writes_the_room_for_per_input_precision(run_dir):
    rows = pd.read_csv(run_dir / "room.csv")
    assert {"seed", "split", "exit", "dependent", "hurt", "help", "flip_rate", "flip_auroc", "hurt_auroc",
            "oracle_uniform_gap", "scope", "decision_dependent", "decision_hurt_auroc"} <= set(rows.columns)
    room, visited = rows[rows.scope == "tree"], rows[rows.scope != "tree"]
    assert len(room) == 2 * 2 * 4                       # seeds x splits x exits (digits: 4 blocks)
    assert len(visited) == 2 * 2 * 3 * 3                # seeds x splits x budgets x decision depths
    assert set(visited.scope) == {"visited@0.04", "visited@0.08", "visited@0.2"}
    # a visited decision is one of the tree's decisions at that depth
    tree_decisions = room.set_index(["seed", "split", "exit"]).decisions
    assert (visited.decisions.to_numpy() <= tree_decisions.loc[list(zip(visited.seed, visited.split,
                                                                        visited.exit))].to_numpy()).all()
    # a sample that a cheaper level hurts or helps has level-dependent correctness, never the other way round
    assert (room.hurt <= room.dependent + 1e-12).all() and (room.help <= room.dependent + 1e-12).all()
    assert room[["dependent", "flip_rate"]].stack().between(0, 1).all()
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s["room"]) == {"calib", "test"}
    last = room[(room.split == "test") & (room.exit == 4)].dependent.mean()   # room.csv keeps 6 significant digits
    assert s["room"]["test"]["dependent_share_last"] == pytest.approx(last, rel=1e-5)


def test_same_config_and_seed_give_same_numbers(run_dir, tmp_path):
    # a second run reuses the cached artifacts and must report identical numbers
    out2 = tmp_path / "again"
    assert main(["run", "--config", "configs/digits.yaml", *_sets(run_dir.parent), "--seeds", "0,1", "--quiet",
                 "--out", str(out2)]) == 0
    a, b = pd.read_csv(run_dir / "budgets.csv"), pd.read_csv(out2 / "budgets.csv")
    pd.testing.assert_frame_equal(a, b)


def _npz(path, **arrays):
    import numpy as np
    np.savez(path, **arrays)
    return f"data.name=npz:{path}"


def _user_error_cases(tmp_path):
    """(id, extra CLI args, text the one-line message must contain) for every kind of user error."""
    import numpy as np
    x, y = np.zeros((300, 28, 28), np.uint8), np.zeros(300, np.int64)
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("model:\n  depth: [1, 2\n")
    as_file = tmp_path / "a_file"
    as_file.write_text("")
    nan = x.astype(np.float32)
    nan[0, 0, 0] = np.nan
    return [
        ("npz-no-labels", ["--set", _npz(tmp_path / "a.npz", x=x)], "missing key 'y'"),
        ("npz-rank-1", ["--set", _npz(tmp_path / "b.npz", x=np.zeros(300), y=y)], "x must have rank 3"),
        ("npz-nan", ["--set", _npz(tmp_path / "c.npz", x=nan, y=y)], "NaN"),
        ("npz-299-labels", ["--set", _npz(tmp_path / "d.npz", x=x, y=y[:299])], "x has 300 samples but y has 299"),
        ("npz-missing", ["--set", f"data.name=npz:{tmp_path / 'nowhere.npz'}"], "npz file not found"),
        ("unknown-dataset", ["--set", "data.name=imagenet22k"], "unknown dataset"),
        ("broken-yaml", ["--config", str(bad_yaml)], "is not valid YAML at line 3"),
        ("broken-set-yaml", ["--set", "quant.levels=[w8a8"], "--set quant.levels is not valid YAML"),
        ("missing-config", ["--config", str(tmp_path / "nope.yaml")], "file not found"),
        ("unknown-key", ["--set", "model.depht=3"], "unknown key 'model.depht'"),
        ("out-is-a-file", ["--out", str(as_file / "sub")], "a_file"),
    ]


@pytest.mark.parametrize("command", ["cache", "run"])
def test_user_errors_are_one_line_before_compute(tmp_path, capsys, command):
    for case, extra, needle in _user_error_cases(tmp_path):
        cache = tmp_path / f"cache-{case}"
        argv = [command, "--config", "configs/digits.yaml", "--set", f"cache_dir={cache}", "--quiet",
                "--out", str(tmp_path / "o"), *extra]
        assert main(argv) == 2, case
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("quee-kit: ") and needle in err, (case, err)
        assert "Traceback" not in err
        assert not cache.exists() or not any(cache.iterdir()), case  # nothing trained or cached


def test_console_script_error_has_no_traceback_and_debug_shows_one(tmp_path):
    import subprocess
    import sys
    import numpy as np
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((50, 28, 28)))
    argv = [sys.executable, "-m", "quee_kit", "run", "--set", f"data.name=npz:{tmp_path / 'nolabels.npz'}",
            "--out", str(tmp_path / "o")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "missing key 'y'" in r.stderr
    r = subprocess.run(argv + ["--debug"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "DataError" in r.stderr
