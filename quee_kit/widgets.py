"""The budget explorer (notebook 07): a budget or λ slider -> accuracy, cost, where samples exit.

Everything shown is recomputed from the path cache; no backbone runs. The numbers come from
:meth:`BudgetExplorer.compute` (pure: arguments in, a dict and an
:class:`~quee_kit.policy.Outcome` out), which applies the same budget rule as
:meth:`quee_kit.evaluate.Study.at_budget`. A **level set** restricts every method to a subset
of the precision levels: QuEE's options whose level is outside the set are masked and its
entries restricted; baselines keep only the knobs (and the oracle only the paths) inside the
set. A restricted method's calib/test points are computed the first time the set is chosen
and memoized; test outcomes are memoized per knob.

Drawing: one matplotlib figure on an Agg canvas (no pyplot, no ipympl). The static part
(curves, axes, labels) is rendered once per (method, level set) and kept as a pixel
background; a slider update restores it, draws only the moving artists (operating point,
exit x level counts, example digits) and sends PNG bytes to an ``ipywidgets.Image``, so the
page updates in place without flicker. Measured on the default cache: ``benchmarks/bench_widgets.py``.

Standalone page: ``voila notebooks/07_budget_explorer.ipynb`` (from the repository root).
"""
from __future__ import annotations

import copy
import html
import io
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .baselines import BestSingle, ConfidenceExit, Oracle, PerExitConfidence, RandomRouting, StaticQuant
from .evaluate import Study, c_min_sat, method_points, select_points
from .paths import PathTree
from .plots import ACCURACY_LABEL, EXIT_LABEL, cost_label
from .policy import Outcome, QueePolicy, select_for_budget

__all__ = ["BudgetExplorer", "level_set_presets", "restrict_method", "knob_points", "budget_curve",
           "exit_level_counts", "exit_errors", "examples_per_exit", "digit_mosaic"]

LAMBDA_METHODS = ("oracle", "oracle-uniform")  # besides the QuEE variants: methods whose knob is λ alone
MAX_BUDGET = 0.3


# ------------------------------------------------------------------------ level sets

def level_set_presets(levels) -> dict[str, tuple[int, ...]]:
    """A few level subsets (indices into ``levels``, 0 = reference), every one with the reference."""
    names = [lv.name for lv in levels]
    n = len(names)
    presets = {f"all {n} levels": tuple(range(n))}
    if n > 2:
        presets[f"{names[0]} + cheapest ({names[-1]})"] = (0, n - 1)
    mid = tuple(i for i, name in enumerate(names) if i == 0 or name in ("w8a8", "w4a8"))
    if 2 < len(mid) < n:
        presets[", ".join(names[i] for i in mid)] = mid
    if n > 1:
        presets[f"{names[0]} only"] = (0,)
    return presets


class _LevelSubtree:
    """A :class:`PathTree` view whose child table hides the levels outside ``allowed``."""

    def __init__(self, tree: PathTree, allowed: tuple[int, ...]):
        self._tree = tree
        keep = np.isin(np.arange(len(tree.levels)), allowed)
        self._table = np.where(keep[None, :], tree.child_table(), -1)

    def child_table(self) -> np.ndarray:
        return self._table

    def __getattr__(self, name):
        return getattr(self._tree, name)


def restrict_method(method, level_set) -> object:
    """A copy of ``method`` that only runs blocks at levels in ``level_set`` (level indices).

    QuEE: options whose level is outside the set are masked, entries restricted. Static,
    confidence and random baselines: knobs whose level is outside the set are dropped (random
    routing also draws its next level only inside the set). Oracles: only paths inside the set.
    """
    allowed = tuple(sorted(set(int(q) for q in level_set)))
    m = copy.copy(method)
    if isinstance(method, QueePolicy):
        ok = np.isin(method.opts.option_level(np.arange(method.opts.n_options)), allowed)
        m.mask = method.mask & ok[None, :]
        m.knobs = [k for k in method.knobs if k[0] in allowed]
    elif isinstance(method, Oracle):
        m.nodes = np.array([n for n in method.nodes if set(method.tree.paths[n]) <= set(allowed)], dtype=int)
    elif isinstance(method, BestSingle):
        m.knobs = [k for k in method.knobs if k[1] in allowed]
    elif isinstance(method, RandomRouting):
        m.tree = _LevelSubtree(method.tree, allowed)
        m.knobs = [k for k in method.knobs if k[0] in allowed]
    elif isinstance(method, (StaticQuant, ConfidenceExit, PerExitConfidence)):
        m.knobs = [k for k in method.knobs if k[0] in allowed]
    else:
        raise TypeError(f"cannot restrict {type(method).__name__} to a level set")
    if not len(m.knobs) or (isinstance(m, Oracle) and not len(m.nodes)):
        raise ValueError(f"{method.name} has no knob inside the level set {allowed}")
    return m


