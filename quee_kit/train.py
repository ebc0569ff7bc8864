"""Training the backbone with all its exits (sum of exit losses), or the heads alone on a frozen backbone."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Split
from .models import EarlyExitModel

__all__ = ["train_early_exit", "exit_accuracies", "cls_features"]


def _warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_early_exit(model: EarlyExitModel, train: Split, cfg, seed: int = 0, heads_only: bool = False,
                     device: str = "cpu", progress: bool = True) -> dict:
    """Train with AdamW on the sum of the exits' cross-entropies, linear warm-up then cosine decay.

    ``cfg`` is a :class:`~quee_kit.config.ModelConfig` (epochs, batch_size, lr, weight_decay,
    warmup_epochs). ``heads_only`` freezes the stem and blocks (post-training exits on a given
    backbone). Returns ``{'seconds': ..., 'loss': [per-epoch mean loss]}``.

    With ``heads_only`` and heads that read only the CLS token (``reads_cls``), the frozen backbone runs
    once over ``train`` (all threads, batches of ``cfg.batch_size``) and the heads are then trained on the
    cached per-block CLS features (N, L, 1, D): seconds even for ViT-B. The stats then also hold
    ``feature_seconds`` and ``feature_samples_per_s`` (the backbone pass) and ``head_seconds``.
    """
    feats = None
    if heads_only and all(getattr(h, "reads_cls", False) for h in model.heads):
        t0 = time.perf_counter()
        feats = cls_features(model, train.x, cfg.batch_size, device, progress)
        feat_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical checkpoints whatever the core count (reductions keep their order)
    try:
        stats = _train(model, train, cfg, seed, heads_only, device, progress, feats)
    finally:
        torch.set_num_threads(threads)
    if feats is not None:
        stats.update(head_seconds=stats["seconds"], feature_seconds=feat_s,
                     feature_samples_per_s=len(train) / max(feat_s, 1e-9))
        stats["seconds"] += feat_s
    return stats


@torch.no_grad()
def cls_features(model: EarlyExitModel, x, batch_size: int = 256, device: str = "cpu",
                 progress: bool = True) -> torch.Tensor:
    """One pass of the frozen stem and blocks over ``x``: (N, L, 1, D) float32 CLS token after each block
    (on the CPU). ``x`` is a tensor or a lazy image list (streamed with its ``batches`` when it has one)."""
    model.to(device).eval()
    n = len(x)
    chunks = x.batches(batch_size) if hasattr(x, "batches") else (x[s:s + batch_size] for s in range(0, n, batch_size))
    out = None
    s = 0
    for xb in tqdm(chunks, total=-(-n // batch_size), desc="backbone pass (CLS features)", disable=not progress,
                   leave=False):
        h = model.stem(xb.to(device))
        states = []
        for b in model.blocks:
            h = b(h)
            states.append(h[:, :1].float().cpu())
        st = torch.stack(states, 1)
        if out is None:
            out = torch.empty(n, *st.shape[1:])
        out[s:s + len(st)] = st
        s += len(st)
    return out


def _train(model, train, cfg, seed, heads_only, device, progress, feats=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    if heads_only:
        for p in list(model.stem.parameters()) + list(model.blocks.parameters()):
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _warmup_cosine(s, total, max(1, int(cfg.warmup_epochs * steps_per_epoch))))
    L = len(model.heads)
    # 'depth' weights exit t by t / mean(1..L): the sum still totals L, later exits count more.
    weights = [1.0] * L if getattr(cfg, "exit_weighting", "uniform") == "uniform" else \
        [2.0 * t / (L + 1) for t in range(1, L + 1)]
    t0, losses = time.perf_counter(), []
    bar = tqdm(range(cfg.epochs), desc="train exits", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            yb = train.y[idx].to(device)
            if feats is not None:
                fb = feats[idx].to(device)
                outs = [hd(fb[:, t]) for t, hd in enumerate(model.heads)]
            elif heads_only:
                xb = train.x[idx].to(device)
                with torch.no_grad():
                    h = model.stem(xb)
                    states = []
                    for b in model.blocks:
                        h = b(h)
                        states.append(h)
                outs = [hd(s_) for hd, s_ in zip(model.heads, states)]
            else:
                outs = model(train.x[idx].to(device))
            loss = sum(w * F.cross_entropy(o, yb) for w, o in zip(weights, outs))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        losses.append(tot / n)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"seconds": time.perf_counter() - t0, "loss": losses}


@torch.no_grad()
def exit_accuracies(model: EarlyExitModel, split: Split, batch_size: int = 1000, device: str = "cpu") -> list[float]:
    """Float accuracy of every exit on ``split``."""
    model.eval()
    correct = torch.zeros(model.depth)
    for s in range(0, len(split), batch_size):
        outs = model(split.x[s:s + batch_size].to(device))
        y = split.y[s:s + batch_size].to(device)
        correct += torch.tensor([float((o.argmax(-1) == y).sum()) for o in outs])
    return (correct / len(split)).tolist()
