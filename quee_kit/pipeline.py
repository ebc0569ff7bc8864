"""``quee-kit run``: where the config is taken apart and the machinery meets the science.

:func:`run_pipeline` reads a whole :class:`~quee_kit.config.Config` and hands each stage what it needs:
stage one (:func:`~quee_kit.prepare.prepare`, which takes the config apart into data, model, quant and
paths sections) for every seed, the prepared pieces and the predictor and eval sections to
:func:`~quee_kit.study_run.build_study`, and the studies and eval fields to the tables
(:mod:`quee_kit.evaluate`, :mod:`quee_kit.conditions`); then the five files are written together.
Below this module no function receives the whole config (``tests/test_layers.py::test_cfg_moves_down``).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .artifacts import atomic_write_csv, atomic_write_json
from .conditions import decision_summary, room_summary, room_table
from .config import Config, ConfigError
from .evaluate import budget_tables, core_auc, curves_table, headline, oracle_gap_share, quality_table
from .outputs import staged_output
from .parallel import resolve_jobs
from .prepare import load_data, peak_memory_mb, prepare
from .study import Study, c_min_sat
from .study_run import build_study
from .variants import ALL_VARIANTS
from .warm import warm

__all__ = ["run_pipeline", "run_studies", "check_config_against_data"]


def check_config_against_data(cfg: Config) -> None:
    """Checks that need the split sizes (cheap: loads the arrays, trains nothing)."""
    data = load_data(cfg.data, cfg.model)
    pcfg = cfg.predictor
    fold = len(data.calib) * (pcfg.folds - 1) // pcfg.folds
    if pcfg.targets == "kmeans" and pcfg.K > fold:
        raise ConfigError(f"config: predictor.K must be <= the calib samples of a training fold ({fold}) "
                          f"(got {pcfg.K})")
    if pcfg.folds > len(data.calib):
        raise ConfigError(f"config: predictor.folds must be <= the calib size {len(data.calib)} "
                          f"(got {pcfg.folds})")


def run_studies(cfg: Config, seeds, progress: bool = True, variants: dict | None = None) -> list[Study]:
    """The study of every seed: stage one (:func:`~quee_kit.prepare.prepare`), then
    :func:`~quee_kit.study_run.build_study` on its pieces. With several seeds, each seed's model, caches and
    predictors are first built (where not cached) in ``cfg.jobs`` worker processes
    (:func:`~quee_kit.warm.warm`): every piece runs on one thread either way, so the studies are the serial
    ones."""
    seeds = list(seeds)
    if len(seeds) > 1 and resolve_jobs(cfg.jobs) > 1:
        warm([(dataclasses.replace(cfg, seed=s), variants or None) for s in seeds], cfg.jobs, progress)
    studies = []
    for seed in tqdm(seeds, desc="seeds", disable=not progress or len(seeds) == 1):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        one = dataclasses.replace(cfg, seed=seed)
        prep = prepare(one, progress=progress)
        studies.append(build_study(prep, one.predictor, one.eval, seed, progress, variants, t0=t0))
    return studies


def run_pipeline(cfg: Config, out: Path, progress: bool = True) -> dict:
    """``quee-kit run``: every seed of ``cfg.eval.seeds``; writes curves.csv, budgets.csv,
    predictor_quality.csv, room.csv and summary.json into ``out``, all five at once at the end
    (:func:`~quee_kit.outputs.staged_output`: a reader never sees a mix of two runs' files)."""
    check_config_against_data(cfg)
    t0 = time.perf_counter()
    with staged_output(out) as stage:
        summary, budgets = _pipeline(cfg, stage, progress, t0)
    if progress:
        pooled = budgets[budgets.seed == "all"]
        show = pooled[pooled.method.isin(["quee", "best-single", "best-static", "oracle", "static-quant",
                                          "ee-confidence"])]
        print(show.pivot_table(index="method", columns="budget", values="accuracy").round(4).to_string())
        print("model per seed: " + ", ".join(f"{seed}: {src}" for seed, src in zip(cfg.eval.seeds, summary["model_source"])))
        print(f"wrote {out}/curves.csv, budgets.csv, predictor_quality.csv, room.csv, summary.json in {summary['timings']['total_seconds']:.0f} s")
    return summary


def _pipeline(cfg: Config, out: Path, progress: bool, t0: float) -> tuple[dict, pd.DataFrame]:
    """The studies of :func:`run_pipeline` and its five files, written into ``out``: (summary, budgets)."""
    variants = None if cfg.eval.variants is None else {k: ALL_VARIANTS[k] for k in cfg.eval.variants}
    studies = run_studies(cfg, cfg.eval.seeds, progress, variants)
    budgets, auc = budget_tables(studies, cfg.eval.budgets, cfg.eval.bootstrap, cfg.eval.auc_range)
    curves = curves_table(studies)
    atomic_write_csv(out / "curves.csv", curves)
    atomic_write_csv(out / "budgets.csv", budgets)
    atomic_write_csv(out / "predictor_quality.csv", quality_table(studies, cfg.eval.budgets))
    # room for per-input precision (reads these studies)
    room = room_table(studies)
    atomic_write_csv(out / "room.csv", room)
    cmins = [c_min_sat(s) for s in studies]
    auc_core = core_auc(studies)

    def finite(x):     # JSON has no NaN: an AUC that is infeasible in its range is written as null
        return None if x is None or not np.isfinite(x) else float(x)

    def auc_summary(a):
        return {k: {"mean": finite(np.mean(v)), "std": finite(np.std(v)), "per_seed": [finite(x) for x in v]}
                for k, v in a.items()}

    def gap_shares(a):
        return {k: finite(x) for k, x in oracle_gap_share(a).items()}

    summary = {
        "config": dataclasses.asdict(cfg),
        "seeds": list(cfg.eval.seeds),
        "split_sizes": {s: len(studies[0].prep.data.split(s)) for s in ("train", "calib", "test")},
        "reference_accuracy": {"test": [float(s.points["static-quant"]["acc_test"].iloc[0]) for s in studies],
                               "calib": [float(s.points["static-quant"]["acc_calib"].iloc[0]) for s in studies]},
        "c_min": [c[0] for c in cmins], "c_sat": [c[1] for c in cmins],
        "tree_nodes": len(studies[0].prep.tree),
        "model_source": [s.prep.model_source for s in studies],   # "shipped model" or "trained here", per seed
        "predictor_call_cost": {k: studies[0].methods[k].call_cost for k in studies[0].predictors},
        "auc_range": list(cfg.eval.auc_range),
        "auc_core": auc_summary(auc_core),
        "auc": auc_summary(auc),
        "oracle_gap_share_core": gap_shares(auc_core),
        "oracle_gap_share": gap_shares(auc),
        "room": room_summary(room),
        "room_decisions": decision_summary(room),
        "vs_best_static": headline(budgets, list(studies[0].predictors)),
        "predictors": {name: [s.quality.get(name) for s in studies] for name in studies[0].quality},
        "timings": {"total_seconds": time.perf_counter() - t0, "per_seed": [s.timings for s in studies],
                    "peak_memory_mb": peak_memory_mb()},
    }
    atomic_write_json(out / "summary.json", summary)
    return summary, budgets