def knob_points(method) -> pd.DataFrame:
    """Mean cost (normalized BOPs) and accuracy of every knob on calib and test: the columns of
    ``Study.points`` (``cost_calib, acc_calib, cost_test, acc_test``), one row per knob."""
    return method_points(method)


def budget_curve(points: pd.DataFrame, budgets) -> pd.DataFrame:
    """The curve as reported: for each budget, the knob the calib rule picks and its test point."""
    idx, _ = select_points(points, budgets)
    return pd.DataFrame({"budget": np.asarray(budgets, float), "knob": idx,
                         "cost": points["cost_test"].to_numpy()[idx],
                         "accuracy": points["acc_test"].to_numpy()[idx]})


# ------------------------------------------------------------------- per-sample views

def exit_level_counts(outcome: Outcome, tree: PathTree) -> pd.DataFrame:
    """(L, n_levels) counts of samples by exit (rows 1..L) and level of the last block run (columns)."""
    node = np.asarray(outcome.node)
    counts = np.zeros((tree.L, len(tree.levels)), dtype=int)
    np.add.at(counts, (tree.depth[node] - 1, tree.level[node]), 1)
    return pd.DataFrame(counts, index=pd.RangeIndex(1, tree.L + 1, name="exit"),
                        columns=pd.Index([lv.name for lv in tree.levels], name="level"))


def exit_errors(node: np.ndarray, E: np.ndarray | None, exit_option: np.ndarray,
                max_prob: np.ndarray) -> np.ndarray:
    """(N,) predicted error of exiting at each sample's final node.

    E: (n_nodes, N, O) predicted error probabilities (or None); exit_option: (n_nodes,) the
    exit-now option of each node; max_prob: (n_nodes, N) the exit head's max softmax. The
    predictor is not consulted at the last exit (NaN there), so ``1 - max prob`` stands in.
    """
    node = np.asarray(node)
    i = np.arange(len(node))
    fallback = 1.0 - max_prob[node, i]
    if E is None:
        return fallback
    e = E[node, i, exit_option[node]]
    return np.where(np.isfinite(e), e, fallback)


def examples_per_exit(outcome: Outcome, tree: PathTree, k: int, err: np.ndarray) -> dict[int, np.ndarray]:
    """Up to ``k`` test sample indices per exit (1..L), spread evenly over the exit's predicted
    errors ``err`` (lowest first), so each row shows confident and doubtful inputs alike."""
    depth = tree.depth[np.asarray(outcome.node)]
    out = {}
    for t in range(1, tree.L + 1):
        idx = np.flatnonzero(depth == t)
        if len(idx) > k:
            order = idx[np.argsort(err[idx], kind="stable")]
            idx = order[np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))]
        else:
            idx = idx[np.argsort(err[idx], kind="stable")]
        out[t] = idx
    return out


