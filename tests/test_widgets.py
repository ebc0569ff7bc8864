"""Budget explorer: the numbers it shows are the library's (budget rule, simulate, oracle), every
control is derived from one operating point (no dead or disagreeing controls), the star is the
method's colour (hollow when infeasible), the stored points load without torch, and a level set is
never left. No timing asserts (the update time is measured by benchmarks/bench_widgets.py)."""
import dataclasses
import io
import re
import subprocess
import sys

import numpy as np
import pytest

from quee_kit.artifacts import ArtifactError, save_artifact
from quee_kit.config import load_config
from quee_kit.methods import scalar_knob
from quee_kit.study import method_points
from quee_kit.explorer import ExplorerModel, OperatingPoint, build_explorer_data, load_explorer_data
from quee_kit.explorer.points import explorer_artifact
from quee_kit.explorer.state import (chosen_points, examples_per_exit, exit_errors, exit_level_counts,
                                     level_set_presets)
from quee_kit.plots import method_style
from quee_kit.policy import simulate

pytest.importorskip("ipywidgets")
from quee_kit.explorer.widgets import BudgetExplorer  # noqa: E402

METHODS = ["quee", "quee-exit-only", "quee-quant-only", "static-quant", "ee-confidence", "ee-confidence@q",
           "ee-confidence-perexit", "best-single", "best-static", "random", "oracle", "oracle-uniform"]
OVERRIDES = ["model.epochs=15", "predictor.folds=3", "predictor.epochs=15", "eval.lambda_grid=40"]


@pytest.fixture(scope="session")
def data(study, digits_cfg):
    return build_explorer_data(study, fast=False, config="configs/digits.yaml",
                               overrides=[f"cache_dir={digits_cfg.cache_dir}", *OVERRIDES])


@pytest.fixture(scope="session")
def explorer(data):
    return BudgetExplorer(data, example_count=4)


def _budgets(explorer):
    """From the slider's minimum (c_min) to its maximum, through the trade-off region."""
    lo, hi = explorer.model.b_min, explorer.model.b_max
    return [lo, *np.geomspace(lo, hi, 6)[1:-1].tolist(), hi]


@pytest.mark.parametrize("method", METHODS)
def test_budget_mode_equals_at_budget(study, explorer, method):
    for b in _budgets(explorer):
        r = explorer.update(budget=b, method=method, level_set=next(iter(explorer.model.level_sets)))
        knob, ok, out = study.at_budget(method, r["budget"])
        desc = study.methods[method].describe(knob)
        assert r["budget"] == pytest.approx(b) and r["mode"] == "budget" and r["method"] == method
        assert r["knob"] == knob and r["feasible"] == ok and r["entry"] == desc["entry"]
        assert r["accuracy"] == out.accuracy and r["cost"] == out.mean_cost
        np.testing.assert_array_equal(r["node"], out.node)
        name = scalar_knob(study.methods[method])
        assert r["knob_name"] == name
        np.testing.assert_equal(r["knob_value"], float(desc[name]) if name in desc else np.nan)
        html = explorer.readout.value     # the readout text the browser test reads
        assert f"accuracy: {out.accuracy:.4f}" in html and f"cost: {out.mean_cost:.4f}" in html


def test_slider_range_starts_at_c_min(explorer, data):
    assert 10 ** explorer.budget_slider.min == pytest.approx(data.c_min, rel=1e-9)
    assert explorer.model.b_min == data.c_min and explorer.model.b_max > data.c_min
    r = explorer.update(budget=data.c_min / 3, method="quee")       # below the slider: clipped to c_min
    assert r["budget"] == data.c_min


