"""Command line: ``quee-kit cache | run | reproduce`` (also ``python -m quee_kit``).

Errors a user can cause are one line and exit status 2. SIGINT (Ctrl-C) and SIGTERM stop a command
cleanly: the worker processes are terminated, one line is printed and the exit status is 130 / 143;
the artifacts finished so far are kept (each is written atomically), so the next run resumes from
them, and ``--out`` keeps the previous run's files (:mod:`quee_kit.outputs`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from pathlib import Path

from .artifacts import atomic_write_csv, atomic_write_json
from .config import UserError, load_config
from .outputs import check_out, check_writable_dir, staged_output
from .locations import store_root

__all__ = ["main", "build_parser"]


def _add_common(p: argparse.ArgumentParser) -> None:
    # No file: the built-in defaults, which are configs/mnist10k.yaml's (tested), so an installed kit runs
    # without a checkout.
    p.add_argument("--config", help="YAML config (default: the built-in defaults = configs/mnist10k.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.epochs=5 (repeatable)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--retrain", action="store_true",
                   help="train the model here even when the kit ships one for this config and seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error, not one line")


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised in the main thread (a BaseException, as KeyboardInterrupt: no
    ``except Exception`` swallows it on its way out)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    for s in (signal.SIGINT, signal.SIGTERM):   # a second Ctrl-C must not interrupt the clean-up
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM raise :class:`Stopped` (the previous handlers come back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _stop)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_places(cache_dir: str, out) -> None:
    """``--out`` and the config's ``cache_dir`` writable, before any compute (not found out after it)."""
    check_out(out)
    check_writable_dir(store_root(cache_dir), "cache_dir")


def _overrides(args) -> list[str]:
    return list(args.overrides) + (["model.retrain=true"] if args.retrain else [])


def cmd_cache(args) -> int:
    cfg = load_config(args.config, _overrides(args))  # before the torch imports: a bad config fails fast
    _check_places(cfg.cache_dir, args.out)
    from .distributed import is_main, process_group
    from .prepare import exits_table, peak_memory_mb, prepare
    out = Path(args.out)
    with process_group(cfg.device):  # under torchrun: samples sharded across ranks, rank 0 writes the outputs
        prep = prepare(cfg, progress=not args.quiet)
        if not is_main():
            return 0
    df = exits_table(prep)
    stats = {"tree_nodes": len(prep.tree), "family": prep.tree.family,
             "levels": [l.name for l in prep.levels], "depth": prep.tree.L,
             "splits": {s: c.stats for s, c in prep.caches.items()},
             "build_seconds": sum(c.stats["seconds"] for c in prep.caches.values()),
             "train_seconds": prep.timings["train_seconds"], "model_source": prep.model_source,
             "peak_memory_mb": peak_memory_mb()}
    with staged_output(out) as stage:   # both files appear together
        atomic_write_csv(stage / "exits.csv", df)
        atomic_write_json(stage / "cache_stats.json", stats)
    test = df[df.split == "test"].pivot_table(index="level", columns="exit", values="accuracy", sort=False)
    print(f"model: {prep.model_source}")
    print(f"path tree: {len(prep.tree)} nodes ({prep.tree.family}); "
          f"cache build {stats['build_seconds']:.1f} s; wrote {out}/exits.csv, {out}/cache_stats.json")
    print("test accuracy per exit and level:")
    print(test.round(3).to_string())
    return 0


def cmd_run(args) -> int:
    overrides = _overrides(args)
    if args.seeds:
        overrides.append(f"eval.seeds=[{args.seeds}]")
    cfg = load_config(args.config, overrides)  # before the torch imports: a bad config fails fast
    _check_places(cfg.cache_dir, args.out)
    from .distributed import is_main, launched_by_torchrun, process_group
    from .pipeline import check_config_against_data, run_pipeline
    from .prepare import prepare
    if launched_by_torchrun():  # the cache stage of every seed sharded across ranks, the rest on rank 0
        check_config_against_data(cfg)
        with process_group(cfg.device):
            for seed in cfg.eval.seeds:
                prepare(dataclasses.replace(cfg, seed=seed), progress=not args.quiet)
            if not is_main():
                return 0
    run_pipeline(cfg, Path(args.out), progress=not args.quiet)
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce
    args.config = args.config or "configs/mnist10k.yaml"  # the notebooks take a file
    load_config(args.config, _overrides(args))  # fail fast on a bad config
    return reproduce(args.config, Path(args.out), fast=args.fast, overrides=_overrides(args),
                     params_file=args.params, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The ``quee-kit`` argument parser: subcommands ``cache``, ``run``, ``reproduce`` and their flags."""
    ap = argparse.ArgumentParser(prog="quee-kit", description="QuEE study kit: early exits x quantization, "
                                 "decided per input from predicted probabilities of error.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cache", help="data -> backbone+exits -> path cache; writes exits.csv, cache_stats.json")
    _add_common(p)
    p.set_defaults(fn=cmd_cache)
    p = sub.add_parser("run", help="the whole pipeline; writes curves.csv, budgets.csv, summary.json")
    _add_common(p)
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (overrides eval.seeds)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("reproduce", help="execute every notebook with papermill; figures and tables under OUT")
    _add_common(p)
    p.add_argument("--fast", action="store_true", help="the fast parameter set (CI, nbval)")
    p.add_argument("--params", help="YAML file: {notebook stem: {parameter: value}}")
    p.set_defaults(fn=cmd_reproduce)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():
            return args.fn(args)
    except Stopped as e:
        print(f"quee-kit: stopped by {signal.Signals(e.signum).name}; the artifacts finished so far are kept "
              "and the next run resumes from them", file=sys.stderr)
        return 128 + e.signum
    except (UserError, OSError) as e:
        # What a user can cause (a config, a data file, a path that cannot be read or written) is one
        # line and exit status 2; anything else is a bug and keeps its traceback.
        if args.debug:
            raise
        msg = str(e) if isinstance(e, UserError) else f"{e.strerror or type(e).__name__}: {e.filename or e}"
        print(f"quee-kit: {msg} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
