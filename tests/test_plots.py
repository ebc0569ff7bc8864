"""Figure functions: labelled axes with units, both file formats written, known table values."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from quee_kit import plots
from quee_kit.config import ModelConfig
from quee_kit.costs import CostModel
from quee_kit.models import build_model
from quee_kit.paths import PathTree
from quee_kit.quant import sorted_levels

LEVELS = sorted_levels(["w16a16", "w8a8", "w4a8", "w3a8", "w4a4"])
COST_UNITS = "normalized BOPs"


@pytest.fixture(scope="module")
def costs():
    model = build_model(ModelConfig(), (1, 28, 28), 10)
    return CostModel(model, (1, 28, 28), LEVELS, LEVELS[0])


@pytest.fixture(scope="module")
def exits_df():
    rng = np.random.default_rng(0)
    rows = [{"level": lv, "exit": t, "split": s, "accuracy": rng.uniform(0.5, 1.0), "cost": t / 3 * f}
            for lv, f in (("w16a16", 1.0), ("w4a4", 0.1)) for s in ("calib", "test") for t in (1, 2, 3)]
    return pd.DataFrame(rows)


pytestmark = pytest.mark.usefixtures("plot_theme")


def _labels(fig):
    ax = fig.axes[0]  # the main axes (a heatmap's colorbar comes after it)
    return ax.get_xlabel(), ax.get_ylabel()


def test_figures_have_labelled_axes_with_units(exits_df, costs):
    prep = SimpleNamespace(tree=PathTree(LEVELS, 6, "monotone"), costs=costs)
    figs = {"exit_accuracy": plots.exit_accuracy_plot(exits_df), "heatmap": plots.quant_heatmap(exits_df),
            "cost_bar": plots.cost_bar_plot(costs), "path_cost_hist": plots.path_cost_hist(prep)}
    for name, fig in figs.items():
        x, y = _labels(fig)
        assert x and y, name
    assert "accuracy" in _labels(figs["exit_accuracy"])[1]
    assert "exit" in _labels(figs["heatmap"])[0] and "bits" in _labels(figs["heatmap"])[1]
    assert COST_UNITS in _labels(figs["cost_bar"])[0] and COST_UNITS in _labels(figs["path_cost_hist"])[0]
    assert "461 paths" in figs["path_cost_hist"].axes[0].get_title()


def test_save_figure_writes_png_and_pdf(tmp_path, exits_df):
    paths = plots.save_figure(plots.exit_accuracy_plot(exits_df), tmp_path / "figs", "acc")
    assert [p.name for p in paths] == ["acc.png", "acc.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["acc.pdf", "acc.png"]  # no temp files left
    table = plots.save_table(exits_df, tmp_path / "tables", "exits")
    assert len(pd.read_csv(table)) == len(exits_df)


def test_cost_table_and_bars_add_up(costs):
    t = plots.cost_table(costs)
    assert t.loc["full model", "w16a16"] == pytest.approx(1.0, abs=1e-12)
    assert t.loc["stem"].drop("MACs").nunique() == 1  # the stem runs in float at every level
    assert list(t.loc["full model"].drop("MACs")) == sorted(t.loc["full model"].drop("MACs"), reverse=True)
    bars = plots.cost_bar_plot(costs).axes[0].patches
    ref_width = sum(p.get_width() for p in bars if abs(p.get_y() + p.get_height() / 2) < 1e-9)  # row 0
    assert ref_width == pytest.approx(1.0, abs=1e-9)


def test_tree_sizes_and_flop_check(costs):
    sizes = plots.tree_size_table(LEVELS, 6).set_index("family").nodes
    assert sizes.to_dict() == {"monotone": 461, "free": 19530, "uniform": 30}
    check = plots.flop_check_table(build_model(ModelConfig(), (1, 28, 28), 10), (1, 28, 28))
    assert len(check) == 1 + 2 * 6 and check.match.all()
