"""The ipywidgets glue of the budget explorer: controls <-> :class:`~.state.OperatingPoint` -> figure.

Every control is *derived* from the one operating point held in ``BudgetExplorer.state``: a control
change proposes a new point, :meth:`~.state.ExplorerModel.normalize` makes it valid, and every control,
the readout and the figure are then set from it (so the entry dropdown, the readout and the star can
never disagree, and no combination of controls leaves a control enabled that does nothing). The
numbers are :meth:`~.state.ExplorerModel.resolve`'s; this module computes none of its own.

Standalone page: ``voila notebooks/07_budget_explorer.ipynb`` (from the repository root; see the README).
"""
from __future__ import annotations

import html
import time

import numpy as np
from matplotlib.figure import Figure

from ..styles import method_style
from .figure import DPI, SCALE, ExplorerFigure
from .state import ExplorerModel, Memo, chosen_points, examples_per_exit, exit_level_counts

__all__ = ["BudgetExplorer"]

KNOB_SYMBOLS = {"lambda": "λ", "tau": "τ"}   # how the readout writes a method's continuous knob

_TIPS = {"mode": "drive the operating point by a budget (the budget rule picks the knob) or by λ directly",
         "method": "QuEE, its ablations, the baselines and the bounds",
         "levels": "restrict every method to these precision levels",
         "entry": "level of block 1 in λ mode (QuEE variants); otherwise the one the budget rule picked",
         "budget": "target mean cost, normalized BOPs (1.0 = full model at the reference level)",
         "lambda": "trade-off λ in argmin ê + λ·cost, on the study's λ grid"}


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.4g}"


