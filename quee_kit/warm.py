"""Every model, path cache and predictor a batch of studies will read, built first, on every core.

Run one after another, each study trains, caches and fits what it lacks when it first asks, and each of
those pieces runs on one torch thread (its bits must not depend on the core count), so one core idles.
:func:`warm` takes the whole list up front as a graph of tasks (train a seed; then each split's path
cache; then each predictor config's cross-fitted fits) and runs it on ``jobs`` worker processes, the
longest remaining chain first. Every task calls what a study calls (:func:`~quee_kit.prepare.prepare`,
:func:`~quee_kit.study_run.store_predictors`), keyed and stored the same way, so the files are those of the
serial run and the studies afterwards only load them.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

from .artifacts import content_hash
from .config import Config, key_fields
from .parallel import one_thread, resolve_jobs, stop_pool, warn_workers_failed
from .registry import PREDICTOR_KINDS

__all__ = ["Task", "study_tasks", "run_graph", "warm", "estimated_seconds", "release_loaded"]


@dataclass(frozen=True)
class Task:
    """``fn(*args)`` once ``deps`` (task names) are done. Tasks with one ``name`` are one task; ``cost``
    (estimated seconds on one core) only orders the work; ``label`` is for people."""
    name: str
    fn: Callable
    args: tuple
    deps: tuple[str, ...] = ()
    cost: float = 1.0
    label: str = ""


# Seconds on one core of a 2-core AMD EPYC (torch 2.13 CPU, both cores busy), for the default ViT on 28x28
# digits: they only decide which ready task starts first (the longest chain), never what is computed.
SECONDS_PER_TRAIN_SAMPLE_EPOCH = 0.00032    # 30 epochs x 6,000 digits: 57 s (blocks on oneDNN: quee_kit.gemm)
SECONDS_PER_NODE_SAMPLE = 0.000018          # 461 nodes x 2,000 digits: 17 s in a two-worker build


def _sizes(cfg: Config) -> tuple[int, int, int]:
    return tuple(cfg.data.sizes) if cfg.data.sizes else (6000, 2000, 2000)


def estimated_seconds(cfg: Config, kind: str, split: str = "calib", pcfg=None) -> float:
    """Rough single-core seconds of one task of ``kind`` (``train``, ``cache``, ``fit``)."""
    n_train, n_calib, n_test = _sizes(cfg)
    if kind == "train":
        return cfg.model.epochs * n_train * SECONDS_PER_TRAIN_SAMPLE_EPOCH
    if kind == "cache":
        from .paths import PathTree
        from .quant import config_levels
        nodes = len(PathTree(config_levels(cfg.quant), cfg.model.depth, cfg.paths.family))
        return nodes * (n_calib if split == "calib" else n_test) * SECONDS_PER_NODE_SAMPLE
    from . import predictors  # noqa: F401  (registers the predictor kinds, each with its seconds per fit)
    return (pcfg.folds + 1) * PREDICTOR_KINDS.get(pcfg.kind).fit_seconds(pcfg) * n_calib / 2000


def _train(cfg: Config) -> None:
    from .prepare import prepare
    prepare(dataclasses.replace(cfg, jobs=1), splits=(), progress=False)


def _cache(cfg: Config, split: str) -> None:
    from .prepare import prepare
    prepare(dataclasses.replace(cfg, jobs=1), splits=(split,), progress=False)


# In a worker: the calib cache the last fit task loaded (its features computed), by its cache task's name. The
# fits of one seed mostly follow one another, and the next one then starts without loading it again.
_LOADED: dict = {}


def _fit(cfg: Config, pcfg, cache_task: str) -> None:
    from .prepare import prepare
    from .study_run import store_predictors
    cfg = dataclasses.replace(cfg, jobs=1)
    if cache_task not in _LOADED:
        _LOADED.clear()
        _LOADED[cache_task] = prepare(cfg, splits=("calib",), progress=False)
    store_predictors(cfg, [pcfg], _LOADED[cache_task])


def release_loaded() -> None:
    """Drop the calib cache a fit task left loaded in this process (run_graph does, after running here)."""
    _LOADED.clear()


def study_tasks(cfg: Config, variants: dict | None = None) -> list[Task]:
    """The tasks that leave everything :func:`~quee_kit.study_run.run_study` of ``cfg`` with ``variants``
    (``None``: :data:`~quee_kit.study.QUEE_VARIANTS`; ``{}``: no predictors) reads on disk: the trained
    model, the calib and test path caches, and one task per distinct predictor config. Names hash the
    config sections each artifact is keyed on, so two studies that share a model (or a cache, or a fit)
    share that task."""
    from .study import QUEE_VARIANTS, predictor_configs
    model = "train " + content_hash(dataclasses.asdict(cfg.data), dataclasses.asdict(cfg.model), cfg.seed,
                                    cfg.cache_dir, cfg.device)[:16]
    seed = f"seed {cfg.seed}, model {model[6:12]}"   # the model's tag tells apart settings of one seed
    caches = {split: f"cache {split} " + content_hash(model, split, key_fields(cfg.quant),
                                                      key_fields(cfg.paths))[:16] for split in ("calib", "test")}
    tasks = [Task(model, _train, (cfg,), (), estimated_seconds(cfg, "train"), f"train, {seed}")]
    tasks += [Task(name, _cache, (cfg, split), (model,), estimated_seconds(cfg, "cache", split),
                   f"{split} cache, {seed}") for split, name in caches.items()]
    for pcfg in predictor_configs(cfg.predictor, QUEE_VARIANTS if variants is None else variants).values():
        name = "fit " + content_hash(caches["calib"], dataclasses.asdict(pcfg))[:16]
        label = f"{PREDICTOR_KINDS.get(pcfg.kind).describe(pcfg)} predictors, {seed}"
        tasks.append(Task(name, _fit, (cfg, pcfg, caches["calib"]), (caches["calib"],),
                          estimated_seconds(cfg, "fit", pcfg=pcfg), label))
    return tasks


def _unique(tasks) -> dict[str, Task]:
    out: dict[str, Task] = {}
    for t in tasks:
        out.setdefault(t.name, t)
    for t in out.values():
        for d in t.deps:
            if d not in out:
                raise ValueError(f"task {t.label or t.name!r} depends on {d!r}, which is not in the graph")
    return out


def _chain_lengths(tasks: dict[str, Task]) -> dict[str, float]:
    """Each task's cost plus the longest chain of tasks that wait for it."""
    after: dict[str, list[str]] = {n: [] for n in tasks}
    for t in tasks.values():
        for d in t.deps:
            after[d].append(t.name)
    memo: dict[str, float] = {}

    def chain(n: str) -> float:
        if n not in memo:
            memo[n] = tasks[n].cost + max((chain(m) for m in after[n]), default=0.0)
        return memo[n]
    return {n: chain(n) for n in tasks}