def test_page_and_library_agree_at_the_slider_maximum(explorer, data):
    """The page's slider ends at 10 ** max of its log grid, a little above the model's cap; a model built
    apart from the page (as the browser test builds one) must clip that budget to the same maximum and so
    pick the same knob (it once clipped it back to the cap: ``random`` at 0.3016 showed 0.8533 where the
    library said 0.8450). Budgets as the browser sends them: 10 ** the slider's value."""
    apart = ExplorerModel(data)
    assert apart.budget_range == explorer.model.budget_range and apart.b_max == explorer.model.b_max
    lo, hi, step = apart.budget_range
    assert 10 ** lo == pytest.approx(data.c_min) and 10 ** hi == apart.b_max
    assert np.log10(0.05) == pytest.approx(lo + step * round((np.log10(0.05) - lo) / step), abs=1e-12)  # on the grid
    level_set = next(iter(apart.level_sets))
    for method in explorer.names:
        for b in (10 ** explorer.budget_slider.max, 10 ** (explorer.budget_slider.max - step)):
            shown = explorer.update(budget=b, method=method, level_set=level_set)
            v = apart.resolve(OperatingPoint(budget=shown["budget"], method=method, level_set=level_set))
            assert v["budget"] == shown["budget"] and v["knob"] == shown["knob"], method
            assert (v["accuracy"], v["cost"]) == (shown["accuracy"], shown["cost"])


def test_one_cost_axis_for_every_method(explorer, data):
    """Switching methods never rescales the cost axis: it is the study's [c_min, costliest knob]."""
    level_set = next(iter(explorer.model.level_sets))
    xlims = set()
    for method in explorer.names:
        explorer.update(method=method, level_set=level_set, budget=0.05)
        xlims.add(tuple(round(x, 12) for x in explorer.figure.ax_curve.get_xlim()))
    assert len(xlims) == 1
    (x0, x1), = xlims
    costs = np.concatenate([data.methods[m].points["cost_test"].to_numpy() for m in explorer.names])
    assert x0 < data.c_min <= costs.min() and costs.max() < x1


def test_figure_is_sharp_on_hidpi_and_fits_a_small_screen(explorer):
    """The PNG has 2 image pixels per CSS pixel, and its CSS width fits a 1366 px screen's page."""
    from PIL import Image

    from quee_kit.explorer.figure import SCALE
    w, h = Image.open(io.BytesIO(explorer.image.value)).size
    css_w = int(explorer.image.layout.width.removesuffix("px"))
    assert SCALE == 2 and w == SCALE * css_w and css_w <= 1300 and explorer.image.layout.max_width == "100%"


def test_page_says_what_it_built_and_offers_stored_studies(data, tmp_path):
    """The page builds missing points (their messages go to its log, cleared when done: checked in the
    browser test, which has a kernel) and says how long it took; its study control offers exactly the
    settings whose points are stored (a control, not a code hint)."""
    from quee_kit.explorer.page import ExplorerPage
    over = [f"cache_dir={tmp_path}", *OVERRIDES]

    def where(fast):
        return explorer_artifact(load_config("configs/digits.yaml", [*over, "seed=0"], fast=fast))
    fast_data = dataclasses.replace(data, fast=True, setting=data.setting.replace("full", "fast"))
    save_artifact(*where(True), fast_data.to_payload())
    page = ExplorerPage()
    assert "quee-loading" in page.status._dom_classes
    page.open("configs/digits.yaml", fast=None, overrides=over)
    assert "quee-loaded" in page.status._dom_classes and "quee-loading" not in page.status._dom_classes
    assert fast_data.setting in page.status.value and "Built in" not in page.status.value
    assert "python -m quee_kit.explorer" in page.status.value and "fast = False" not in page.status.value
    assert page.study.layout.display == "none" and page.study.disabled      # one study stored: no choice
    assert page.body.children == (page.explorer.widget,)
    save_artifact(*where(False), data.to_payload())                        # now both are stored
    page = ExplorerPage()
    page.open("configs/digits.yaml", fast=True, overrides=over)
    assert page.study.options == (("full", False), ("fast", True)) and not page.study.disabled
    page.explorer.update(method="oracle")
    page.study.value = False                                                  # the control, not code
    assert page.explorer.data.fast is False and page.explorer.state.method == "oracle"
    assert page.body.children == (page.explorer.widget,) and page.study.value is False
    where(True)[0].unlink()                                                   # a first visit: builds
    built = []

    def fake_build(config, fast=None, seed=0, overrides=(), build=True, progress=True):
        if not build:
            raise ArtifactError("not stored")
        print("building the explorer data …")
        built.append(fast)
        return fast_data
    import quee_kit.explorer.page as page_module
    real, page_module.load_explorer_data = page_module.load_explorer_data, fake_build
    try:
        page = ExplorerPage()
        page.open("configs/digits.yaml", fast=True, overrides=over)
    finally:
        page_module.load_explorer_data = real
    assert built == [True] and "Built in" in page.status.value and fast_data.setting in page.status.value


