"""Budget explorer start-up and update time: loading the stored points, building the widget, then
50 budget-slider steps and 50 λ-slider steps, median / p95 in ms.

The budget: one update under 50 ms; the page interactive within 5 s (imports + stored points +
widget). Uses the full study's stored points when they exist, else the fast one's (``--full`` /
``--fast`` force either; a missing artifact is built first: minutes for the full study). Also times
what is not a slider step (a first method switch, a first level subset, which loads the live study)
and, for comparison, a full redraw of the same figure to PNG.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/bench_widgets.py
"""
import argparse
import io
import sys
import time

t_start = time.perf_counter()
import numpy as np  # noqa: E402

from quee_kit.explorer import load_explorer_data  # noqa: E402
from quee_kit.explorer.widgets import BudgetExplorer  # noqa: E402

t_imports = time.perf_counter() - t_start


def timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return (time.perf_counter() - t) * 1000


def summary(name: str, ms: list[float]) -> str:
    return f"{name:<34} n={len(ms):3d}  median {np.median(ms):6.1f} ms  p95 {np.percentile(ms, 95):6.1f} ms  " \
           f"max {np.max(ms):6.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="the full study (built if missing)")
    g.add_argument("--fast", action="store_true", help="the fast (CI) study")
    ap.add_argument("--config", default="configs/mnist10k.yaml")
    args = ap.parse_args()
    fast = True if args.fast else (False if args.full else None)
    t0 = time.perf_counter()
    data = load_explorer_data(args.config, fast=fast)
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    ex = BudgetExplorer(data)
    t_widget = time.perf_counter() - t
    print(f"{data.setting}; {sum(len(m.knobs) for m in data.methods.values())} knobs, "
          f"{len(data.methods['quee'].knobs)} QuEE knobs; torch imported: {'torch' in sys.modules}")
    print(f"start-up: imports {t_imports:.2f} s + stored points {t_load:.2f} s + widget {t_widget:.2f} s "
          f"= {t_imports + t_load + t_widget:.2f} s")

    budgets = np.geomspace(ex.model.b_min, ex.model.b_max, 50)
    lams = [v for _, v in ex.lambda_slider.options][:: max(1, len(ex.lambda_slider.options) // 50)][:50]
    rows = []
    # first sweep: every knob is new (panels drawn); second: the memoized steady state
    for sweep in ("first sweep", "second sweep"):
        ms = [timed(ex.update, budget=float(b), method="quee") for b in budgets]
        rows.append(summary(f"budget slider, {sweep}", ms))
        ms = [timed(ex.update, lam=float(lam), method="quee") for lam in lams]
        rows.append(summary(f"λ slider, {sweep}", ms))
    ms = [timed(ex.update, budget=float(b), method="best-single") for b in budgets]
    rows.append(summary("budget slider, best-single", ms))
    ex.update(method="quee", budget=0.05)
    ms = [timed(ex.update, method=m) for m in ex.names]
    rows.append(summary("method switch (each method once)", ms))
    second = list(ex.model.level_sets)[1]
    rows.append(f"{'first use of a level subset':<34} {timed(ex.update, level_set=second):8.0f} ms "
                f"(loads the live study, computes the subset's points; then memoized)")
    ms = [timed(ex.update, budget=float(b)) for b in budgets]
    rows.append(summary(f"budget slider, levels {second!r}"[:34], ms))

    def full_redraw():
        fig = ex.snapshot()
        fig.savefig(io.BytesIO(), format="png")
    ms = [timed(full_redraw) for _ in range(10)]
    rows.append(summary("full redraw to PNG (no blit)", ms))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
