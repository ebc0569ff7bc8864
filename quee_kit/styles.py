"""What every figure of the kit shares: axis labels, and one colour and marker per method.

Kept apart from :mod:`quee_kit.plots` (which re-exports all of it) because it imports nothing heavy:
the explorer page uses it and must be interactive within seconds (seaborn alone takes ~1 s to import).
"""
from __future__ import annotations

__all__ = ["ACCURACY_LABEL", "EXIT_LABEL", "LEVEL_LABEL", "METHOD_STYLES", "LEVEL_COLORS", "INFEASIBLE_COLOR",
           "cost_label", "method_style", "level_palette", "setting_label"]

ACCURACY_LABEL = "accuracy (fraction correct)"
EXIT_LABEL = "exit (after block t)"
LEVEL_LABEL = "precision level (weight bits / activation bits)"


# One colour and marker per method, by name (never list order), in every figure and the explorer: QuEE
# warm, baselines cool, bounds dashed; Okabe-Ito/Tol colours, every pair >= 20 CIELAB units apart (tested).
METHOD_STYLES = {name: {"color": color, "marker": marker, **({"ls": "--"} if name.startswith("oracle") else {})}
                 for name, color, marker in [
    ("quee", "#D55E00", "o"), ("quee-binned", "#EE6677", "d"), ("quee-mlp", "#999933", "8"),
    ("quee-raw", "#E69F00", "v"), ("quee-nohist", "#CC79A7", "^"),
    ("quee-exit-only", "#882255", "<"), ("quee-quant-only", "#661100", ">"), ("quee-probe", "#DC267F", "2"),
    ("static-quant", "#0072B2", "s"),
    ("ee-confidence", "#56B4E9", "D"), ("ee-confidence@q", "#009E73", "P"),
    ("ee-confidence-perexit", "#117733", "X"), ("best-single", "#000000", "h"), ("random", "#999999", "x"),
    ("static-schedule", "#5F9EA0", "+"), ("ee-confidence-schedule", "#7A5195", "1"), ("best-static", "#1F3A5F", "H"),
    ("oracle", "#332288", "*"), ("oracle-uniform", "#AA4499", "p")]}
_OTHER_STYLE = {"color": "#777777", "marker": "."}

# Precision levels (reference first) get colours of their own, never a method's: viridis from dark to
# light, so more bits read darker; each is >= 15 CIELAB units from every method colour and >= 30 from
# the other levels (tested). A figure that colours levels must not suggest a method.
LEVEL_COLORS = ["#450457", "#3d4e8a", "#2a768e", "#1e9b8a", "#46c06f", "#95d840"]
INFEASIBLE_COLOR = "0.65"   # a point over budget on calib (its cheapest knob shown): grey and small


def method_style(name: str) -> dict:
    """``{"color", "marker", "ls"}`` of a method (a name outside the map gets a neutral grey)."""
    return {"ls": "-", **METHOD_STYLES.get(name, _OTHER_STYLE)}


def level_palette(level_names) -> dict[str, str]:
    """``{level name: colour}`` from :data:`LEVEL_COLORS`, in the given order (reference first); more
    levels than colours reuse them from the start."""
    return {name: LEVEL_COLORS[i % len(LEVEL_COLORS)] for i, name in enumerate(level_names)}


def setting_label(fast: bool, seeds, n_test: int, n_train: int | None = None) -> str:
    """What a figure title or readout says about the study it shows: ``fast setting, seed 0, test N=600``."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    seed = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"
    train = f", train N={n_train:,}" if n_train else ""
    return f"{'fast' if fast else 'full'} setting, {seed}{train}, test N={n_test:,}"


def cost_label(ref: str | None = None) -> str:
    """Axis label of a normalized cost; ``ref``: the reference level's name (the costliest level)."""
    return f"cost (normalized BOPs, 1.0 = full model at {ref or 'the reference level'})"
