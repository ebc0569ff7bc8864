"""The explorer's page (notebook 07, also served by Voilà): a status line, the build's messages while the
stored points are built (cleared when done), a *study* control offering each setting whose points are
stored (fast | full), and the :class:`~.widgets.BudgetExplorer` of the setting shown.

A Voilà page runs no code a visitor types, so every choice it offers is a control here, not a hint to
edit a cell. ``ExplorerPage()`` only makes widgets (show ``page.widget`` in its own cell: Voilà shows a
cell's output when the cell is done, so the status shows while the next cell loads); ``page.open(...)``
loads (or, the first time, builds) the points and shows the explorer.
"""
from __future__ import annotations

import html
import time

from ..artifacts import ArtifactError
from ..config import load_config
from .points import explorer_artifact, load_explorer_data

__all__ = ["ExplorerPage"]

SETTINGS = {True: "fast", False: "full"}    # ``fast`` -> the control's label

_LOADING = ('<p><b>Loading the budget explorer…</b> (stored points: a few seconds; the first time they are '
            'built from the study: about 2 min for the fast setting)</p>')


class ExplorerPage:
    """``widget``: status line | study control | build messages | the explorer. ``explorer``: the
    :class:`~.widgets.BudgetExplorer` shown (None before :meth:`open`)."""

    def __init__(self):
        import ipywidgets as w

        # a tooltip on every widget: none renders as title="null"
        self.status = w.HTML(_LOADING, tooltip="which study the explorer shows")
        self.status.add_class("quee-loading")
        self.study = w.ToggleButtons(options=[("fast", True)], description="study", disabled=True,
                                     tooltip="the study whose stored points the explorer shows",
                                     tooltips=["the reduced (CI) setting", "the full study"][:1],
                                     style={"description_width": "64px"}, layout=w.Layout(display="none"))
        self.study.add_class("quee-study")
        self.log = w.Output()       # print and tqdm of a first build, cleared once it is done
        self.body = w.Box()
        self.widget = w.VBox([self.status, self.study, self.log, self.body])
        self.explorer = None
        self._args: dict = {}
        self._syncing = False
        self.study.observe(self._on_study, names="value")

    def open(self, config: str = "configs/mnist10k.yaml", fast: bool | None = None, seed: int = 0,
             overrides=(), budget: float = 0.05) -> None:
        """Load the stored points (``fast=None``: the full study's when stored, else the fast one's) and
        show the explorer; points not stored yet are built first, their messages shown until done."""
        self._args = {"config": config, "seed": seed, "overrides": list(overrides), "budget": budget}
        t0, built = time.perf_counter(), False
        try:
            data = load_explorer_data(config, fast=fast, seed=seed, overrides=overrides, build=False)
        except ArtifactError:
            built = True
            with self.log:
                data = load_explorer_data(config, fast=fast, seed=seed, overrides=overrides)
            self.log.clear_output()
        self._show(data, f" Built in {time.perf_counter() - t0:.0f} s (stored: later visits load it in "
                         f"seconds)." if built else "")

    def stored(self) -> list[bool]:
        """The settings (``fast`` values, full first) whose explorer points are stored for this config."""
        a = self._args
        return [f for f in (False, True) if explorer_artifact(load_config(
            a["config"], [*a["overrides"], f"seed={a['seed']}"], fast=f, validate=False))[0].exists()]

    def _show(self, data, built: str = "") -> None:
        from .widgets import BudgetExplorer

        old = self.explorer
        method = old.state.method if old is not None else "quee"
        self.explorer = BudgetExplorer(data, budget=self._args["budget"], method=method)
        self.body.children = [self.explorer.widget]
        stored = self.stored()
        if data.fast not in stored:      # e.g. a read-only cache: what is shown is an option all the same
            stored.append(data.fast)
        self.status.remove_class("quee-loading").add_class("quee-loaded")
        self.status.value = (f'<p>Showing the <b>{html.escape(data.setting)}</b>.{built} '
                             f'{html.escape(data.note)}</p>')
        labels = [(SETTINGS[f], f) for f in sorted(stored)]
        tips = {True: "the reduced (CI) setting", False: "the full study"}
        self._syncing = True
        try:
            self.study.options = labels
            self.study.tooltips = [tips[f] for _, f in labels]
            self.study.value = data.fast
        finally:
            self._syncing = False
        self.study.disabled = len(labels) < 2
        self.study.layout.display = None if len(labels) > 1 else "none"

    def _on_study(self, change) -> None:
        if self._syncing or self.explorer is None or change["new"] == self.explorer.data.fast:
            return
        a = self._args
        self.status.value = f'<p>Loading the {SETTINGS[change["new"]]} study…</p>'
        data = load_explorer_data(a["config"], fast=change["new"], seed=a["seed"], overrides=a["overrides"],
                                  build=False)
        self._show(data)
