"""Independent work on every core, with the numbers of a serial run.

Training, predictor fits and path-cache chunks are each run on **one** torch thread (so their bits do
not depend on the core count), which leaves the other cores idle; :func:`run_jobs` gives each core one
of those independent pieces in its own (spawned) worker process. ``jobs=1`` runs the same calls, on one
thread, in this process: the results are identical either way (``tests/test_parallel.py``).
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

import torch

from .threads import one_thread  # re-exported: the callers that share work out use it too

__all__ = ["cores", "resolve_jobs", "one_thread", "run_jobs", "stop_pool", "warn_workers_failed"]


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None) -> int:
    """``jobs`` worker processes; 0 or None: one per core."""
    return int(jobs) if jobs else cores()


def warn_workers_failed() -> None:
    """The warning given when spawned workers die before any work (the work then runs in this process):
    e.g. a script without an ``if __name__ == "__main__":`` guard, which spawned workers re-run."""
    warnings.warn("jobs: worker processes could not start (does the calling script lack an "
                  "`if __name__ == '__main__':` guard?); running the work in this process")


_SHARED: Any = None


def _start_worker(payload: bytes) -> None:
    global _SHARED
    # Ctrl-C reaches the terminal's whole process group: the main process alone answers it (it stops
    # the workers), so that it is one line, not a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SHARED = pickle.loads(payload)
    torch.set_num_threads(1)


def _call(fn: Callable, item):
    return fn(_SHARED, item)


def run_jobs(fn: Callable[[Any, Any], Any], items: Iterable, jobs: int | None = 1, shared: Any = None,
             desc: str | None = None) -> list:
    """``[fn(shared, item) for item in items]``, in order, on one torch thread per call.

    With ``jobs`` > 1 (0: one per core) and more than one item, the calls run in that many spawned
    worker processes; ``shared`` is sent once to each worker (a copy by plain pickle: this process's
    tensors stay where they are), ``fn`` must be importable (a module-level
    function). Under ``torchrun`` every rank already has its core: the calls run in this process.
    ``desc``: show a progress bar with that label.
    """
    from tqdm.auto import tqdm
    from . import distributed
    items = list(items)
    n = min(resolve_jobs(jobs), len(items))
    if n <= 1 or distributed.is_active():
        with one_thread():
            return [fn(shared, it) for it in tqdm(items, desc=desc, disable=desc is None, leave=False)]
    ctx = multiprocessing.get_context("spawn")
    # Plain pickle, by value: multiprocessing's own pickler would move this process's tensors to shared
    # memory in place, leaving every numpy view already taken of them pointing at freed memory.
    payload = pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_start_worker, initargs=(payload,))
    try:
        out = list(tqdm(pool.map(_call, [fn] * len(items), items), total=len(items), desc=desc,
                        disable=desc is None, leave=False))
    except BrokenProcessPool:
        pool.shutdown(wait=True)
        warn_workers_failed()
        with one_thread():
            return [fn(shared, it) for it in items]
    except BaseException:   # Ctrl-C, SIGTERM (the CLI raises there), an error: no worker outlives the call
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    return out


def stop_pool(pool: ProcessPoolExecutor, grace: float = 2.0) -> None:
    """Terminate a pool's workers now (SIGTERM, then SIGKILL after ``grace`` seconds), not after the piece
    each is running: what an interrupted run needs (``shutdown`` alone waits for the running pieces)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())   # the stdlib keeps no public list
    for p in procs:
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.join(grace)
        if p.is_alive():
            p.kill()
            p.join(grace)
