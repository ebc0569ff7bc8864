"""Wall-clock of the dynamic engine and of the full model at each level, per quantization backend.

For every backend (``quant.backend``: fake, compiled, int, int-compiled) the study is built with that
backend (path caches and predictors), so the engine runs the same blocks as the cache it was tuned on.
Timed, in microseconds per test sample at batch sizes 1, 32 and 256 (best of ``--repeats`` passes, each
alternating with a pass of the float full model in both its forms, eager and ``torch.compile``d; on a GPU
compiled with ``mode="reduce-overhead"``, i.e. CUDA graphs):

* ``full``: stem, every block at one level, the last head; the float model (``w16a16``) is the baseline;
* ``engine``: QuEE's :class:`~quee_kit.engine.DynamicModel` at each default budget (entry and λ chosen
  on calib), after checking that it exits every test sample at the node the cache simulation says.

Both compute in float32, a deployment's numerics: ``paths.dtype=float32`` comes before ``--set`` (the default
config studies in float64, for figures that are the same on every CPU).

Writes ``OUT/engine.csv`` (``backend,mode,budget,batch_size,us_per_sample,speedup_vs_float_full`` and
then ``level,blocks_per_sample,cost_bops,engine_vs_cache_mismatches,float_full_us``, the eager float model's
time beside that row, ``float_compiled_us`` the compiled one's, ``float_best_us`` the faster of the two,
``float_best_form`` which, ``speedup_vs_float_best``, the ratio a user who compiles would see, and ``machine``)
and prints
a markdown table of the speed-ups against the best float model; ``--profile`` adds a
``torch.profiler`` breakdown of the engine at budget 0.05 (best backend) to ``OUT/engine_profile.txt``, the
time of each of the engine's parts per sample at every budget up to 0.08 and batch size to
``OUT/engine_parts.csv`` (and the top of that text file), and on
the CPU one of a single block, float against ``w8a8`` with ``int-compiled`` (each generated kernel named)::

    python benchmarks/bench_engine.py --out results/bench
    python benchmarks/bench_engine.py --out results/bench-cuda --device cuda --set quant.ref_dtype=bfloat16
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quee_kit.artifacts import atomic_write_bytes
from quee_kit.backends import BACKENDS
from quee_kit.config import load_config
from quee_kit.study_run import run_study
from quee_kit.policy import simulate

COLUMNS = ["backend", "mode", "budget", "batch_size", "us_per_sample", "speedup_vs_float_full", "level",
           "blocks_per_sample", "cost_bops", "engine_vs_cache_mismatches", "float_full_us", "float_compiled_us",
           "float_best_us", "float_best_form", "speedup_vs_float_best", "machine"]


def per_sample_us(fn, x: torch.Tensor, batch: int, repeats: int, refs=()) -> list[float]:
    """Best of ``repeats`` passes over ``x`` in batches of ``batch``, µs per sample (device synchronized), of
    ``fn`` and then of each of ``refs``.

    Each pass of ``fn`` alternates with a pass of every one of ``refs`` (the float full model, eager and
    compiled): a speed-up is then the ratio of two times taken side by side, not against one float timing
    taken minutes earlier (this machine drifts by 10-20% over a run)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    fns = [fn, *refs]
    for f in fns:
        for s in range(0, len(x), batch):   # warm-up: every shape compiles here, CUDA kernels load
            f(x[s:s + batch])
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, f in enumerate(fns):
            sync()
            t = time.perf_counter()
            for s in range(0, len(x), batch):
                f(x[s:s + batch])
            sync()
            best[i] = min(best[i], time.perf_counter() - t)
    return [b / len(x) * 1e6 for b in best]


def float_forms(model, blocks, cuda: bool) -> list:
    """The float full model as a user would run it: eager, and through ``torch.compile`` (static shapes:
    each batch size compiled for itself, as a server with fixed batch sizes would; CUDA graphs on a GPU)."""
    eager = full_model(model, blocks)
    compiled = torch.compile(eager, dynamic=False, mode="reduce-overhead" if cuda else None)
    return [eager, torch.no_grad()(compiled)]


def machine_name(cuda: bool) -> str:
    """The machine a timing belongs to: the CPU's model name (or the GPU's), threads, torch version."""
    if cuda:
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def full_model(model, blocks):
    @torch.no_grad()
    def run(xb):
        h = model.stem(xb)
        for b in blocks:
            h = b(h)
        return model.heads[-1](h)
    return run


