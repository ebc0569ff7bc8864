"""Sharding per-sample work across ``torchrun`` processes (and machines) with torch.distributed.

Launched by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR`` in the environment),
the CLI opens one process group (:func:`process_group`): ``nccl`` when the config's device is CUDA
and CUDA is available, ``gloo`` otherwise. Without those variables nothing here does anything and
every stage runs exactly as in one process.

The generic piece is :func:`load_or_build_sharded`: N items (samples of a split) are cut into
contiguous shards of ``shard_size`` items (the last one shorter), shard ``i`` = items
``[i*shard_size, min((i+1)*shard_size, N))``; rank ``r`` of ``W`` takes the contiguous run of shards
``[r*S//W, (r+1)*S//W)``. Each shard is an artifact of its own (atomic, keyed by the hash of the
whole result's key and its item range), so a rerun after a crash reuses every finished shard and
computes only the missing ones, whatever the new world size (shard boundaries do not depend on it).
Rank 0 then merges the shards into the single artifact one process would have written and removes
the shard folder; the other ranks wait on a barrier. Shards are exchanged through files, so with
several machines the cache folder must be on a filesystem every node sees (NFS, Lustre, ...).

Any per-item computation can reuse it (the path cache does; so can frozen-backbone feature
extraction): give it ``compute(start, stop) -> payload`` and ``merge(shards, info) -> payload``.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .artifacts import ArtifactError, load_artifact, load_or_build, save_artifact
from .store import artifact_key

__all__ = ["launched_by_torchrun", "shard_key", "is_active", "rank", "world_size", "is_main", "backend_for", "process_group",
           "barrier", "main_first", "shard_ranges", "rank_shards", "load_or_build_sharded", "EXIT_HOOK_ENV"]

# Test hook: "R:K" makes rank R leave with exit code 17 right after it has written its K-th computed
# shard, the way a killed or crashed process would (tests/test_distributed.py uses it).
EXIT_HOOK_ENV = "QUEE_KIT_TEST_EXIT_AFTER_SHARDS"
# Collectives wait at most this long (seconds) for the slowest rank, e.g. rank 0 training the model.
TIMEOUT_ENV = "QUEE_KIT_DIST_TIMEOUT_S"


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_active() -> bool:
    """True inside an initialized process group (the CLI under torchrun, or a user's own)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def backend_for(device: str) -> str:
    """``nccl`` for a CUDA device when CUDA is there, ``gloo`` otherwise (CPU, or CUDA missing)."""
    return "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def process_group(device: str = "cpu"):
    """Open the process group for the body when launched by torchrun; a no-op otherwise.

    With ``nccl`` each process binds to GPU ``LOCAL_RANK``, so ``device: cuda`` means the local GPU
    (an explicit ``cuda:N`` would put every rank of a node on the same GPU). Yields whether a group is
    active. A group opened by the caller is left as it is.
    """
    if is_active() or not launched_by_torchrun():
        yield is_active()
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(_local_rank())
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 6 * 3600)))
    dist.init_process_group(backend, timeout=timeout)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if not is_active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the body first; the others wait, then run it (e.g. ``load_or_build`` of a checkpoint:
    rank 0 trains and saves it, the others find it on disk, so training is never duplicated)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard_ranges(n_items: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` item ranges of ``shard_size`` items (the last one shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 (got {shard_size})")
    return [(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


def rank_shards(n_shards: int, r: int, world: int) -> range:
    """The contiguous shard indices of rank ``r`` of ``world``; sizes differ by at most one."""
    return range(r * n_shards // world, (r + 1) * n_shards // world)


def _shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"{start:010d}-{stop:010d}.pt"


def shard_key(key: str, start: int, stop: int) -> str:
    return artifact_key("shard", key, start, stop)


def _exit_hook() -> tuple[int, int] | None:
    spec = os.environ.get(EXIT_HOOK_ENV)
    if not spec:
        return None
    r, k = spec.split(":")
    return int(r), int(k)


def _gather(obj: Any) -> list[Any]:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def load_or_build_sharded(path: str | Path, key: str, n_items: int, shard_size: int,
                          compute: Callable[[int, int], Any],
                          merge: Callable[[Iterator[tuple[int, int, Any]], dict], Any],
                          what: str = "artifact", progress: bool = True) -> Any | None:
    """:func:`~quee_kit.artifacts.load_or_build` with the build sharded across the process group.

    ``compute(start, stop)`` returns the payload of items ``[start, stop)``; ``merge(shards, info)``
    gets an iterator of ``(start, stop, payload)`` in item order (each shard loaded when reached) and
    ``info``: ``world_size``, ``shards`` (count), ``computed`` and ``reused`` (shard indices, this run),
    ``shard_seconds`` (compute time summed over computed shards and ranks), ``started`` (rank 0's
    ``time.perf_counter()`` when the build began: ``merge`` measures wall-clock from it); read ``info``
    after the last shard (a shard found damaged at the merge is recomputed and counted). It returns
    what one process would have built. Called by every rank; returns the payload on rank 0 and
    ``None`` elsewhere. Outside a process group it is plain ``load_or_build`` of ``merge`` over every
    shard computed in turn, in this process.
    """
    path = Path(path)
    ranges = shard_ranges(n_items, shard_size)
    folder = path.with_name(path.name + ".shards")
    t0 = time.perf_counter()
    if not is_active():
        info = {"world_size": 1, "shards": len(ranges), "computed": list(range(len(ranges))), "reused": [],
                "shard_seconds": None, "started": t0}
        return load_or_build(path, key, lambda: merge(((a, b, compute(a, b)) for a, b in ranges), info),
                             what=what)
    # Rank 0 alone decides whether the merged artifact is valid: divergent decisions would deadlock.
    payload, problem = None, None
    if is_main():
        try:
            payload = load_artifact(path, key)
        except ArtifactError as e:
            problem = str(e) if path.exists() else None
    if _broadcast(payload is not None):
        return payload
    if problem:
        warnings.warn(f"rebuilding {what}: {problem}", stacklevel=2)

    r, hook = rank(), _exit_hook()
    mine = rank_shards(len(ranges), r, world_size())
    done = {"computed": [], "reused": [], "shard_seconds": 0.0}
    for i in tqdm(mine, desc=f"{what} shards, rank 0 of {world_size()}", disable=not (progress and r == 0),
                  leave=False):
        start, stop = ranges[i]
        try:
            load_artifact(_shard_path(folder, start, stop), shard_key(key, start, stop))
            done["reused"].append(i)
            continue
        except ArtifactError as e:
            if _shard_path(folder, start, stop).exists():
                warnings.warn(f"rebuilding {what} shard {i}: {e}", stacklevel=2)
        ts = time.perf_counter()
        save_artifact(_shard_path(folder, start, stop), shard_key(key, start, stop), compute(start, stop))
        done["shard_seconds"] += time.perf_counter() - ts
        done["computed"].append(i)
        if hook and hook[0] == r and len(done["computed"]) >= hook[1]:
            os._exit(17)  # the test hook: die like a killed process, no cleanup, no barrier
    per_rank = _gather(done)  # also the barrier: every shard is on disk after it
    if not is_main():
        barrier()  # wait for the merge, so that the artifact exists when any rank returns
        return None

    info = {"world_size": world_size(), "shards": len(ranges),
            "computed": sorted(i for d in per_rank for i in d["computed"]),
            "reused": sorted(i for d in per_rank for i in d["reused"]),
            "shard_seconds": sum(d["shard_seconds"] for d in per_rank), "started": t0}

    def shards() -> Iterator[tuple[int, int, Any]]:
        for i, (start, stop) in enumerate(ranges):
            def rebuild(a=start, b=stop, i=i):  # a shard lost or damaged between the barrier and here
                info["computed"] = sorted(set(info["computed"]) | {i})
                return compute(a, b)
            yield start, stop, load_or_build(_shard_path(folder, start, stop), shard_key(key, start, stop),
                                             rebuild, what=f"{what} shard {i}")

    payload = merge(shards(), info)
    save_artifact(path, key, payload)
    shutil.rmtree(folder, ignore_errors=True)
    barrier()
    return payload
