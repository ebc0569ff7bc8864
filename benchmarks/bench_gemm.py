"""GFLOP/s of the default ViT's linear layers (forward products) on one CPU thread: ``F.linear`` (MKL's
sgemm) against :func:`quee_kit.gemm.linear` (oneDNN), and one training step of the default model both ways
(``QUEE_KIT_ONEDNN`` read at import, so each way runs in its own process)::

    python benchmarks/bench_gemm.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# (rows, in, out) of the default ViT (dim 64, 17 tokens, MLP ratio 2) in a training batch of 128 digits
SHAPES = {"qkv": (2176, 64, 192), "proj": (2176, 64, 64), "fc1": (2176, 64, 128), "fc2": (2176, 128, 64)}


def _best(fn, repeats: int = 5, n: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return min(times)


def _train_step_ms() -> float:
    from quee_kit.config import load_config
    from quee_kit.models import build_model
    cfg = load_config("configs/mnist10k.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step():
        loss = sum(F.cross_entropy(o, y) for o in model(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 1e3 * _best(step, repeats=3, n=20)


def main() -> None:
    torch.set_num_threads(1)
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(f"{_train_step_ms():.1f}")
        return
    from quee_kit import gemm
    print(f"torch {torch.__version__}, one thread, oneDNN route available: {gemm.onednn_available()}")
    print("| layer | rows x in -> out | F.linear (MKL) GFLOP/s | gemm.linear (oneDNN) GFLOP/s |")
    print("|---|---|---:|---:|")
    for name, (m, k, n) in SHAPES.items():
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        flop = 2 * m * k * n
        mkl, dnn = (flop / _best(lambda: fn(x, w, b)) / 1e9 for fn in (F.linear, gemm.linear))
        print(f"| {name} | {m} x {k} -> {n} | {mkl:.0f} | {dnn:.0f} |")
    steps = {}
    for flag in ("0", "1"):
        env = {**os.environ, "QUEE_KIT_ONEDNN": flag, "PYTHONPATH": os.getcwd()}
        out = subprocess.run([sys.executable, __file__, "--step"], env=env, capture_output=True, text=True,
                             check=True)
        steps[flag] = float(out.stdout.strip().splitlines()[-1])
    print(f"training step, default ViT, batch 128: {steps['0']:.1f} ms with F.linear, {steps['1']:.1f} ms "
          f"through oneDNN ({steps['0'] / steps['1']:.2f}x)")


if __name__ == "__main__":
    main()