def digit_mosaic(images: np.ndarray, rows: dict[int, np.ndarray], k: int, pad: int = 2,
                 caption: float = 0.45) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile ``images[rows[t]]`` (N, C, H, W in [0, 1]) into one array, one row per exit with a
    blank caption strip under every image. Returns the mosaic ((R, Cw) or (R, Cw, 3)) and the
    cell size (cell_h, cell_w) in pixels."""
    _, C, H, W = images.shape
    cap = int(np.ceil(caption * H))
    ch, cw = H + cap + pad, W + pad
    shape = (len(rows) * ch, k * cw) + ((3,) if C == 3 else ())
    mosaic = np.full(shape, 1.0 if C == 3 else 0.0, dtype=np.float32)
    for r, t in enumerate(sorted(rows)):
        for c, i in enumerate(rows[t][:k]):
            img = images[i].transpose(1, 2, 0) if C == 3 else images[i, 0]
            mosaic[r * ch:r * ch + H, c * cw:c * cw + W] = img
    return mosaic, (ch, cw)


# ------------------------------------------------------------------------------ figure

CORRECT_COLOR, WRONG_COLOR = "#1b7837", "#c51b7d"


def _caption(correct: bool, err: float) -> str:
    """``✓.03``: correct or not, and the predicted error with two decimals."""
    return f"{'✓' if correct else '✗'}{err:.2f}".replace("0.", ".", 1) if err < 1 else f"{'✓' if correct else '✗'}1.00"


class _TextSprites:
    """Labels rendered once per (text, colour, font, alignment) into RGBA sprites, then pasted as
    pixels: ~50 labels change with every knob and matplotlib lays out and rasterizes each one
    anew (~0.5 ms apiece, most of an update). Used by the live widget only; saved figures keep
    real text."""

    def __init__(self, dpi: int, max_items: int = 5000):
        self.max_items, self.cache = max_items, {}
        self._fig = Figure(figsize=(6, 2), dpi=dpi)     # one scratch canvas, reused for every sprite
        self._canvas = FigureCanvasAgg(self._fig)
        self._text = self._fig.text(0.02, 0.5, "", ha="left", va="center")

    def _key(self, t):
        return (t.get_text(), str(t.get_color()), t.get_fontsize(), t.get_ha(), t.get_va(), t.get_fontweight())

    def sprite(self, t) -> np.ndarray:
        """(h, w, 4) float RGBA in [0, 1] of ``t``'s text, cropped to its extent."""
        key = self._key(t)
        if key not in self.cache:
            if len(self.cache) >= self.max_items:
                self.cache.clear()
            tt = self._text
            tt.set_text(t.get_text())
            tt.set_color(t.get_color())
            tt.set_fontproperties(t.get_fontproperties())
            tt.set_multialignment(t.get_ha())
            renderer = self._canvas.get_renderer()
            renderer.clear()    # transparent
            tt.draw(renderer)
            bb = tt.get_window_extent(renderer)
            buf = np.asarray(self._canvas.buffer_rgba())
            H = buf.shape[0]
            r0, r1 = max(int(np.floor(H - bb.y1)), 0), min(int(np.ceil(H - bb.y0)), H)
            c0, c1 = max(int(np.floor(bb.x0)), 0), int(np.ceil(bb.x1))
            self.cache[key] = buf[r0:r1, c0:c1].astype(np.float32) / 255.0
        return self.cache[key]

    def paste(self, buf: np.ndarray, t) -> None:
        """Alpha-blend ``t``'s sprite into ``buf`` (H, W, 4 uint8, straight alpha) at ``t``'s anchor."""
        if not t.get_visible() or not t.get_text():
            return
        sp = self.sprite(t)
        h, w = sp.shape[:2]
        x, y = t.get_transform().transform(t.get_position())
        row = buf.shape[0] - y
        c0 = x - {"left": 0, "center": w / 2, "right": w}[t.get_ha()]
        r0 = row - {"top": 0, "center": h / 2, "center_baseline": h / 2, "bottom": h, "baseline": h}[t.get_va()]
        r0, c0 = int(round(r0)), int(round(c0))
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + h, buf.shape[0]), min(c0 + w, buf.shape[1])
        if rs >= re or cs >= ce:
            return
        src = sp[rs - r0:re - r0, cs - c0:ce - c0]
        dst = buf[rs:re, cs:ce, :3]
        a = src[..., 3:4]
        dst[...] = (src[..., :3] * 255.0 * a + dst * (1.0 - a) + 0.5).astype(np.uint8)