class BudgetExplorer:
    """Interactive budget explorer over an :class:`~quee_kit.explorer.points.ExplorerData` (test split).

    ``.widget``: the ipywidgets VBox. ``update(...)`` sets the state, redraws and returns the numbers
    shown (:meth:`~.state.ExplorerModel.resolve`'s dict plus ``update_ms``).
    """

    def __init__(self, data, methods: list[str] | None = None, example_count: int = 6, budget: float = 0.05,
                 method: str = "quee", dpi: int = DPI, scale: int = SCALE):
        import ipywidgets as w

        self.data, self.k = data, example_count
        self.model = ExplorerModel(data, methods, budget)
        self.names = self.model.names
        self.state = self.model.initial(budget, method)
        self._images = data.images.astype(np.float32) / 255.0
        self._backgrounds, self._layers = Memo(64), Memo(32)   # pixels per (method, level set) / per knob
        self.last_update_ms = float("nan")

        style = {"description_width": "64px"}
        def tip(name):
            return {"tooltip": _TIPS[name]}
        self.mode_toggle = w.ToggleButtons(options=[("budget", "budget"), ("λ", "lambda")], value="budget",
                                           description="slider", style=style, tooltips=[_TIPS["budget"],
                                                                                        _TIPS["lambda"]],
                                           **tip("mode"))
        self.method_dropdown = w.Dropdown(options=self.names, value=self.state.method, description="method",
                                          style=style, **tip("method"))
        self.level_dropdown = w.Dropdown(options=list(self.model.level_sets), value=self.state.level_set,
                                         description="levels", style=style, **tip("levels"))
        self.entry_dropdown = w.Dropdown(options=["—"], value="—", description="entry", style=style,
                                         disabled=True, **tip("entry"))
        lo, hi, step = self.model.budget_range    # the model's grid: the page clips as the library does
        self.budget_slider = w.FloatLogSlider(value=self.state.budget, base=10, min=lo, max=hi, step=step,
                                              description="budget", readout_format=".4f", continuous_update=True,
                                              style=style, layout=w.Layout(width="560px"), **tip("budget"))
        self.lambda_slider = w.SelectionSlider(options=[(f"{v:.3g}", float(v)) for v in data.lambdas],
                                               value=self.state.lam, description="λ", disabled=True,
                                               continuous_update=True, style=style,
                                               layout=w.Layout(width="560px"), **tip("lambda"))
        self.budget_grid = np.geomspace(self.model.b_min, self.model.b_max, 60)
        self.budget_slider.add_class("quee-budget-slider")
        self.lambda_slider.add_class("quee-lambda-slider")
        self.method_dropdown.add_class("quee-method")
        self.entry_dropdown.add_class("quee-entry")
        self.mode_toggle.add_class("quee-mode")
        self.readout = w.HTML(layout=w.Layout(min_height="3.2em"),
                              tooltip="the operating point: test accuracy and cost, and the knob chosen")
        self.readout.add_class("quee-readout-widget")
        self.figure = ExplorerFigure(data.level_names, int(data.depth.max()), self._images, self.k,
                                     dpi=dpi * scale)
        width, height = (round(v / scale) for v in self.figure.canvas.get_width_height())
        # scale image pixels per CSS pixel (sharp on HiDPI screens); a page narrower than the figure shrinks
        # it to the page's width (max-width) rather than cutting it off
        self.image = w.Image(format="png", layout=w.Layout(width=f"{width}px", max_width="100%", height="auto"))
        self.image.add_class("quee-figure")
        self._syncing = False
        for c in (self.mode_toggle, self.method_dropdown, self.level_dropdown, self.entry_dropdown,
                  self.budget_slider, self.lambda_slider):
            c.observe(self._on_control, names="value")
        self.widget = w.VBox([
            w.HBox([self.mode_toggle, self.method_dropdown, self.level_dropdown, self.entry_dropdown],
                   layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.budget_slider, self.lambda_slider], layout=w.Layout(flex_flow="row wrap")),
            self.readout, w.Box([self.image], layout=w.Layout(width="100%"))])
        self.update()

    # ------------------------------------------------------------------- the state
    def update(self, budget: float | None = None, lam: float | None = None, method: str | None = None,
               level_set=None, entry: str | None = None, mode: str | None = None) -> dict:
        """Set the operating point (omitted arguments keep theirs), redraw, return the numbers shown.

        ``budget`` switches to budget mode, ``lam`` to λ mode (``lam`` wins if both are given);
        ``mode="lambda"`` alone starts λ mode at the λ and entry the budget rule picked;
        ``level_set`` is a preset name or a tuple of level indices; ``entry`` a level name (λ mode).
        """
        t0 = time.perf_counter()
        s = self._with(self.state, method, level_set, budget)
        if mode == "lambda" and s.mode == "budget" and lam is None:
            s = self.model.enter_lambda_mode(s)
        elif mode is not None:
            s = s.replace(mode=mode)
        if lam is not None:
            s = s.replace(lam=float(lam), mode="lambda")
        if entry is not None:
            s = s.replace(entry=entry)
        s = self.model.normalize(s)
        view = self.model.resolve(s)
        self.state = s
        self._sync_controls(view)
        self.image.value = self._render(view)
        self.last_update_ms = (time.perf_counter() - t0) * 1000
        self.readout.value = self.readout_html(view, self.last_update_ms)
        return {**view, "update_ms": self.last_update_ms}

    def view(self) -> dict:
        """The numbers of the current operating point."""
        return self.model.resolve(self.state)

    # ------------------------------------------------------------------- drawing
    def _curves(self, fig: ExplorerFigure, method: str, level_set: str) -> None:
        curves, accs = [], []
        # the method shown, the strongest static baseline (best-static), the paper's (best-single), the bound
        for name in dict.fromkeys([method, "best-static", "best-single", "oracle"]):
            if name not in self.names:
                continue
            df = chosen_points(self.model.table(name, level_set).points, self.budget_grid)
            df = df.loc[df["knob"].ne(df["knob"].shift())]   # one point per distinct knob
            curves.append((name, df))
            accs.append(df["accuracy"].to_numpy())
        own = self.model.table(method, level_set).points        # every knob: where the star can go (λ mode)
        accs.append(own["acc_test"].to_numpy())
        lo, hi = float(np.nanmin(np.concatenate(accs))), float(np.nanmax(np.concatenate(accs)))
        ylim = (max(0.0, lo - 0.02), min(1.0, hi + 0.01))
        # one x range for every method and level set (the study's c_min to its costliest knob), so that
        # switching methods never rescales the axis and curves can be compared by eye
        xlim = (self.model.cost_range[0] / 1.15, self.model.cost_range[1] * 1.15)
        fig.set_curves(curves, (self.data.level_names[0], self.data.ref_acc), self.data.c_min, self.data.c_sat,
                       xlim, ylim, f"Accuracy vs cost on test under the budget rule — {self.data.setting}; "
                                   f"levels: {level_set}")

    def _panels(self, fig: ExplorerFigure, view: dict) -> None:
        d, node = self.data, view["node"]
        i = np.arange(len(node))
        tab = self.model.table(view["method"], view["level_set"])
        err_hat = d.err_hat_exit[tab.err_key][node, i] if tab.err_key else 1.0 - d.max_prob[node, i]
        correct = d.correct[node, i]
        examples = examples_per_exit(node, d.depth, self.k, err_hat)
        counts = exit_level_counts(node, d.depth, d.level, d.level_names)
        note = (f"budget {view['budget']:.4f}" if view["mode"] == "budget"
                else f"λ = {view['lambda']:.3g}, entry {view['entry']}")
        fig.set_state(view, correct, err_hat, counts, examples, d.depth[node], note)

    def _render(self, view: dict) -> bytes:
        """Two cached pixel layers: the curves per (method, level set), and over them the panels per
        knob; a slider step that keeps the knob only redraws the star and the budget line."""
        m, ls = view["method"], view["level_set"]

        def background():
            self._curves(self.figure, m, ls)
            return self.figure.background(), self.figure.ax_curve.get_ylim()

        bg, ylim = self._backgrounds.get((m, ls), background)

        def layer():
            self._panels(self.figure, view)
            return self.figure.render_state(bg)
        layer_px = self._layers.get((m, ls, view["knob_index"]), layer)
        self.figure.ax_curve.set_ylim(*ylim)    # the y range is per method: the star must use this one
        self.figure.set_pointer(view)
        return self.figure.render_png(layer_px)

    def _with(self, s, method, level_set, budget):
        """``s`` with the given method, level set and budget (budget mode); ``None`` keeps the field."""
        if method is not None:
            s = s.replace(method=method)
        if level_set is not None:
            s = s.replace(level_set=self.model.level_set_name(level_set))
        if budget is not None:
            s = s.replace(budget=float(budget), mode="budget")
        return s

    def snapshot(self, budget: float | None = None, method: str | None = None, level_set=None,
                 dpi: int = DPI) -> Figure:
        """A plain matplotlib Figure (for :func:`quee_kit.plots.save_figure`) of the current state, or
        of the budget rule at ``budget`` when given; the widget itself is left unchanged."""
        s = self._with(self.state, method, level_set, budget)
        view = self.model.resolve(self.model.normalize(s))
        fig = ExplorerFigure(self.data.level_names, int(self.data.depth.max()), self._images, self.k,
                             animated=False, dpi=dpi)
        self._curves(fig, view["method"], view["level_set"])
        self._panels(fig, view)
        return fig.fig

    # ------------------------------------------------------------------- controls
    def readout_html(self, v: dict, update_ms: float = float("nan")) -> str:
        """The readout: stable class names and ``accuracy: 0.9412``-style text (the browser test reads it)."""
        color = method_style(v["method"])["color"]
        if v["mode"] == "budget":
            feas = ("feasible" if v["feasible"] else
                    '<b class="quee-infeasible">infeasible on calib: cheapest knob shown (hollow star)</b>')
            where = f'<span class="quee-budget">budget: {v["budget"]:.4f}</span> ({feas})'
            knob = f"entry: {html.escape(v['entry'])}"
            if v["knob_name"]:
                knob += f" · {KNOB_SYMBOLS.get(v['knob_name'], v['knob_name'])}: {_fmt(v['knob_value'])}"
        else:
            where = f'<span class="quee-lambda">λ: {_fmt(v["lambda"])}</span>'
            knob = f"entry: {html.escape(v['entry'])}"
        star_x, star_y = self.figure.star_pixel()
        attrs = {"method": v["method"], "mode": v["mode"], "budget": repr(v["budget"]), "lambda": repr(v["lambda"]),
                 "entry": v["entry"], "feasible": str(v["feasible"]).lower(), "color": color,
                 "star-x": f"{star_x:.1f}", "star-y": f"{star_y:.1f}", "setting": v["setting"]}
        data = " ".join(f'data-{k}="{html.escape(str(x))}"' for k, x in attrs.items())
        return (f'<div class="quee-readout" {data}>'
                f'<b style="color:{color}">★ {html.escape(v["method"])}</b> · '
                f'<span class="quee-accuracy" data-value="{v["accuracy"]!r}">accuracy: {v["accuracy"]:.4f}</span> · '
                f'<span class="quee-cost" data-value="{v["cost"]!r}">cost: {v["cost"]:.4f}</span> '
                f'(test) · {where} · {knob}'
                f'<br><span class="quee-setting" style="color:#555">{html.escape(v["setting"])}'
                f'{" (the full study is not built: see above)" if self.data.note else ""} · levels: '
                f'{html.escape(v["level_set"])} · update {update_ms:.0f} ms</span></div>')

    def _sync_controls(self, v: dict) -> None:
        """Every control from the state and its view."""
        s, lam_mode = self.state, self.state.mode == "lambda"
        self._syncing = True
        try:
            self.method_dropdown.value = s.method
            if list(self.level_dropdown.options) != list(self.model.level_sets):
                self.level_dropdown.options = list(self.model.level_sets)
            self.level_dropdown.value = s.level_set
            self.mode_toggle.value = s.mode
            self.mode_toggle.disabled = not v["has_lambda"]
            self.mode_toggle.tooltip = _TIPS["mode"] if v["has_lambda"] else f"{s.method} has no λ: budget only"
            pick = lam_mode and v["has_entry"]
            opts = [self.data.level_names[q] for q in self.model.level_sets[s.level_set]] if pick else [v["entry"]]
            if list(self.entry_dropdown.options) != opts:
                self.entry_dropdown.options = opts
            self.entry_dropdown.value = v["entry"]
            self.entry_dropdown.disabled = not pick
            if abs(self.budget_slider.value - s.budget) > 1e-12 * s.budget:
                self.budget_slider.value = s.budget
            self.budget_slider.disabled = lam_mode
            lam = v["lambda"] if v["has_lambda"] else s.lam
            self.lambda_slider.value = self.model.snap_lambda(lam)
            self.lambda_slider.disabled = not lam_mode
        finally:
            self._syncing = False

    def _on_control(self, change) -> None:
        if self._syncing:
            return
        owner, kw = change["owner"], {}
        if owner is self.budget_slider:
            kw["budget"] = float(self.budget_slider.value)
        elif owner is self.lambda_slider:
            kw["lam"] = float(self.lambda_slider.value)
        elif owner is self.mode_toggle:
            kw["mode"] = self.mode_toggle.value
        elif owner is self.method_dropdown:
            kw["method"] = self.method_dropdown.value
        elif owner is self.entry_dropdown:
            kw["entry"] = self.entry_dropdown.value
        elif owner is self.level_dropdown:
            kw["level_set"] = self.level_dropdown.value
            qs = self.model.level_sets[kw["level_set"]]
            if len(qs) < len(self.data.level_names) and not self.data.study_loaded:
                self.readout.value = ('<div class="quee-readout quee-loading">loading the study for a level '
                                      'subset (once; seconds when it is cached)…</div>')
        try:
            self.update(**kw)
        except ValueError as err:   # e.g. a method without knobs inside the chosen level set
            v = self.view()
            self._sync_controls(v)
            self.readout.value = (f'<div class="quee-readout quee-error" data-method="{v["method"]}">'
                                  f'{html.escape(str(err))}</div>' + self.readout_html(v))