def test_lambda_mode_equals_simulate(study, explorer, data):
    opts, cache = study.opts, study.prep.caches["test"]
    grid = data.lambdas
    for name in ("quee", "quee-quant-only"):
        m = study.methods[name]
        for q, level in enumerate(study.prep.tree.levels):
            for lam in (grid[0], grid[5], grid[len(grid) // 2], grid[-1]):
                r = explorer.update(lam=lam, entry=level.name, method=name, level_set=(0, 1, 2, 3, 4))
                ref = simulate(study.predictors[name]["test"], cache, opts, lam, q, m.mask, m.call_cost)
                assert r["mode"] == "lambda" and r["entry"] == level.name and r["lambda"] == lam
                assert r["accuracy"] == ref.accuracy and r["cost"] == ref.mean_cost
                np.testing.assert_array_equal(r["node"], ref.node)
    # λ between grid points snaps to the nearest one (log scale); entering λ mode keeps the operating point
    assert explorer.model.snap_lambda(grid[7] * 1.01) == grid[7]
    r = explorer.update(budget=_budgets(explorer)[2], method="quee")
    r2 = explorer.update(mode="lambda")
    assert (r2["knob"], r2["accuracy"], r2["cost"]) == (r["knob"], r["accuracy"], r["cost"])


def test_methods_without_lambda_have_no_dead_controls(study, explorer):
    r = explorer.update(lam=0.01, method="oracle")
    out = study.methods["oracle"].outcome("test", r["knob"])
    assert r["accuracy"] == out.accuracy and r["cost"] == out.mean_cost
    assert explorer.entry_dropdown.disabled and not explorer.lambda_slider.disabled   # oracle: λ, no entry
    r = explorer.update(method="best-single")          # in λ mode: a method without λ shows budget mode
    assert r["mode"] == "budget" and explorer.mode_toggle.disabled
    assert explorer.lambda_slider.disabled and explorer.entry_dropdown.disabled and not explorer.budget_slider.disabled
    assert explorer.entry_dropdown.value == r["entry"]              # e.g. "ee:w4a4", as the readout says
    assert r["accuracy"] == study.at_budget("best-single", r["budget"])[2].accuracy
    with pytest.raises(ValueError, match="lambda"):
        explorer.model.snap_lambda(-1.0)
    with pytest.raises(ValueError, match="method"):
        explorer.update(method="no-such-method")


def _star_rgb(explorer):
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(explorer.image.value)).convert("RGB"))
    x, y = explorer.figure.star_pixel()
    return img[int(round(y)), int(round(x))]