class _ExplorerFigure:
    """Three panels: accuracy-cost curves + operating point | exit x level counts | example digits.

    ``animated=True``: the moving artists are left out of full draws and drawn over a cached
    background by :meth:`render_png` (the live widget). ``animated=False``: a plain figure for
    :func:`quee_kit.plots.save_figure`.
    """

    def __init__(self, tree: PathTree, images: np.ndarray, k: int, animated: bool = True, dpi: int = 72):
        self.tree, self.images, self.k, self.animated = tree, images, k, animated
        L, nq = tree.L, len(tree.levels)
        self.fig = Figure(figsize=(13.0, 4.4), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        gs = self.fig.add_gridspec(1, 3, width_ratios=[1.4, 1.0, 1.0], left=0.055, right=0.995, bottom=0.19,
                                   top=0.87 if animated else 0.84, wspace=0.3)
        self.ax_curve, self.ax_hist, self.ax_ex = (self.fig.add_subplot(gs[0, i]) for i in range(3))
        a = self.ax_curve
        a.set_xscale("log")
        a.set(xlabel=cost_label(tree.levels[0].name), ylabel=ACCURACY_LABEL)
        self._curve_artists = []
        self.op_point, = a.plot([], [], marker="*", ms=17, color="C3", mec="k", mew=0.8, ls="none", zorder=5)
        self.budget_line = a.axvline(0.05, color="C3", lw=1.0, ls="--", zorder=4)

        h = self.ax_hist
        h.grid(False)
        self.hist_img = h.imshow(np.zeros((L, nq)), cmap="Blues", vmin=0, vmax=1, aspect="auto",
                                 interpolation="nearest")
        h.set_xticks(range(nq), [lv.name for lv in tree.levels], rotation=30, fontsize=9)
        h.set_yticks(range(L), [str(t) for t in range(1, L + 1)])
        h.set(xlabel="precision level of the last block", ylabel=EXIT_LABEL)
        h.set_title("test samples by exit and level", fontsize=10)
        self.hist_text = [[h.text(q, t, "", ha="center", va="center", fontsize=8) for q in range(nq)]
                          for t in range(L)]

        e = self.ax_ex
        e.grid(False)
        e.set_axis_off()
        empty = {t: np.zeros(0, int) for t in range(1, L + 1)}
        mosaic, (self.cell_h, self.cell_w) = digit_mosaic(images, empty, k)
        H = images.shape[2]
        self.ex_img = e.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        e.set_title("examples per exit (✓/✗ correct, ê)", fontsize=10)
        self.ex_text = [[e.text(c * self.cell_w + images.shape[3] / 2, r * self.cell_h + H + 0.2, "",
                                ha="center", va="top", fontsize=7) for c in range(k)] for r in range(L)]
        self.row_text = [e.text(-2.0, r * self.cell_h + H / 2, "", ha="right", va="center", fontsize=8)
                         for r in range(L)]
        # the live widget shows these numbers in its readout; a saved figure carries them in a title
        self.title = None if animated else self.fig.text(0.5, 0.975, "", ha="center", va="top", fontsize=11)
        self.pointer = [self.op_point, self.budget_line]           # move with every slider step
        self.state_artists = [self.hist_img, *sum(self.hist_text, []), self.ex_img, *sum(self.ex_text, []),
                              *self.row_text]                      # change only when the outcome does
        for art in self.pointer + self.state_artists:
            art.set_animated(animated)
        self.texts = set(sum(self.hist_text, []) + sum(self.ex_text, []) + self.row_text)
        self.sprites = _TextSprites(dpi)
        if animated:   # every possible caption once (~0.1 s), so a new knob never rasterizes them
            probe = self.ex_text[0][0]
            for ok in (True, False):
                probe.set_color(CORRECT_COLOR if ok else WRONG_COLOR)
                for v in range(101):
                    probe.set_text(_caption(ok, v / 100))
                    self.sprites.sprite(probe)
            probe.set_text("")

    def set_curves(self, curves: list[tuple[str, pd.DataFrame, dict]], ref_acc: float, c_min: float,
                   c_sat: float, ylim: tuple[float, float], title: str) -> None:
        """Replace the static curves: (label, DataFrame with cost/accuracy, plot kwargs) each."""
        for art in self._curve_artists:
            art.remove()
        a = self.ax_curve
        arts = [a.axhline(ref_acc, color="0.5", lw=0.8, ls=":", label=f"{self.tree.levels[0].name} full model")]
        for x, name in ((c_min, "c_min"), (c_sat, "c_sat")):
            arts.append(a.axvline(x, color="0.6", lw=0.8))
            arts.append(a.text(x, 0.01, f" {name}", transform=a.get_xaxis_transform(), fontsize=8, color="0.4"))
        for label, df, kw in curves:
            arts += a.plot(df["cost"], df["accuracy"], label=label, **{"marker": ".", "ms": 4, "lw": 1.3, **kw})
        self._curve_artists = arts
        a.set_xlim(c_min * 0.85, 1.15)
        a.set_ylim(*ylim)
        a.set_title(title, fontsize=10)
        leg = a.get_legend()
        if leg is not None:
            leg.remove()
        a.legend(fontsize=8, loc="lower right")

    def set_pointer(self, result: dict) -> None:
        self.op_point.set_data([result["cost"]], [result["accuracy"]])
        b = result["budget"]
        self.budget_line.set_xdata([b, b])
        self.budget_line.set_visible(result["mode"] == "budget")

    def set_state(self, result: dict, outcome: Outcome, err: np.ndarray, counts: pd.DataFrame,
                  examples: dict[int, np.ndarray], mode_note: str) -> None:
        self.set_pointer(result)
        c = counts.to_numpy()
        self.hist_img.set_data(c)
        top = max(int(c.max()), 1)
        self.hist_img.set_clim(0, top)
        for t, row in enumerate(c):
            for q, v in enumerate(row):
                txt = self.hist_text[t][q]
                txt.set_text(str(v) if v else "")
                txt.set_color("white" if v > 0.55 * top else "black")
        mosaic, _ = digit_mosaic(self.images, examples, self.k)
        self.ex_img.set_data(mosaic)
        correct = outcome.correct
        for r, t in enumerate(sorted(examples)):
            idx = examples[t]
            self.row_text[r].set_text(f"exit {t}\n{int((self.tree.depth[outcome.node] == t).sum())}")
            for cidx, txt in enumerate(self.ex_text[r]):
                if cidx < len(idx):
                    i = idx[cidx]
                    txt.set_text(_caption(correct[i], err[i]))
                    txt.set_color(CORRECT_COLOR if correct[i] else WRONG_COLOR)
                else:
                    txt.set_text("")
        if self.title is not None:
            self.title.set_text(f"{result['method']}, {mode_note}: accuracy {result['accuracy']:.4f}, "
                                f"cost {result['cost']:.4f} (test, N={result['n']}; levels: {result['level_set']})")

    def background(self):
        """Full draw without the moving artists; the pixels to restore before each update."""
        self.canvas.draw()
        return self.canvas.copy_from_bbox(self.fig.bbox)

    def render_state(self, background):
        """Draw the per-outcome artists over ``background``; returns the pixels as a new layer."""
        self.canvas.restore_region(background)
        for art in self.state_artists:
            if art not in self.texts:
                self.fig.draw_artist(art)
        buf = np.asarray(self.canvas.buffer_rgba())
        for t in self.texts:
            self.sprites.paste(buf, t)
        return self.canvas.copy_from_bbox(self.fig.bbox)

    def render_png(self, layer) -> bytes:
        """Restore a state layer, draw the operating point and budget line, encode as PNG."""
        self.canvas.restore_region(layer)
        for art in self.pointer:
            self.fig.draw_artist(art)
        w, h = self.canvas.get_width_height()
        img = Image.frombuffer("RGBA", (w, h), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="png", compress_level=1)
        return buf.getvalue()


# ---------------------------------------------------------------------------- explorer

def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.4g}"


