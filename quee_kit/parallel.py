"""Independent work on every core, with the numbers of a serial run.

Training, predictor fits and path-cache chunks are each run on **one** torch thread (so their bits do
not depend on the core count), which leaves the other cores idle; :func:`run_jobs` gives each core one
of those independent pieces in its own (spawned) worker process. ``jobs=1`` runs the same calls, on one
thread, in this process: the results are identical either way (``tests/test_parallel.py``).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

import torch

__all__ = ["cores", "resolve_jobs", "one_thread", "run_jobs", "warn_workers_failed"]


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None) -> int:
    """``jobs`` worker processes; 0 or None: one per core."""
    return int(jobs) if jobs else cores()


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def warn_workers_failed() -> None:
    """The warning given when spawned workers die before any work (the work then runs in this process):
    e.g. a script without an ``if __name__ == "__main__":`` guard, which spawned workers re-run."""
    warnings.warn("jobs: worker processes could not start (does the calling script lack an "
                  "`if __name__ == '__main__':` guard?); running the work in this process")


_SHARED: Any = None


def _start_worker(payload: bytes) -> None:
    global _SHARED
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
    try:
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_start_worker, initargs=(payload,)) as pool:
            return list(tqdm(pool.map(_call, [fn] * len(items), items), total=len(items), desc=desc,
                             disable=desc is None, leave=False))
    except BrokenProcessPool:
        warn_workers_failed()
        with one_thread():
            return [fn(shared, it) for it in items]
