"""The budget explorer (notebook 07): ``state`` (pure numbers) | ``figure`` (matplotlib, Agg) |
``widgets`` (the ipywidgets glue). ``points`` stores what it shows as an artifact and
(with the live study, torch, on first use) recomputes a method's table on a level subset. Importing this package imports neither torch nor
ipywidgets; ``from quee_kit.explorer.widgets import BudgetExplorer`` for the widget.
"""
from .points import ExplorerData, build_explorer_data, load_explorer_data
from .state import ExplorerModel, OperatingPoint

__all__ = ["ExplorerData", "ExplorerModel", "OperatingPoint", "build_explorer_data", "load_explorer_data"]
