"""Batch reproduction: execute every numbered notebook with papermill.

``reproduce(config, OUT)`` runs ``notebooks/[0-9][0-9]_*.ipynb`` in order (kernel ``python3``,
working directory = the notebooks folder) with the parameters ``config``, ``fast``, ``out_dir``
and ``overrides``, plus per-notebook ones from a YAML file ``{notebook stem: {param: value}}``.
Executed notebooks go to ``OUT/notebooks``, figures to ``OUT/figures``, tables to ``OUT/tables``,
timings to ``OUT/reproduce.json``.

``python -m quee_kit.reproduce --store-tutorials`` re-executes the nbval-checked tutorials in
place with their default (fast) parameters and keeps their outputs, without papermill's
timing metadata so that diffs stay small.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .artifacts import atomic_write_json
from .config import ConfigError, read_yaml
from .locations import PROJECT_ROOT, resolve_path

__all__ = ["reproduce", "run_order", "store_tutorials", "notebook_paths", "NOTEBOOKS_DIR", "TUTORIALS", "KERNEL"]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
TUTORIALS = ["01_quickstart", "02_backbone_and_exits", "03_quantization_sensitivity"]  # nbval-checked
KERNEL = "python3"


def notebook_paths(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    return sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def _notebook_params(params_file, notebooks: list[Path]) -> dict[str, dict]:
    """Read ``{stem: {param: value}}``; an unknown stem or parameter is a one-line ConfigError."""
    import papermill as pm
    if params_file is None:
        return {}
    raw = read_yaml(Path(params_file).read_text(), str(params_file)) or {}
    by_stem = {nb.stem: nb for nb in notebooks}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: {params_file} must map notebook stems to {{param: value}}")
    for stem, params in raw.items():
        if stem not in by_stem:
            raise ConfigError(f"params: unknown notebook {stem!r} in {params_file} (known: {', '.join(by_stem)})")
        if not isinstance(params, dict):
            raise ConfigError(f"params: {stem} must be a mapping {{param: value}} (got {params!r})")
        known = pm.inspect_notebook(str(by_stem[stem]))
        for p in params:
            if p not in known:
                raise ConfigError(f"params: {stem} has no parameter {p!r} (known: {', '.join(known)})")
    return raw


def _parameters(nb: Path, given: dict) -> dict:
    """The notebook's parameters as it will run: its ``parameters`` cell's defaults, then ``given``."""
    import ast

    import papermill as pm
    values = {}
    for name, p in pm.inspect_notebook(str(nb)).items():
        try:
            values[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            values[name] = None   # an expression: the plan leaves what it decides to the notebook
    return {**values, **given}


def _studies(stem: str, p: dict) -> list[tuple]:
    """``(cfg, variants)`` of every study notebook ``stem`` reads with parameters ``p`` (its own calls,
    mirrored: ``tests/test_reproduce.py`` checks that the notebooks then build no model, cache or
    predictor). ``variants`` ``{}``: the model and caches only; ``None``: the default QuEE variants."""
    from .analysis import target_variants
    from .config import load_config
    from .dial_sweep import setting_configs

    def cfg(seed, fast=p.get("fast")):
        return load_config(p["config"], [*p.get("overrides", []), f"seed={seed}"], fast=bool(fast))
    if stem in ("01_quickstart", "02_backbone_and_exits", "03_quantization_sensitivity",
                "04_path_cache_and_costs"):
        return [(cfg(p["seed"]), {})]
    if stem == "05_error_predictors":
        return [(cfg(p["seed"]), target_variants(p["k_values"], knn=p["knn_targets"]))]
    if stem == "06_quee_vs_baselines":
        return [(cfg(s), None) for s in (list(p["seeds"]) or [p["seed"]])]
    if stem in ("07_budget_explorer", "08_conditions_for_success"):
        return [(cfg(p["seed"]), None)]
    if stem == "09_when_quee_wins":
        return setting_configs(p["config"], p["dials"], p["seeds"] or [p["seed"]], p.get("overrides", []),
                               bool(p["fast"]))
    return []


def run_order(planned: dict[str, list]) -> list[str]:
    """The order notebooks start in: the most studies x QuEE variants to evaluate first, then numbered order.

    Nothing waits by plan: two notebooks evaluating one study side by side take its lock in turn
    (:meth:`~quee_kit.store.Store.locked`, in :func:`~quee_kit.study_run.build_study`), so the second loads what
    the first stored instead of evaluating it again."""
    from .variants import QUEE_VARIANTS
    work = {stem: sum(len(QUEE_VARIANTS if v is None else v) for _, v in studies if v != {})
            for stem, studies in planned.items()}
    number = {stem: i for i, stem in enumerate(planned)}
    return sorted(planned, key=lambda st: (-work[st], number[st]))


def _artifact_files(cache: Path) -> set[str]:
    return {f.name for pattern in ("model-*", "cache-*", "predictors-*") for f in cache.glob(pattern)}


def _execute(nb: Path, target: Path, parameters: dict, threads: int | None) -> tuple[float, str | None]:
    """Run one notebook with papermill, its kernel on ``threads`` threads (None: the default);
    ``(seconds, None)`` or ``(seconds, one-line failure)``."""
    import os

    import papermill as pm
    if threads:  # the kernel inherits this process's environment
        os.environ.update({v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(target), parameters=parameters, kernel_name=KERNEL, cwd=str(nb.parent),
                            progress_bar=False)
    except pm.PapermillExecutionError as e:
        evalue = (str(e.evalue).strip().splitlines() or [""])[0]
        return time.perf_counter() - t0, f"{nb.name} failed in cell {e.cell_index} ({e.ename}: {evalue})"
    return time.perf_counter() - t0, None


def reproduce(config: str | Path, out_dir: str | Path, fast: bool = False, overrides: list[str] | None = None,
              params_file: str | Path | None = None, progress: bool = True, only: list[str] | None = None,
              notebooks_dir: str | Path = NOTEBOOKS_DIR) -> int:
    """Execute the notebooks (all, or the stems in ``only``); returns 0, or 1 after a failing cell.

    First every model, path cache and predictor the notebooks will read is built as one graph on the
    config's ``jobs`` worker processes (:func:`quee_kit.warm.warm`, the files of a serial run); then the
    notebooks run, ``jobs`` at a time (:func:`run_order`), each only loading them. A study two notebooks read is
    evaluated once: the second waits on the study's lock and loads its stored evaluation. After a failing
    notebook no other starts.
    ``reproduce.json`` holds the seconds of both phases and ``built_by_notebooks``, the artifacts a
    notebook still had to build (none, when the plan covers them).
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .config import cache_dir, load_config
    from .parallel import resolve_jobs
    from .warm import warm
    out = Path(out_dir).resolve()
    notebooks = [nb for nb in notebook_paths(notebooks_dir) if only is None or nb.stem in only]
    per_notebook = _notebook_params(params_file, notebook_paths(notebooks_dir))  # every stem is known
    common = {"config": str(resolve_path(config).resolve()), "fast": bool(fast), "out_dir": str(out),
              "overrides": list(overrides or [])}
    cfg = load_config(config, common["overrides"], fast=fast)
    params = {nb.stem: {**common, **per_notebook.get(nb.stem, {})} for nb in notebooks}
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    planned = {nb.stem: _studies(nb.stem, _parameters(nb, params[nb.stem])) for nb in notebooks}
    studies = [st for sts in planned.values() for st in sts]
    build = warm(studies, cfg.jobs, progress) if studies else []
    build_seconds = time.perf_counter() - t0
    before = _artifact_files(cache_dir(cfg))
    # a planned notebook finds everything built: its own worker processes (06 shares out seeds) would only load
    run_params = {stem: {**p, "overrides": [*p["overrides"], "jobs=1"]} if planned[stem] else p
                  for stem, p in params.items()}
    seconds, status, jobs = {}, "ok", min(resolve_jobs(cfg.jobs), max(len(notebooks), 1))
    # Side by side, each kernel gets one thread: the threads of two kernels spinning on the same cores cost
    # twice the CPU time. The tables are those of a serial run (tests/test_reproduce.py): what the notebooks
    # compute with torch (predictor calls) runs on one thread either way, the rest is numpy and pandas.
    threads = 1 if jobs > 1 else None
    t1 = time.perf_counter()
    bar = tqdm(total=len(notebooks), desc="notebooks", disable=not progress)
    order = run_order(planned)
    by_stem = {nb.stem: nb for nb in notebooks}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        queue, running = [by_stem[st] for st in order], {}
        while queue or running:
            while queue and len(running) < jobs and status == "ok":
                nb = queue.pop(0)
                running[pool.submit(_execute, nb, out / "notebooks" / nb.name, run_params[nb.stem], threads)] = nb
            if not running:
                break
            f = next(as_completed(running))
            nb = running.pop(f)
            secs, failure = f.result()
            seconds[nb.stem] = round(secs, 2)
            bar.update(1)
            if failure:
                print(f"reproduce: {failure}; executed notebook: {out / 'notebooks' / nb.name}", file=sys.stderr)
                status = f"failed: {nb.stem}" if status == "ok" else status
    bar.close()
    seconds = {nb.stem: seconds[nb.stem] for nb in notebooks if nb.stem in seconds}   # in notebook order
    summary = {"status": status, **common, "jobs": jobs, "build_seconds": round(build_seconds, 2),
               "notebook_seconds": round(time.perf_counter() - t1, 2), "seconds": seconds,
               "total_seconds": round(time.perf_counter() - t0, 2),
               "build": build,
               "built_by_notebooks": sorted(_artifact_files(cache_dir(cfg)) - before)}
    atomic_write_json(out / "reproduce.json", summary)
    return 0 if status == "ok" else 1


def _strip_run_metadata(path: Path) -> None:
    """Drop papermill's notebook/cell metadata and per-cell timings (they change on every run)."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
        if not cell.metadata.get("tags", True):  # papermill adds empty tag lists
            del cell.metadata["tags"]
    nbformat.write(nb, path)


def store_tutorials(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> None:
    """Re-execute :data:`TUTORIALS` in place with their defaults and keep the outputs (for nbval)."""
    import papermill as pm
    for stem in tqdm(TUTORIALS, desc="tutorials"):
        path = Path(notebooks_dir) / f"{stem}.ipynb"
        pm.execute_notebook(str(path), str(path), kernel_name=KERNEL, cwd=str(path.parent), progress_bar=False)
        _strip_run_metadata(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quee_kit.reproduce",
                                 description="Store tutorial outputs (use `quee-kit reproduce` for a batch run).")
    ap.add_argument("--store-tutorials", action="store_true", required=True,
                    help=f"re-execute {', '.join(TUTORIALS)} in place and keep their outputs")
    ap.parse_args(argv)
    store_tutorials()
    return 0


if __name__ == "__main__":
    sys.exit(main())
