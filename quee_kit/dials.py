"""Data dials: harder and more heterogeneous variants of an in-memory dataset, with a fixed seed.

Two dials, each a float in [0, 1], turn the embedded digits (or any ``(x, y)`` dataset held in
memory: ``mnist10k``, ``digits``, ``npz:PATH``) into a study of *when* per-input precision pays:

- ``difficulty`` (``data.difficulty``): the same distortion for every image, scaled by the dial — a
  random affine warp (rotation up to ±40°·d, scale ×exp(±0.25·d), shear up to ±0.3·d, shift up to
  ±15%·d of the side) and additive Gaussian noise of std 0.3·d (pixels in [0, 1]).
- ``heterogeneity`` (``data.heterogeneity``): inputs that differ in quality — per image a contrast
  factor exp(−u₁·h·ln 5) (1 down to 1/5), a brightness offset 0.5·h·u₂ and Gaussian noise of std
  0.5·h·u₃, with u₁, u₂, u₃ ~ U(0, 1) drawn independently per image.

Every random number is drawn once from ``np.random.default_rng(seed)`` (``DIAL_SEED`` unless
given) in a fixed order and only *scaled* by the dials, so a larger dial distorts the same image in
the same direction, further; the output is clipped to [0, 1]. With both dials at 0 the arrays are
returned unchanged (same dtype, same bytes), so the plain dataset keeps its digest and its caches.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["DIAL_SEED", "DIALS_VERSION", "apply_dials", "check_dial", "dial_recipe"]

DIAL_SEED = 2024  # fixed: a dial setting names one dataset, whatever the run seed
# Bump when apply_dials computes other pixels: a dialled dataset's digest names its recipe (below), not its
# bits, so a change here must change the recipe.
DIALS_VERSION = 1


def dial_recipe(difficulty: float, heterogeneity: float, seed: int = DIAL_SEED) -> bytes:
    """What a dialled dataset's digest hashes besides the raw arrays. The warp runs through torch's
    ``grid_sample``, whose vectorized kernels round differently per instruction set (5% of the pixels of the
    conditions data move by up to 3e-6 under ``ATEN_CPU_CAPABILITY=default``); hashing the derived pixels
    would key every model, shipped ones included, to the CPU that derived them."""
    return f"dials|v{DIALS_VERSION}|{float(difficulty).hex()}|{float(heterogeneity).hex()}|{int(seed)}".encode()


def check_dial(name: str, value: float) -> None:
    """Raise ValueError naming the dial unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (got {value!r})")


def _warp(img: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Bilinear affine warp of (N, C, H, W) float32 images by (N, 2, 3) matrices in normalized
    coordinates (torch's affine_grid convention), zeros outside."""
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(img)
    grid = F.affine_grid(torch.from_numpy(theta.astype(np.float32)), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).numpy()


def apply_dials(x: np.ndarray, difficulty: float = 0.0, heterogeneity: float = 0.0,
                seed: int = DIAL_SEED) -> np.ndarray:
    """Distort images ``x`` (N, H, W) or (N, C, H, W), uint8 (0..255) or float in [0, 1].

    Returns float32 of the same shape with values in [0, 1]; ``x`` itself when both dials are 0.
    """
    check_dial("difficulty", difficulty)
    check_dial("heterogeneity", heterogeneity)
    if difficulty == 0 and heterogeneity == 0:
        return x
    n = len(x)
    rng = np.random.default_rng(seed)
    # Fixed draw order, whatever the dial values: (n, 5) warp, (n, H, W...) noise, (n, 3) quality, noise.
    warp_u = rng.uniform(-1.0, 1.0, (n, 5))
    noise_d = rng.standard_normal(x.shape).astype(np.float32)
    qual_u = rng.uniform(0.0, 1.0, (n, 3))
    noise_h = rng.standard_normal(x.shape).astype(np.float32)

    img = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    d, h = float(difficulty), float(heterogeneity)
    if d > 0:
        chw = img if img.ndim == 4 else img[:, None]
        rot = warp_u[:, 0] * math.radians(40.0) * d
        scale = np.exp(warp_u[:, 1] * 0.25 * d)
        shear = warp_u[:, 2] * 0.3 * d
        c, s = np.cos(rot) / scale, np.sin(rot) / scale
        theta = np.stack([np.stack([c, -s + shear * c, warp_u[:, 3] * 0.3 * d], 1),
                          np.stack([s, c + shear * s, warp_u[:, 4] * 0.3 * d], 1)], 1)
        chw = _warp(np.ascontiguousarray(chw), theta)
        img = chw if img.ndim == 4 else chw[:, 0]
        img = img + 0.3 * d * noise_d
    if h > 0:
        shape = (n,) + (1,) * (img.ndim - 1)
        contrast = np.exp(-qual_u[:, 0] * h * math.log(5.0)).reshape(shape)
        bright = (0.5 * h * qual_u[:, 1]).reshape(shape)
        sigma = (0.5 * h * qual_u[:, 2]).reshape(shape)
        img = contrast * np.clip(img, 0.0, 1.0) + bright + sigma * noise_h
    return np.clip(img, 0.0, 1.0).astype(np.float32)