def test_every_mode_and_method_agree(explorer, data):
    """The browser test's walk, without a browser: λ mode x every method x back to budget mode."""
    from matplotlib.colors import to_rgb
    explorer.update(budget=_budgets(explorer)[2], method="quee", level_set=next(iter(explorer.model.level_sets)))
    for mode in ("lambda", "budget"):
        for name in explorer.names:
            explorer.method_dropdown.value = name
            explorer.mode_toggle.value = mode if not explorer.mode_toggle.disabled else "budget"
            v, s = explorer.view(), explorer.state
            assert explorer.method_dropdown.value == name == v["method"]
            assert explorer.mode_toggle.value == s.mode == v["mode"]
            assert s.mode == (mode if v["has_lambda"] else "budget")
            assert explorer.entry_dropdown.value == v["entry"] and f'data-entry="{v["entry"]}"' in explorer.readout.value
            assert explorer.entry_dropdown.disabled == (not (s.mode == "lambda" and v["has_entry"]))
            assert explorer.budget_slider.disabled == (s.mode == "lambda")
            assert explorer.lambda_slider.disabled == (s.mode == "budget")
            text = re.sub("<[^>]+>", "", explorer.readout.value)
            assert text.count("λ:") == int(v["has_lambda"]) and text.count("entry:") == 1   # said once
            assert data.setting in explorer.readout.value
            want = np.array(to_rgb(method_style(name)["color"])) * 255
            got = _star_rgb(explorer)
            if v["feasible"] is False:             # hollow: white centre
                assert (got > 240).all(), (name, got)
            else:
                assert np.abs(got - want).max() <= 3, (name, got, want)


def test_infeasible_point_looks_different(explorer, data):
    """ee-confidence runs block 1 at the reference level (far above c_min): infeasible at the slider's
    minimum, shown with a hollow star and said so in the readout; feasible at the maximum, filled."""
    costs = explorer.model.table("ee-confidence", next(iter(explorer.model.level_sets))).points["cost_calib"]
    assert costs.min() > explorer.model.b_min
    r = explorer.update(budget=explorer.model.b_min, method="ee-confidence")
    assert r["feasible"] is False and "quee-infeasible" in explorer.readout.value
    assert (_star_rgb(explorer) > 240).all()                       # white centre
    r = explorer.update(budget=explorer.model.b_max)
    assert r["feasible"] is (bool(costs.min() <= explorer.model.b_max))
    if r["feasible"]:
        assert "quee-infeasible" not in explorer.readout.value and (_star_rgb(explorer) < 240).any()


def test_counts_and_examples_match_outcome(study, explorer, data):
    tree = study.prep.tree
    out = study.at_budget("quee", _budgets(explorer)[2])[2]
    counts = exit_level_counts(out.node, data.depth, data.level, data.level_names)
    assert counts.to_numpy().sum() == len(out.node) == study.prep.caches["test"].n_samples
    assert list(counts.index) == list(range(1, tree.L + 1)) and list(counts.columns) == data.level_names
    for t in range(1, tree.L + 1):
        for q, lv in enumerate(tree.levels):
            assert counts.loc[t, lv.name] == np.sum((tree.depth[out.node] == t) & (tree.level[out.node] == q))
    err_hat_all = study.predictors["quee"]["test"]
    max_prob = study.prep.caches["test"].features[..., 0].numpy()
    err_hat = exit_errors(out.node, err_hat_all, study.opts.exit_option, max_prob)
    i = np.arange(len(out.node))
    inner = tree.depth[out.node] < tree.L
    np.testing.assert_array_equal(err_hat[inner], err_hat_all[out.node, i, study.opts.exit_option[out.node]][inner])
    np.testing.assert_allclose(err_hat[~inner], 1 - max_prob[out.node[~inner], i[~inner]])  # no decision at L
    stored = data.err_hat_exit[data.methods["quee"].err_key][out.node, i]         # what the page stores
    np.testing.assert_allclose(stored, err_hat, rtol=1e-6)
    ex = examples_per_exit(out.node, data.depth, 4, err_hat)
    for t, idx in ex.items():
        assert len(idx) == min(4, counts.loc[t].sum())
        assert (tree.depth[out.node[idx]] == t).all() and (np.diff(err_hat[idx]) >= 0).all()
        assert len(set(idx.tolist())) == len(idx)


@pytest.mark.parametrize("method", ["quee", "quee-exit-only", "static-quant", "ee-confidence@q",
                                    "ee-confidence-perexit", "best-single", "best-static", "random", "oracle"])
