"""Budget explorer update time: 50 budget-slider steps and 50 λ-slider steps, median / p95 in ms.

The budget SPEC asks for: one update under 50 ms on the default cache. Uses the default study
(configs/mnist10k.yaml) when its trained model is already cached, else the fast one; ``--full`` /
``--fast`` force either (``--full`` builds what is missing: minutes). Also times what is not a
slider step (a first method switch, a first level set) and, for comparison, a full redraw of the
same figure to PNG (what re-displaying a figure in an ``Output`` widget would cost at least).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/bench_widgets.py
"""
import argparse
import dataclasses
import io
import time

import numpy as np

from quee_kit.artifacts import content_hash
from quee_kit.config import load_config
from quee_kit.data import load_dataset
from quee_kit.evaluate import run_study
from quee_kit.pipeline import _cache_dir
from quee_kit.widgets import BudgetExplorer


def model_is_cached(cfg) -> bool:
    """Same key as quee_kit.pipeline.prepare (if that drifts, this says False and the fast study is used)."""
    data = load_dataset(cfg.data.name, split_seed=cfg.data.split_seed,
                        sizes=tuple(cfg.data.sizes) if cfg.data.sizes else None)
    key = content_hash("model", dataclasses.asdict(cfg.model), data.digest, cfg.seed)
    return (_cache_dir(cfg) / f"model-{key[:16]}.pt").exists()


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
    g.add_argument("--full", action="store_true", help="the default study (built if missing)")
    g.add_argument("--fast", action="store_true", help="the fast (CI) study")
    ap.add_argument("--config", default="configs/mnist10k.yaml")
    args = ap.parse_args()
    full_cfg = load_config(args.config)
    fast = args.fast or (not args.full and not model_is_cached(full_cfg))
    cfg = load_config(args.config, fast=True) if fast else full_cfg
    t0 = time.perf_counter()
    study = run_study(cfg, progress=True)
    n_test = study.prep.caches["test"].n
    print(f"study: {args.config} ({'fast' if fast else 'default'}), test N={n_test}, "
          f"{len(study.prep.tree)} tree nodes, {len(study.points['quee'])} QuEE knobs; "
          f"{time.perf_counter() - t0:.1f} s to load/build")

    t = time.perf_counter()
    ex = BudgetExplorer(study)
    print(f"explorer construction (pre-renders {len(ex.names)} curve backgrounds): "
          f"{(time.perf_counter() - t) * 1000:.0f} ms")

    budgets = np.geomspace(ex.c_min, 0.3, 50)
    lams = np.geomspace(1e-3, 10, 50)
    rows = []
    # first sweep: every knob is new (outcomes and panels computed); second: the memoized steady state
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
    second = list(ex.level_sets)[1]
    rows.append(f"{'first use of a level set':<34} {timed(ex.update, level_set=second):8.0f} ms "
                f"(computes its calib/test points, then memoized)")
    ms = [timed(ex.update, budget=float(b)) for b in budgets]
    rows.append(summary(f"budget slider, levels {second!r}"[:34], ms))

    def full_redraw():
        fig = ex.snapshot(dpi=72)
        fig.savefig(io.BytesIO(), format="png")
    ms = [timed(full_redraw) for _ in range(10)]
    rows.append(summary("full redraw to PNG (no blit)", ms))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
