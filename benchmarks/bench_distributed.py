"""Benchmark of the sharded path cache: build time with one process, and with 1 and 2 torchrun ranks.

Trains the config's model once (``model.epochs`` from the command line, default 1: the cache's cost
does not depend on how well the model is trained), then builds the calib and test caches three times
from an empty cache (model kept): plain ``quee-kit cache`` (one process, one thread; with
``--default-threads`` also torch's default thread count), then ``torchrun --nproc_per_node W`` for each W of ``--ranks``, one thread per rank
(``OMP_NUM_THREADS=1``, what torchrun sets itself for W > 1), so W ranks use W cores as processes. It
prints the build wall-clock of rank 0 (``cache_stats.json``), the whole command's wall-clock (process
start-up and model loading included), the CPU seconds of all its processes (how much work sharding
adds, whatever else loads the machine), node·samples/s, and the effective GMAC/s of the blocks and
heads evaluated (MACs from :class:`quee_kit.costs.CostModel`), which the README uses to extrapolate:

    python benchmarks/bench_distributed.py [configs/mnist10k.yaml] [--epochs 1] [--ranks 1,2] [--default-threads]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_cmd(cfg: str, cache: Path, out: Path, epochs: int) -> list[str]:
    return ["-m", "quee_kit", "cache", "--config", cfg, "--quiet", "--out", str(out),
            "--set", f"cache_dir={cache}", "--set", f"model.epochs={epochs}"]


def _run(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, every child process) of one command."""
    t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    r2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (r2.ru_utime - r.ru_utime) + (r2.ru_stime - r.ru_stime)


def _macs_per_node_sample(cfg_path: str, epochs: int) -> float:
    """Mean MACs of one (node, sample) of the cache: the node's block plus its exit head."""
    from quee_kit.config import load_config
    from quee_kit.costs import CostModel
    from quee_kit.data import load_dataset
    from quee_kit.models import build_model
    from quee_kit.paths import PathTree
    from quee_kit.quant import sorted_levels
    cfg = load_config(cfg_path, [f"model.epochs={epochs}"])
    data = load_dataset(cfg.data.name, split_seed=cfg.data.split_seed,
                        sizes=tuple(cfg.data.sizes) if cfg.data.sizes else None)
    model = build_model(cfg.model, data.image_shape, data.num_classes)
    levels = sorted_levels(cfg.quant.levels)
    costs = CostModel(model, data.image_shape, levels, levels[0], cfg.quant.quantize_attention)
    tree = PathTree(levels, model.depth, cfg.paths.family)
    per = [costs.block_ops[t - 1].macs + costs.head_ops[t - 1].macs for t in tree.depth]
    return sum(per) / len(per)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/mnist10k.yaml")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--default-threads", action="store_true",
                    help="also one process with torch's default thread count (slow on a loaded machine)")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    macs = _macs_per_node_sample(a.config, a.epochs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, python {platform.python_version()}")
    print(f"config {a.config} (model.epochs={a.epochs}); {macs:,.0f} MACs per node·sample (block + head)")
    print("| launch | build calib+test (s) | whole command (s) | CPU, all processes (s) | node·samples/s | GMAC/s "
          "| vs 1 process × 1 thread |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        one = {**env, "OMP_NUM_THREADS": "1"}
        _run(_cache_cmd(a.config, cache, out, a.epochs), one)  # trains the model once (and warms the disk)
        torchrun = ["-m", "torch.distributed.run", "--nnodes", "1", "--master_addr", "127.0.0.1"]
        runs = [("one process, torch's default threads", [], None)] if a.default_threads else []
        runs += [("one process, 1 thread", [], 1)]
        runs += [(f"torchrun, {w} rank{'s' * (w > 1)} × 1 thread",
                  torchrun + ["--nproc_per_node", str(w), "--master_port", str(_free_port())], 1)
                 for w in map(int, a.ranks.split(","))]
        base = None
        for name, launcher, threads in runs:
            for f in cache.glob("cache-*"):
                f.unlink()
            run_env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
            if threads:
                run_env["OMP_NUM_THREADS"] = str(threads)
            wall, cpu = _run(launcher + _cache_cmd(a.config, cache, out, a.epochs), run_env)
            st = json.loads((out / "cache_stats.json").read_text())
            build = st["build_seconds"]
            n = sum(s["nodes"] * s["samples"] for s in st["splits"].values())
            base = build if threads == 1 and not launcher else base
            speed = f"{base / build:.2f}×" if base else "—"
            print(f"| {name} | {build:.1f} | {wall:.1f} | {cpu:.1f} | {n / build:,.0f} | {n * macs / build / 1e9:.2f} | "
                  f"{speed} |")


if __name__ == "__main__":
    main()
