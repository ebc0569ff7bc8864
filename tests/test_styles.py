"""One colour and marker per method, by name, everywhere: the map covers every method the study
builds, no two methods look alike, and figures and the explorer take a method's style from its name
whatever the order of the methods they are given."""
import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from quee_kit import plots
from quee_kit.methods import METHODS
from quee_kit.study import ALL_VARIANTS  # importing the study registers every baseline
from quee_kit.styles import METHOD_STYLES, method_style, setting_label

BASELINES = sorted(METHODS)          # every registered baseline and bound, by the name run_study gives it


def _lab(color) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour."""
    rgb = np.array(to_rgb(color))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_method_has_a_distinct_style():
    names = [*ALL_VARIANTS, *BASELINES]
    assert set(names) <= set(METHOD_STYLES)
    for a, b in itertools.combinations(names, 2):
        de = float(np.linalg.norm(_lab(method_style(a)["color"]) - _lab(method_style(b)["color"])))
        assert de >= 20, f"{a} and {b} look alike (ΔE {de:.1f})"
    assert len({method_style(m)["marker"] for m in names}) == len(names)
    assert method_style("oracle")["ls"] == "--" and method_style("quee")["ls"] == "-"
    assert plots.METHOD_STYLES is METHOD_STYLES          # one map, reachable from plots


@pytest.mark.usefixtures("plot_theme")
def test_figures_colour_by_name_not_order():
    """The same method gets the same colour in two figures that list methods in different orders."""
    df = pd.DataFrame({"group": [1, 2], "n": 10, "maxprob_lo": [0.5, 0.1], "maxprob_hi": [1.0, 0.5],
                       "accuracy_method": [0.9, 0.8], "accuracy_best_single": [0.9, 0.7], "mean_cost_method": 0.05,
                       "mean_cost_best_single": 0.05, "budget": 0.05})
    colours = []
    for order in (["quee", "oracle"], ["oracle", "quee"]):
        fig = plots.difficulty_plot(pd.concat([df.assign(method=m) for m in order]))
        colours.append({l.get_label(): to_rgb(l.get_color()) for l in fig.axes[0].get_lines()})
    assert colours[0] == colours[1]
    assert colours[0]["quee"] == to_rgb(METHOD_STYLES["quee"]["color"])


def test_setting_label_names_the_study():
    assert setting_label(True, [0], 600, 3000) == "fast setting, seed 0, train N=3,000, test N=600"
    assert setting_label(False, [0, 1, 2], 2000) == "full setting, seeds 0,1,2, test N=2,000"


def test_level_colours_are_never_a_method_colour():
    """Levels (01's exit-accuracy lines) take colours from their own palette: none near a method's
    (w3a8 must not look like quee, w16a16 like static-quant), and the levels apart from each other."""
    from quee_kit.styles import LEVEL_COLORS, level_palette
    for lc in LEVEL_COLORS:
        for m in [*METHOD_STYLES, "other"]:
            de = float(np.linalg.norm(_lab(lc) - _lab(method_style(m)["color"])))
            assert de >= 15, f"level colour {lc} looks like {m}'s (ΔE {de:.1f})"
    for a, b in itertools.combinations(LEVEL_COLORS, 2):
        assert float(np.linalg.norm(_lab(a) - _lab(b))) >= 30, (a, b)
    levels = ["w16a16", "w8a8", "w4a8", "w3a8", "w4a4"]
    assert list(level_palette(levels).values()) == LEVEL_COLORS[:5]


@pytest.mark.usefixtures("plot_theme")
def test_exit_accuracy_plot_uses_level_colours():
    from quee_kit.styles import level_palette
    levels = ["w16a16", "w8a8", "w3a8"]
    df = pd.DataFrame([{"exit": t, "level": lv, "split": s, "accuracy": 0.5 + 0.1 * t}
                       for lv in levels for s in ("calib", "test") for t in (1, 2, 3)])
    fig = plots.exit_accuracy_plot(df)
    drawn = {l.get_label(): to_rgb(l.get_color()) for l in fig.axes[0].get_legend().get_lines()}
    for lv, c in level_palette(levels).items():
        assert drawn[lv] == to_rgb(c)
