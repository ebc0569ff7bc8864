"""Wall-clock of the dynamic engine against the full model at the reference level.

For each default budget, the QuEE rule chosen on calib runs on the test split in batches of 256
with :class:`quee_kit.engine.DynamicModel`; the baseline is the float backbone, all blocks, final
head only. Prints mean BOPs cost, blocks actually run and microseconds per sample:

    python benchmarks/bench_engine.py [--config configs/mnist10k.yaml] [--fast]
"""
from __future__ import annotations

import argparse
import time

import torch

from quee_kit.config import load_config
from quee_kit.study import run_study


def _time(fn, x, batch: int = 256, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for s in range(0, len(x), batch):
            fn(x[s:s + batch])
        best = min(best, time.perf_counter() - t)
    return best / len(x) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mnist10k.yaml")
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config, fast=args.fast)
    study = run_study(cfg, progress=False)
    prep = study.prep
    x = prep.data.test.x
    model = prep.model

    @torch.no_grad()
    def full(xb):
        h = model.stem(xb)
        for b in model.blocks:
            h = b(h)
        return model.heads[-1](h)

    base = _time(full, x)
    print(f"torch threads: {torch.get_num_threads()}; test samples: {len(x)}")
    print("| budget | method | test cost (BOPs) | blocks run / sample | µs / sample | vs full float model |")
    print("|---|---|---|---|---|---|")
    print(f"| — | full model, w16a16 | 1.000 | {model.depth:.2f} | {base:.1f} | 1.00× |")
    for b in cfg.eval.budgets:
        eng = study.engine("quee", b)
        r = eng(x)
        us = _time(eng, x)
        print(f"| {b} | quee (entry {prep.levels[eng.entry].name}, λ={eng.lam:.3g}) | {r.cost.mean():.4f} | "
              f"{r.blocks_run / len(x):.2f} | {us:.1f} | {us / base:.2f}× |")


if __name__ == "__main__":
    main()