def test_level_set_is_never_left(study, explorer, method):
    tree, model = study.prep.tree, explorer.model
    for name, qs in model.level_sets.items():
        for b in _budgets(explorer):
            r = model.resolve(OperatingPoint(budget=b, method=method, level_set=name))
            assert {q for n in np.unique(r["node"]) for q in tree.paths[n]} <= set(qs), (name, b)
            assert r["levels"] == [tree.levels[q].name for q in qs]
        if method in ("quee", "oracle"):
            for lam in (0.0, 0.01, 1.0):
                r = model.resolve(OperatingPoint(mode="lambda", lam=lam, method=method, level_set=name))
                assert {q for n in np.unique(r["node"]) for q in tree.paths[n]} <= set(qs)


def test_level_set_points_and_restriction(study, explorer):
    tree, model = study.prep.tree, explorer.model
    presets = level_set_presets([lv.name for lv in tree.levels])
    full = next(iter(presets))
    assert presets[full] == tuple(range(len(tree.levels))) and all(0 in qs for qs in presets.values())
    # restricting to every level changes nothing: recomputed points equal the study's
    p = method_points(study.methods["quee"].restrict(presets[full]))
    cols = ["cost_calib", "acc_calib", "cost_test", "acc_test"]
    np.testing.assert_array_equal(p[cols].to_numpy(), study.points["quee"][cols].to_numpy())
    assert model.table("quee", full).points is explorer.data.methods["quee"].points
    # a smaller set: entries restricted, tables memoized
    ref_only = [n for n, qs in presets.items() if qs == (0,)][0]
    assert {k[0] for k in model.table("quee", ref_only).knobs} == {0}
    assert model.table("quee", ref_only) is model.table("quee", ref_only)
    r = explorer.update(method="quee", level_set=(0,), budget=0.3)
    assert r["level_set"] == ref_only and r["entry"] == tree.levels[0].name
    r = explorer.update(mode="lambda", entry=tree.levels[1].name)    # outside the set: the rule's entry
    assert r["entry"] == tree.levels[0].name
    r = explorer.update(level_set=(0, 1), budget=0.3)                  # an ad-hoc tuple becomes a named set
    assert r["levels"] == [tree.levels[0].name, tree.levels[1].name]
    with pytest.raises(ValueError, match="no knob"):
        study.methods["ee-confidence"].restrict((1,))


def test_budget_curve_is_the_budget_rule(study, explorer):
    budgets = _budgets(explorer)
    df = chosen_points(study.points["best-single"], budgets)
    for b, (_, row) in zip(budgets, df.iterrows()):
        _, _, out = study.at_budget("best-single", b)
        assert row["accuracy"] == out.accuracy and row["cost"] == out.mean_cost


def test_controls_drive_the_display(study, explorer):
    """What the browser does: moving a control updates the state, the readout and the image."""
    explorer.update(budget=_budgets(explorer)[1], method="quee", level_set=next(iter(explorer.model.level_sets)))
    png = explorer.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    explorer.budget_slider.value = _budgets(explorer)[4]
    assert explorer.state.budget == explorer.budget_slider.value
    out = study.at_budget("quee", explorer.budget_slider.value)[2]
    assert f"accuracy: {out.accuracy:.4f}" in explorer.readout.value and explorer.image.value != png
    explorer.mode_toggle.value = "lambda"
    assert explorer.state.mode == "lambda" and not explorer.lambda_slider.disabled and explorer.budget_slider.disabled
    explorer.lambda_slider.value = explorer.lambda_slider.options[-3][1]
    assert explorer.state.lam == explorer.lambda_slider.value
    explorer.method_dropdown.value = "oracle"
    out = study.methods["oracle"].outcome("test", (explorer.lambda_slider.value,))
    assert f"accuracy: {out.accuracy:.4f}" in explorer.readout.value
    explorer.mode_toggle.value = "budget"
    assert explorer.state.mode == "budget" and explorer.lambda_slider.disabled
    for c in (explorer.budget_slider, explorer.lambda_slider, explorer.method_dropdown, explorer.level_dropdown,
              explorer.entry_dropdown, explorer.mode_toggle, explorer.readout):
        assert c.tooltip, c.description        # no empty tooltips (rendered as title="null")