def check_engine(study, eng, budget: float) -> int:
    """Samples whose engine exit differs from the cache simulation's (0 when the engine is exact)."""
    prep, p, m = study.prep, study.predictors["quee"], study.methods["quee"]
    sim = simulate(p["test"], prep.caches["test"], study.opts, eng.lam, eng.entry, m.mask, m.call_cost)
    res = [eng(prep.data.test.x[s:s + 256]) for s in range(0, len(prep.data.test.x), 256)]
    return int((np.concatenate([r.node for r in res]) != sim.node).sum())


def profile_engine(eng, x: torch.Tensor, batch: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    eng.labels = True                                 # name the engine's parts in the profile
    try:
        with profile(activities=acts) as prof:
            for s in range(0, len(x), batch):
                eng(x[s:s + batch])
    finally:
        eng.labels = False
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)


PARTS = ("blocks", "heads", "decide", "predictor", "regroup")


def engine_breakdown(eng, x: torch.Tensor, batch: int) -> dict[str, float]:
    """Where the engine's time goes at ``batch``: µs per sample inside each of its labelled parts
    (``engine.blocks`` includes the stem; ``engine.predictor`` is part of ``engine.decide``), the rest of
    the forward (``other``: costs, predictions, Python between the parts) and the total, all measured under
    ``torch.profiler``, which adds a few µs per operation to every part."""
    from torch.profiler import profile
    for s in range(0, len(x), batch):   # warm-up: every group size the pass meets is compiled here
        eng(x[s:s + batch])
    eng.labels = True
    try:
        with profile() as prof:
            t = time.perf_counter()
            for s in range(0, len(x), batch):
                eng(x[s:s + batch])
            total = time.perf_counter() - t
    finally:
        eng.labels = False
    us = {e.key.removeprefix("engine."): e.cpu_time_total / len(x) for e in prof.key_averages()
          if e.key.startswith("engine.")}
    out = {p: us.get(p, 0.0) for p in PARTS}
    out["total"] = total / len(x) * 1e6
    out["other"] = out["total"] - sum(out[p] for p in PARTS if p != "predictor")
    return out


def profile_block(model, level, x: torch.Tensor, batch: int, t: int = 2, calls: int = 50) -> str:
    """Where one block's time goes at ``batch`` samples: block ``t`` (0-based) in float (eager) and at ``level``
    with the ``int-compiled`` backend, compiled afresh with each generated kernel named in the profile."""
    import torch._inductor.config as inductor_config
    from torch.profiler import profile

    from quee_kit.backends import to_backend
    from quee_kit.quant import apply_level
    with torch.no_grad():
        h = model.stem(x[:batch])
        for b in model.blocks[:t]:
            h = b(h)
    torch._dynamo.reset()                         # compile again, now with the kernels named
    parts, quantized = [], to_backend(apply_level(model.blocks[t], level), "int-compiled")
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        for name, blk in [("float (eager)", model.blocks[t]), (f"{level.name}, int-compiled", quantized)]:
            with torch.no_grad():
                for _ in range(5):
                    blk(h)
                with profile() as prof:
                    for _ in range(calls):
                        blk(h)
            parts.append(f"block {t + 1} at {name}, batch {batch}, {calls} calls\n"
                         + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14,
                                                     max_name_column_width=90))
    return "\n".join(parts)