def _start_worker() -> None:
    import signal

    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the main process's to answer (parallel.py)
    torch.set_num_threads(1)


def _timed(fn: Callable, args: tuple) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def run_graph(tasks, jobs: int | None = 0, progress: bool = True) -> dict[str, float]:
    """Run every task once, after its dependencies, on ``jobs`` spawned worker processes (0: one per
    core), each on one torch thread; the ready task with the longest chain behind it starts first. With
    one job (or under ``torchrun``) the tasks run here, one after another, in that order. Returns the
    seconds of each task by name. A task that raises stops the graph and re-raises here."""
    from tqdm.auto import tqdm

    from . import distributed
    graph = _unique(tasks)
    chain = _chain_lengths(graph)
    todo = sorted(graph, key=lambda n: -chain[n])
    done: dict[str, float] = {}
    n_workers = min(resolve_jobs(jobs), len(graph))
    bar = tqdm(total=len(graph), desc="build (models, caches, predictors)", disable=not progress, leave=False)

    def ready():
        return [n for n in todo if all(d in done for d in graph[n].deps)]

    def serial():
        with one_thread():
            while todo:
                n = ready()[0]
                todo.remove(n)
                done[n] = _timed(graph[n].fn, graph[n].args)
                bar.update(1)

    if n_workers <= 1 or distributed.is_active():
        serial()
        release_loaded()   # here, not in a worker: nothing kept past the graph
        bar.close()
        return done
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_start_worker) as pool:
            running = {}
            try:
                while todo or running:
                    for n in ready()[:n_workers - len(running)]:
                        todo.remove(n)
                        running[pool.submit(_timed, graph[n].fn, graph[n].args)] = n
                        bar.set_postfix_str(graph[n].label or n, refresh=True)
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        done[running[f]] = f.result()   # raises first: a task whose worker died stays running
                        del running[f]
                        bar.update(1)
            except BaseException:
                todo.extend(running.values())   # a broken pool: these are run again below
                stop_pool(pool)                 # an interrupt: no worker finishes its piece first
                raise
    except BrokenProcessPool:
        warn_workers_failed()
        todo.sort(key=lambda n: -chain[n])
        serial()
        release_loaded()
    bar.close()
    return done


def warm(studies, jobs: int | None = 0, progress: bool = True) -> list[dict]:
    """Build what every ``(cfg, variants)`` study of ``studies`` reads (:func:`study_tasks`), shared out
    over ``jobs`` processes (:func:`run_graph`). Returns one row per task: ``task`` (its label), ``name``
    and ``seconds``, in the order they finished."""
    tasks = [t for cfg, variants in studies for t in study_tasks(cfg, variants)]
    graph = _unique(tasks)
    seconds = run_graph(tasks, jobs, progress)
    return [{"task": graph[n].label or n, "name": n, "seconds": round(s, 2)} for n, s in seconds.items()]
