"""Benchmark of the first stage: training, path-cache build time and throughput, peak memory.

Runs each config in a fresh subprocess with an empty temporary cache dir (so nothing is reused
and peak RSS is per run) and prints one table row per config:

    python benchmarks/bench_pipeline.py [configs/mnist10k.yaml configs/digits.yaml]
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
from quee_kit.config import load_config
from quee_kit.prepare import prepare, peak_memory_mb
cfg = load_config(sys.argv[1], [f"cache_dir={sys.argv[2]}"])
t = time.perf_counter()
p = prepare(cfg, progress=False)
c = p.caches
print(json.dumps({"config": sys.argv[1], "nodes": len(p.tree), "train_s": p.timings["train_seconds"],
                  "cache_s": sum(x.stats["seconds"] for x in c.values()),
                  "samples": sum(x.n_samples for x in c.values()),
                  "throughput": sum(x.n_samples for x in c.values()) * len(p.tree) / sum(x.stats["seconds"] for x in c.values()),
                  "total_s": time.perf_counter() - t, "peak_mb": peak_memory_mb()}))
"""


def main(configs: list[str]) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print("| config | tree nodes | train (s) | cache build calib+test (s) | node·samples/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for cfg in configs:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-c", CHILD, cfg, tmp], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {cfg} | {r['nodes']} | {r['train_s']:.1f} | {r['cache_s']:.1f} | {r['throughput']:,.0f} | "
              f"{r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["configs/mnist10k.yaml", "configs/digits.yaml"])