def markdown(table: pd.DataFrame) -> str:
    """A pivot table as a markdown table (index levels first)."""
    head = list(table.index.names) + [f"batch {c}" for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([*map(str, i), *map(str, r)]) + " |" for i, r in zip(table.index, table.values)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mnist10k.yaml")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: the config's)")
    ap.add_argument("--set", action="append", default=[], help="config override, as for quee-kit run")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--batch-sizes", default="1,32,256")
    ap.add_argument("--batch1-samples", type=int, default=256, help="test samples timed at batch size 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    overrides = ["paths.dtype=float32", *args.set] + ([f"device={args.device}"] if args.device else [])
    base = load_config(args.config, overrides, fast=args.fast)
    backends = args.backends.split(",")
    for b in backends:
        if b not in BACKENDS:
            raise SystemExit(f"--backends: {b!r} is not one of {', '.join(BACKENDS)}")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, engines = [], {}
    for backend in backends:
        cfg = dataclasses.replace(base, quant=dataclasses.replace(base.quant, backend=backend))
        t0 = time.perf_counter()
        study = run_study(cfg, progress=False, variants={"quee": ({}, "all")})
        prep = study.prep
        dev = next(prep.model.parameters()).device
        x = prep.data.test.x.to(dev)
        print(f"{backend}: study ready in {time.perf_counter() - t0:.0f} s", flush=True)
        # the float model (its blocks stay float under every backend), eager and compiled: every row is timed
        # beside both
        refs = float_forms(prep.model, prep.qblocks[0], x.is_cuda)
        for q, lv in enumerate(prep.levels):
            run = full_model(prep.model, prep.qblocks[q])
            for bs in sizes:
                us, eager_us, compiled_us = per_sample_us(run, x[:args.batch1_samples] if bs == 1 else x, bs,
                                                          args.repeats, refs)
                rows.append(dict(backend=backend, mode="full", budget=None, batch_size=bs, us_per_sample=us,
                                 level=lv.name, blocks_per_sample=prep.model.depth, cost_bops=None,
                                 engine_vs_cache_mismatches=None, float_full_us=eager_us,
                                 float_compiled_us=compiled_us))
        for budget in cfg.eval.budgets:
            eng = study.engine("quee", budget)
            mismatches = check_engine(study, eng, budget)
            if mismatches:  # float kernels chosen by batch size (CUDA) can flip a near-tie: reported, not hidden
                print(f"WARNING {backend} at budget {budget}: the engine exits {mismatches} test samples at "
                      f"another node than the cache simulation", flush=True)
            r = eng(x)
            engines[(backend, budget)] = eng
            for bs in sizes:
                us, eager_us, compiled_us = per_sample_us(eng, x[:args.batch1_samples] if bs == 1 else x, bs,
                                                          args.repeats, refs)
                rows.append(dict(backend=backend, mode="engine", budget=budget, batch_size=bs, us_per_sample=us,
                                 level=None, blocks_per_sample=r.blocks_run / len(x), cost_bops=r.cost.mean(),
                                 engine_vs_cache_mismatches=mismatches, float_full_us=eager_us,
                                 float_compiled_us=compiled_us))
    df = pd.DataFrame(rows)
    df["speedup_vs_float_full"] = df.float_full_us / df.us_per_sample
    df["float_best_us"] = df[["float_full_us", "float_compiled_us"]].min(axis=1)
    df["float_best_form"] = np.where(df.float_compiled_us < df.float_full_us, "compiled", "eager")
    df["speedup_vs_float_best"] = df.float_best_us / df.us_per_sample
    machine = machine_name(x.is_cuda)
    df["machine"] = machine
    atomic_write_bytes(out / "engine.csv", df[COLUMNS].to_csv(index=False, float_format="%.4g").encode())
    print(f"\n{machine}; µs per sample (speed-up vs the best float full model at the same batch size)\n")
    best = df.groupby("batch_size").agg(us=("float_best_us", "median"),
                                        form=("float_best_form", lambda f: f.value_counts().idxmax()))
    print("best float full model: " + ", ".join(f"batch {b}: {r.us:.1f} µs ({r.form})" for b, r in best.iterrows()))
    wide = df.assign(cell=[f"{u:.1f} ({s:.2f}×)" for u, s in zip(df.us_per_sample, df.speedup_vs_float_best)],
                     what=[f"full {l}" if m == "full" else f"engine @ {b:g}" for m, l, b in
                           zip(df["mode"], df.level, df.budget.fillna(0))])
    table = wide.pivot_table(index=["backend", "what"], columns="batch_size", values="cell", aggfunc="first",
                             sort=False)
    print(markdown(table))
    if args.profile:
        eng05 = df[(df["mode"] == "engine") & (df.budget == 0.05) & (df.batch_size == max(sizes))]
        best = eng05.sort_values("us_per_sample").iloc[0].backend
        text = f"backend {best}, budget 0.05\n" + profile_engine(engines[(best, 0.05)], x, max(sizes))
        parts = pd.DataFrame([dict(budget=b, batch_size=bs, **engine_breakdown(engines[(best, b)],
                                                                              x[:args.batch1_samples] if bs == 1 else x, bs))
                              for b in cfg.eval.budgets if b <= 0.08 for bs in sizes])
        atomic_write_bytes(out / "engine_parts.csv", parts.to_csv(index=False, float_format="%.4g").encode())
        text = (f"where the engine's time goes, backend {best} (µs per sample under torch.profiler; blocks include "
                f"the stem, predictor is part of decide)\n{parts.round({c: 1 for c in [*PARTS, 'total', 'other']}).to_string(index=False)}\n\n"
                + text)
        if not x.is_cuda:   # why a quantized block is not cheaper than a float one here
            level = next((lv for lv in prep.levels if lv.name == "w8a8"), prep.levels[-1])
            text += "\n" + profile_block(prep.model, level, x, max(sizes))
        atomic_write_bytes(out / "engine_profile.txt", text.encode())
        print(f"\nprofiles:\n{text}")
    print(f"\nwrote {out / 'engine.csv'}")


if __name__ == "__main__":
    main()