class BudgetExplorer:
    """Interactive budget explorer over a :class:`~quee_kit.evaluate.Study` (test split shown).

    ``.widget``: the ipywidgets VBox (controls, a readout with ``accuracy: 0.9412``-style text,
    the figure as an ``ipywidgets.Image``). ``update(...)`` sets the state, redraws and returns
    the numbers shown; :meth:`compute` is the same without touching any widget.
    """

    def __init__(self, study: Study, methods: list[str] | None = None, example_count: int = 6,
                 budget: float = 0.05, method: str = "quee", dpi: int = 72):
        import ipywidgets as w

        self.study, self.k = study, example_count
        self.tree = study.prep.tree
        self.names = list(methods or study.methods)
        unknown = [m for m in self.names if m not in study.methods]
        if unknown:
            raise ValueError(f"methods: unknown {unknown} (known: {', '.join(study.methods)})")
        self.level_sets = level_set_presets(self.tree.levels)
        self.c_min, self.c_sat = c_min_sat(study)
        self.ref_acc = float(study.points["static-quant"]["acc_test"].iloc[0]) if "static-quant" in study.points \
            else float("nan")
        test = study.prep.caches["test"]
        self._max_prob = test.features[..., 0].numpy()
        self._images = study.prep.data.test.x.numpy() if hasattr(study.prep.data.test.x, "numpy") \
            else np.asarray(study.prep.data.test.x)
        self._restricted: dict = {}     # (method, level set) -> method object
        self._points: dict = {}         # (method, level set) -> knob points
        self._backgrounds: dict = {}    # (method, level set) -> pixel background
        self._layers: OrderedDict = OrderedDict()    # (method, level set, knob) -> background + panels
        self._outcomes: OrderedDict = OrderedDict()  # (method, level set, knob) -> test Outcome
        self.budget_grid = np.geomspace(self.c_min, 1.0, 60)
        self.last_update_ms = float("nan")

        b_max = max(MAX_BUDGET, 2 * self.c_min)
        budget = float(np.clip(budget, self.c_min, b_max))
        method = method if method in self.names else self.names[0]
        self.state = {"mode": "budget", "budget": budget, "lam": 0.01, "method": method,
                      "level_set": next(iter(self.level_sets)), "entry": "auto"}

        style = {"description_width": "70px"}
        self.mode_toggle = w.ToggleButtons(options=[("budget", "budget"), ("λ", "lambda")], value="budget",
                                           description="slider", style=style)
        self.method_dropdown = w.Dropdown(options=self.names, value=method, description="method", style=style)
        self.level_dropdown = w.Dropdown(options=list(self.level_sets), value=self.state["level_set"],
                                         description="levels", style=style)
        self.entry_dropdown = w.Dropdown(options=self._entry_options(self.state["level_set"]), value="auto",
                                         description="entry", style=style, disabled=True)
        # the log-spaced grid is anchored at the initial budget, so the page does not snap it to a neighbour
        step, lb = 0.01, np.log10(budget)
        lo = lb - step * np.ceil((lb - np.log10(self.c_min)) / step - 1e-9)
        hi = lb + step * np.ceil((np.log10(b_max) - lb) / step - 1e-9)
        self.budget_slider = w.FloatLogSlider(value=budget, base=10, min=lo, max=hi, step=step, description="budget", readout_format=".4f",
                                              continuous_update=True, style=style,
                                              layout=w.Layout(width="520px"))
        self.lambda_slider = w.FloatLogSlider(value=0.01, base=10, min=-4, max=1, step=0.02, description="λ",
                                              readout_format=".3g", disabled=True, style=style,
                                              layout=w.Layout(width="520px"))
        self.budget_slider.add_class("quee-budget-slider")
        self.lambda_slider.add_class("quee-lambda-slider")
        self.readout = w.HTML(layout=w.Layout(min_height="2.6em"))
        self.readout.add_class("quee-readout-widget")
        self.image = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto"))
        self.image.add_class("quee-figure")
        self._fig = _ExplorerFigure(self.tree, self._images, self.k, animated=True, dpi=dpi)
        self._syncing = False
        for c in (self.mode_toggle, self.method_dropdown, self.level_dropdown, self.entry_dropdown,
                  self.budget_slider, self.lambda_slider):
            c.observe(self._on_control, names="value")
        self.widget = w.VBox([
            w.HBox([self.mode_toggle, self.method_dropdown, self.level_dropdown, self.entry_dropdown],
                   layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.budget_slider, self.lambda_slider], layout=w.Layout(flex_flow="row wrap")),
            self.readout, self.image])
        for name in self.names:          # pre-render every method's curves: switching methods stays fast
            self._background(name, self.state["level_set"])
        self.update()

    # ---------------------------------------------------------------- level sets, methods
    def _entry_options(self, level_set: str) -> list:
        return [("auto (budget rule)", "auto")] + [(self.tree.levels[q].name, self.tree.levels[q].name)
                                                   for q in self.level_sets[level_set]]

    def _level_set_name(self, level_set) -> str:
        if isinstance(level_set, str):
            if level_set not in self.level_sets:
                raise ValueError(f"level_set: unknown {level_set!r} (known: {', '.join(self.level_sets)})")
            return level_set
        qs = tuple(sorted(set(int(q) for q in level_set)))
        for name, s in self.level_sets.items():
            if s == qs:
                return name
        if not qs or min(qs) < 0 or max(qs) >= len(self.tree.levels):
            raise ValueError(f"level_set: level indices must be in 0..{len(self.tree.levels) - 1} (got {qs})")
        name = ", ".join(self.tree.levels[q].name for q in qs)
        self.level_sets[name] = qs
        self.level_dropdown.options = list(self.level_sets)
        return name

    def method(self, name: str, level_set: str):
        """The method ``name`` restricted to a level set (the original object for all levels)."""
        key = (name, level_set)
        if key not in self._restricted:
            qs = self.level_sets[level_set]
            m = self.study.methods[name]
            self._restricted[key] = m if len(qs) == len(self.tree.levels) else restrict_method(m, qs)
        return self._restricted[key]

    def points(self, name: str, level_set: str) -> pd.DataFrame:
        """Knob points of ``name`` within a level set (``study.points`` for all levels; else computed once)."""
        key = (name, level_set)
        if key not in self._points:
            m = self.method(name, level_set)
            self._points[key] = self.study.points[name] if m is self.study.methods[name] else knob_points(m)
        return self._points[key]

    def _outcome(self, name: str, level_set: str, knob) -> Outcome:
        key = (name, level_set, knob)
        if key in self._outcomes:
            self._outcomes.move_to_end(key)
        else:
            self._outcomes[key] = self.method(name, level_set).outcome("test", knob)
            if len(self._outcomes) > 512:
                self._outcomes.popitem(last=False)
        return self._outcomes[key]

    def _predicted_errors(self, name: str):
        """The method's own predictor (QuEE variants), else the QuEE predictor, else None."""
        m = self.study.methods[name]
        if isinstance(m, QueePolicy):
            return m.err_hat["test"]
        p = self.study.predictors.get("quee")
        return None if p is None else p["test"]

    # --------------------------------------------------------------------- the numbers
    def compute(self, mode: str = "budget", budget: float = 0.05, lam: float = 0.01, method: str = "quee",
                level_set: str | None = None, entry="auto") -> tuple[dict, Outcome]:
        """The numbers shown for one state, and the test :class:`Outcome` behind them.

        ``mode="budget"``: the knob the calib rule picks for ``budget`` (identical to
        ``study.at_budget`` for all levels). ``mode="lambda"``: QuEE variants run
        :func:`~quee_kit.policy.simulate` at ``lam`` with entry ``entry`` (``"auto"``: the entry
        the budget rule picks at ``budget``); oracles use ``lam`` as their knob; other methods
        have no λ and fall back to the budget rule.
        """
        level_set = self._level_set_name(level_set or next(iter(self.level_sets)))
        if method not in self.study.methods:
            raise ValueError(f"method: unknown {method!r} (known: {', '.join(self.names)})")
        if mode not in ("budget", "lambda"):
            raise ValueError(f"mode must be 'budget' or 'lambda' (got {mode!r})")
        m = self.method(method, level_set)
        p = self.points(method, level_set)
        i, feasible = select_for_budget(p["cost_calib"].to_numpy(), p["acc_calib"].to_numpy(), float(budget))
        knob, note = m.knobs[i], ""
        has_lambda = isinstance(m, QueePolicy) or method in LAMBDA_METHODS
        if mode == "lambda" and has_lambda:
            if not np.isfinite(lam) or lam < 0:
                raise ValueError(f"lambda must be a finite float >= 0 (got {lam})")
            if isinstance(m, QueePolicy):
                if entry in (None, "auto"):
                    q = knob[0]
                else:
                    names = [lv.name for lv in self.tree.levels]
                    q = names.index(entry) if isinstance(entry, str) else int(entry)
                    if q not in self.level_sets[level_set]:
                        raise ValueError(f"entry {names[q]} is outside the level set {level_set!r}")
                knob = (q, float(lam))
            else:
                knob = (float(lam),)
            feasible = None
        elif mode == "lambda":
            note = f"{method} has no λ: budget rule used"
        out = self._outcome(method, level_set, knob)
        desc = m.describe(knob)
        result = {"method": method, "mode": mode if has_lambda else "budget", "budget": float(budget),
                  "lambda": float(desc["lambda"]), "entry": desc["entry"], "knob": knob,
                  "accuracy": out.accuracy, "cost": out.mean_cost, "feasible": feasible,
                  "level_set": level_set, "levels": [self.tree.levels[q].name for q in self.level_sets[level_set]],
                  "n": len(out.node), "note": note}
        return result, out

    # ----------------------------------------------------------------------- the widget
    def update(self, budget: float | None = None, lam: float | None = None, method: str | None = None,
               level_set=None, entry=None, mode: str | None = None) -> dict:
        """Set the state (omitted arguments keep theirs), redraw, return the numbers shown.

        ``budget`` switches to budget mode, ``lam`` to λ mode (``lam`` wins if both are given);
        ``level_set`` is a preset name or a tuple of level indices; ``entry`` a level name or
        ``"auto"``. Keys: accuracy, cost (normalized BOPs), entry, lambda, method, feasible,
        budget, mode, level_set, levels, knob, n, note, update_ms.
        """
        t0 = time.perf_counter()
        s = dict(self.state)
        if budget is not None:
            s["budget"], s["mode"] = float(budget), "budget"
        if lam is not None:
            s["lam"], s["mode"] = float(lam), "lambda"
        if mode is not None:
            s["mode"] = mode
        if method is not None:
            s["method"] = method
        if level_set is not None:
            s["level_set"] = self._level_set_name(level_set)
        if entry is not None:
            s["entry"] = entry if entry == "auto" or isinstance(entry, str) else self.tree.levels[int(entry)].name
        if s["entry"] not in [v for _, v in self._entry_options(s["level_set"])]:
            s["entry"] = "auto"   # a fixed entry outside the new level set
        result, outcome = self.compute(s["mode"], s["budget"], s["lam"], s["method"], s["level_set"], s["entry"])
        self.state = s
        self._sync_controls()
        png = self._render(result, outcome)
        self.image.value = png
        self.last_update_ms = result["update_ms"] = (time.perf_counter() - t0) * 1000
        self.readout.value = self.readout_html(result)
        return result

    def snapshot(self, budget: float | None = None, method: str | None = None, level_set=None,
                 dpi: int = 100) -> Figure:
        """A plain matplotlib Figure (for :func:`quee_kit.plots.save_figure`) of the current state,
        or of the budget rule at ``budget`` when given; the widget itself is left unchanged."""
        s = dict(self.state)
        if budget is not None:
            s["budget"], s["mode"] = float(budget), "budget"
        s["method"] = method or s["method"]
        s["level_set"] = self._level_set_name(level_set) if level_set is not None else s["level_set"]
        result, outcome = self.compute(s["mode"], s["budget"], s["lam"], s["method"], s["level_set"], s["entry"])
        fig = _ExplorerFigure(self.tree, self._images, self.k, animated=False, dpi=dpi)
        self._draw_curves(fig, s["method"], s["level_set"])
        self._draw_state(fig, result, outcome)
        return fig.fig

    def _draw_curves(self, fig: _ExplorerFigure, method: str, level_set: str) -> None:
        curves, accs = [], []
        styles = {method: {"color": "C3"}, "best-single": {"color": "C0", "ls": "--"},
                  "oracle": {"color": "C2", "ls": ":"}}
        for name in dict.fromkeys([method, "best-single", "oracle"]):
            if name not in self.study.methods:
                continue
            df = budget_curve(self.points(name, level_set), self.budget_grid)
            df = df.loc[df["knob"].ne(df["knob"].shift())]   # one point per distinct knob
            curves.append((name, df, styles[name]))
            accs.append(df["accuracy"].to_numpy())
        accs.append(self.points(method, level_set)["acc_test"].to_numpy())
        lo = float(np.nanmin(np.concatenate(accs)))
        hi = float(np.nanmax(np.concatenate(accs)))
        ylim = (max(0.0, lo - 0.01), min(1.0, hi + 0.01))
        fig.set_curves(curves, self.ref_acc, self.c_min, self.c_sat, ylim,
                       f"accuracy–cost on test (levels: {level_set})")

    def _draw_state(self, fig: _ExplorerFigure, result: dict, outcome: Outcome) -> None:
        E = self._predicted_errors(result["method"])
        err = exit_errors(outcome.node, E, self.study.opts.exit_option, self._max_prob)
        examples = examples_per_exit(outcome, self.tree, self.k, err)
        counts = exit_level_counts(outcome, self.tree)
        note = (f"budget {result['budget']:.4f}" if result["mode"] == "budget"
                else f"λ = {result['lambda']:.3g}, entry {result['entry']}")
        fig.set_state(result, outcome, err, counts, examples, note)

    def _background(self, method: str, level_set: str):
        key = (method, level_set)
        if key not in self._backgrounds:
            self._draw_curves(self._fig, method, level_set)
            self._backgrounds[key] = self._fig.background()
        return self._backgrounds[key]

    def _render(self, result: dict, outcome: Outcome) -> bytes:
        """Two cached pixel layers: the static curves per (method, level set), and on top of
        them the per-outcome panels per knob; a slider step that keeps the knob only redraws
        the operating point and the budget line."""
        key = (result["method"], result["level_set"], result["knob"])
        if key in self._layers:
            self._layers.move_to_end(key)
        else:
            self._draw_state(self._fig, result, outcome)
            self._layers[key] = self._fig.render_state(self._background(*key[:2]))
            if len(self._layers) > 32:   # ~1 MB each
                self._layers.popitem(last=False)
        self._fig.set_pointer(result)
        return self._fig.render_png(self._layers[key])

    def readout_html(self, r: dict) -> str:
        """The readout: stable class names and ``accuracy: 0.9412``-style text (the browser test reads it)."""
        if r["mode"] == "budget":
            feas = "yes" if r["feasible"] else "no (cheapest knob)"
            where = (f'<span class="quee-budget" data-value="{r["budget"]!r}">budget: {r["budget"]:.4f}</span>'
                     f' · feasible: {feas}')
        else:
            where = f'<span class="quee-lambda" data-value="{r["lambda"]!r}">λ: {r["lambda"]:.4g}</span>'
        has_lambda = isinstance(self.study.methods[r["method"]], QueePolicy) or r["method"] in LAMBDA_METHODS
        knob = f"λ: {_fmt(r['lambda'])}" if has_lambda else f"knob: {_fmt(r['lambda'])}"
        note = f' · <i>{html.escape(r["note"])}</i>' if r["note"] else ""
        return (f'<div class="quee-readout" data-method="{html.escape(r["method"])}" data-mode="{r["mode"]}" '
                f'data-budget="{r["budget"]!r}">'
                f'<b>{html.escape(r["method"])}</b> · '
                f'<span class="quee-accuracy" data-value="{r["accuracy"]!r}">accuracy: {r["accuracy"]:.4f}</span> · '
                f'<span class="quee-cost" data-value="{r["cost"]!r}">cost: {r["cost"]:.4f}</span> '
                f'(test, N={r["n"]}) · {where} · entry: {html.escape(str(r["entry"]))} · {knob}{note}'
                f'<br><span style="color:#777">levels: {html.escape(r["level_set"])} · '
                f'update {r.get("update_ms", float("nan")):.0f} ms</span></div>')

    def _sync_controls(self) -> None:
        s = self.state
        self._syncing = True
        try:
            self.mode_toggle.value = s["mode"]
            self.method_dropdown.value = s["method"]
            self.level_dropdown.value = s["level_set"]
            opts = self._entry_options(s["level_set"])
            if list(self.entry_dropdown.options) != opts:
                self.entry_dropdown.options = opts
            self.entry_dropdown.value = s["entry"]
            if abs(self.budget_slider.value - s["budget"]) > 1e-12 * s["budget"]:
                self.budget_slider.value = s["budget"]
            if abs(self.lambda_slider.value - s["lam"]) > 1e-12 * max(s["lam"], 1e-12):
                self.lambda_slider.value = s["lam"]
            lam_mode = s["mode"] == "lambda"
            self.budget_slider.disabled = lam_mode
            self.lambda_slider.disabled = not lam_mode
            self.entry_dropdown.disabled = not lam_mode
        finally:
            self._syncing = False

    def _on_control(self, change) -> None:
        if self._syncing:
            return
        owner = change["owner"]
        kw = {"method": self.method_dropdown.value, "level_set": self.level_dropdown.value,
              "entry": self.entry_dropdown.value, "mode": self.mode_toggle.value}
        if owner is self.budget_slider:
            kw["budget"] = float(self.budget_slider.value)
        elif owner is self.lambda_slider:
            kw["lam"] = float(self.lambda_slider.value)
        elif owner is self.mode_toggle and self.mode_toggle.value == "lambda":
            # entering λ mode: start from the λ the budget rule picked, when the method has one
            r = self.compute("budget", self.state["budget"], self.state["lam"], kw["method"], kw["level_set"])[0]
            if np.isfinite(r["lambda"]) and r["lambda"] > 0 and kw["method"] in self._lambda_methods():
                kw["lam"] = float(np.clip(r["lambda"], 10 ** self.lambda_slider.min, 10 ** self.lambda_slider.max))
        try:
            self.update(**kw)
        except ValueError as err:   # e.g. a method without knobs inside the chosen level set
            self.readout.value = f'<div class="quee-readout quee-error">{html.escape(str(err))}</div>'
            self._syncing = True
            try:
                self.level_dropdown.value = self.state["level_set"]
                self.method_dropdown.value = self.state["method"]
            finally:
                self._syncing = False

    def _lambda_methods(self) -> list[str]:
        return [n for n in self.names if isinstance(self.study.methods[n], QueePolicy) or n in LAMBDA_METHODS]
