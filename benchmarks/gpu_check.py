"""One GPU check (issue 11): a small timm ViT on synthetic 224x224 images through every stage.

frozen backbone (random weights: nothing downloads) -> exits from cached CLS features -> path cache ->
predictors -> curves -> dynamic engine, on ``--device`` (default cuda). Prints per-stage seconds,
throughput and peak GPU memory, as a markdown table for the README. The data are synthetic (class =
brightness band + noise), so accuracies mean nothing; the throughputs are the point.

    bash benchmarks/gpu_check.sh                 # <= 5 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --tiny   # a seconds-long smoke run of this script
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_npz(path: Path, n: int, side: int, classes: int = 10, seed: int = 0) -> None:
    """uint8 (n, 3, side, side) images whose brightness band is the class, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.integers(0, 96, (n, 3, side, side)) + y[:, None, None, None] * (150 // classes)).astype(np.uint8)
    np.savez(path, x=x, y=y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--n", type=int, default=6000, help="synthetic images: train 3000 / calib 1500 / test 1500")
    ap.add_argument("--ref-dtype", default="float32", choices=["float32", "bfloat16"], help="quant.ref_dtype")
    ap.add_argument("--tiny", action="store_true", help="a 32x32, 4-block model on 300 images (CPU smoke run)")
    args = ap.parse_args()
    from quee_kit.config import load_config
    from quee_kit.study_run import run_study

    n, side = (300, 32) if args.tiny else (args.n, 224)
    sizes = [n // 2, n // 4, n // 4]
    shape = (["model.timm_shape=config", "model.timm_name=vit_tiny_patch16_224", "model.patch=8", "model.dim=32",
              "model.depth=4", "model.heads=2"] if args.tiny else [f"model.timm_name={args.model}"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        synthetic_npz(Path(tmp) / "synthetic.npz", n, side)
        gen_s = time.perf_counter() - t0
        cfg = load_config("configs/digits.yaml", [
            f"device={args.device}", f"cache_dir={tmp}/cache", f"data.name=npz:{tmp}/synthetic.npz",
            f"data.sizes={sizes}", "model.arch=timm", "model.train=heads", "model.epochs=5",
            "model.batch_size=256", "model.lr=0.001", *shape, "quant.levels=[w16a16,w8a8,w4a4]", f"quant.ref_dtype={args.ref_dtype}",
            "paths.batch_size=256", "predictor.folds=3", "predictor.epochs=10", "eval.lambda_grid=40",
            "eval.bootstrap=200", "eval.budgets=[0.1,0.2,0.4]", "eval.auc_range=[0.1,0.6]"])
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        study = run_study(cfg, progress=False)
        study_s = time.perf_counter() - t0
        prep, tr = study.prep, study.timings
        engine = study.engine("quee", cfg.eval.budgets[1])
        x = prep.data.test.x
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for s in range(0, len(x), 256):
            res = engine(x[s:s + 256])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        eng_s = time.perf_counter() - t0
        eng_mem = torch.cuda.max_memory_allocated() / 2 ** 20 if args.device.startswith("cuda") else float("nan")

    ckpt_stats = {k: v for k, v in tr.items() if isinstance(v, (int, float))}
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    name = "tiny timm ViT (patch 8, dim 32, 4 blocks)" if args.tiny else args.model
    print(f"device: {dev}; model: {name}; reference in {args.ref_dtype}; images {side}x{side}; "
          f"split {sizes}; tree {len(prep.tree)} nodes; synthetic data written in {gen_s:.1f} s")
    print("| stage | seconds | throughput | peak GPU memory (MB) |")
    print("|---|---|---|---|")
    c = prep.caches
    train = {k[len("train_"):]: v for k, v in tr.items() if k.startswith("train_")}
    print(f"| backbone pass (CLS features, train) | {train.get('feature_seconds', float('nan')):.1f} | "
          f"{train.get('feature_samples_per_s', float('nan')):.0f} img/s | {train.get('cuda_peak_memory_mb', float('nan')):.0f} |")
    print(f"| exit-head training on features | {train.get('head_seconds', float('nan')):.1f} | "
          f"{sizes[0] * cfg.model.epochs / max(train.get('head_seconds', 1e-9), 1e-9):.0f} samples x epochs / s | |")
    for split in ("calib", "test"):
        st = c[split].stats
        print(f"| path cache ({split}) | {st['seconds']:.1f} | {st['node_samples_per_s']:.0f} block evals/s | "
              f"{st.get('cuda_peak_memory_mb', float('nan')):.0f} |")
    print(f"| predictors + baselines + curves (all of run_study after the caches) | "
          f"{study_s - ckpt_stats.get('prepare_seconds', 0):.1f} | | |")
    print(f"| dynamic engine (quee at budget {cfg.eval.budgets[1]}, test) | {eng_s:.2f} | "
          f"{len(x) / eng_s:.0f} img/s | {eng_mem:.0f} |")
    print(f"total run_study {study_s:.1f} s; engine mean cost {float(np.mean(res.cost)):.3f} on its last batch")



if __name__ == "__main__":
    main()
