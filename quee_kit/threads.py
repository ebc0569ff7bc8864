"""One torch thread for a block of computation, so that its bits do not depend on the core count.

The fits, the path caches and the predictors' estimates each run on one thread whether they run in this
process or in a worker (:mod:`quee_kit.parallel`, which shares the work out, imports it from here):
a science module asks for the thread count its numbers need without importing the process pool.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