def test_snapshot_is_a_labelled_figure(explorer, data):
    before = explorer.state
    fig = explorer.snapshot(budget=0.3, method="quee")
    ax_curve, ax_hist = fig.axes[:2]
    assert "normalized BOPs" in ax_curve.get_xlabel() and "accuracy" in ax_curve.get_ylabel()
    assert "exit" in ax_hist.get_ylabel() and "level" in ax_hist.get_xlabel()
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "accuracy" in texts and data.setting in texts
    lo, hi = explorer.model.cost_range          # the study's one cost axis, whatever the method
    assert ax_curve.get_xlim() == pytest.approx((lo / 1.15, hi * 1.15))
    # the comparison curves: the strongest static baseline (the headline), the paper's, the bound
    labels = [l.get_label() for l in ax_curve.get_lines() if not l.get_label().startswith("_")]
    assert labels[-4:] == ["quee", "best-static", "best-single", "oracle"]
    assert explorer.state == before               # the widget is untouched


def test_stored_points_load_without_torch(data, tmp_path):
    """The page's promise: the artifact loads and answers without importing torch."""
    path = tmp_path / "explorer.pkl"
    save_artifact(path, "k", data.to_payload())
    r = ExplorerModel(data).resolve(OperatingPoint(budget=0.05, method="quee", level_set=f"all {len(data.level_names)} levels"))
    code = ("import sys; from quee_kit.artifacts import load_artifact; from quee_kit.explorer import ExplorerModel,"
            " OperatingPoint, ExplorerData; d = ExplorerData.from_payload(load_artifact(sys.argv[1], 'k'));"
            " m = ExplorerModel(d);"
            " r = m.resolve(OperatingPoint(budget=0.05, method='quee', level_set=next(iter(m.level_sets))));"
            " print(repr(r['accuracy']), repr(r['cost']), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [repr(r["accuracy"]), repr(r["cost"]), "False"]


def test_default_opens_the_full_study_when_stored(data, tmp_path):
    """fast=None: the full study's stored points when they exist, else the fast one's with a note saying
    how to build the full one; a damaged file is never reused."""
    over = [f"cache_dir={tmp_path}", *OVERRIDES]

    def where(fast):
        return explorer_artifact(load_config("configs/digits.yaml", [*over, "seed=0"], fast=fast))
    with pytest.raises(ArtifactError):          # nothing stored and build=False: nothing is built either
        load_explorer_data("configs/digits.yaml", fast=None, overrides=over, build=False)
    (fast_path, fast_key), (full_path, full_key) = where(True), where(False)
    assert fast_path != full_path
    save_artifact(fast_path, fast_key, data.to_payload())
    got = load_explorer_data("configs/digits.yaml", fast=None, overrides=over, build=False)
    assert "python -m quee_kit.explorer" in got.note and "fast = False" not in got.note   # no code to edit
    save_artifact(full_path, full_key, data.to_payload())
    got = load_explorer_data("configs/digits.yaml", fast=None, overrides=over, build=False)
    assert got.note == "" and list(got.methods) == list(data.methods)
    assert got.methods["quee"].points.equals(data.methods["quee"].points)
    full_path.write_bytes(full_path.read_bytes()[:-7])       # truncated: detected, falls back to fast
    got = load_explorer_data("configs/digits.yaml", fast=None, overrides=over, build=False)
    assert got.note
    other = explorer_artifact(load_config("configs/digits.yaml", [*over, "seed=1"]))[0]
    assert other != full_path                                  # the seed is part of the key


def test_encode_png_is_lossless():
    """The page's PNG encoder (rows unfiltered, for speed) gives back the exact RGB pixels; Pillow decodes it."""
    from PIL import Image

    from quee_kit.explorer.figure import encode_png
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[5:20, 10:40, :3] = 255                                         # flat areas, as in the figure
    img = Image.open(io.BytesIO(encode_png(rgba)))
    assert img.mode == "RGB" and img.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(img), rgba[..., :3])
