"""Stage one, composed: data -> backbone + exits -> levels -> costs -> path caches.

Everything expensive is an artifact in the :class:`~quee_kit.store.Store` of ``cfg.cache_dir`` keyed by
the hash of what built it, so notebooks and the CLI share one trained model and one cache per split.
Stage one is where the config is taken apart: the modules it calls get the sections they need.
"""
from __future__ import annotations

import dataclasses
import hashlib
import resource
import time
from pathlib import Path

import pandas as pd
import torch

from . import distributed
from .artifacts import load_or_build, tensor_digest
from .backends import quant_key, to_backend
from .config import Config, DataConfig, ModelConfig, PredictorConfig, key_fields
from .costs import CostModel
from .data import Dataset, load_dataset
from . import timm_backbones  # noqa: F401  (registers the "timm" backbone beside models.py's own)
from . import cnn  # noqa: F401  (registers the "cnn" backbone)
from .models import BACKBONES, EarlyExitModel, build_model, widen
from .parallel import one_thread, resolve_jobs, run_jobs
from .paths import PathCache, PathTree, build_path_cache
from .prepared import Prepared  # re-exported: what stage one returns
from .shipped import find_shipped, load_shipped
from .store import Store, artifact_key
from .quant import REF_DTYPES, CastBlock, Level, apply_level, config_levels, quantize_residual
from .quant_static import (StaticScales, act_scales_for, apply_level_static, calibrate_static,
                           quantize_residual_static)
from .quant_features import QUANT_STATS, QUANT_STATS_VERSION
from .train import train_early_exit

__all__ = ["Prepared", "prepare", "model_key", "load_or_train", "load_cache", "cache_path", "exits_table", "peak_memory_mb", "load_data",
           "wants_quant_features"]


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_data(d: DataConfig, mcfg: ModelConfig) -> Dataset:
    """The dataset of the data section ``d`` (image folders decoded with the eval transform of the model
    section's backbone, asked for only by the loaders that need it)."""
    input_config = getattr(BACKBONES.get(mcfg.arch), "input_config", None)
    return load_dataset(d.name, split_seed=d.split_seed, sizes=tuple(d.sizes) if d.sizes else None,
                        data_dir=d.root, download=d.download, verify=d.verify, workers=d.workers,
                        image_size=d.image_size, difficulty=d.difficulty, heterogeneity=d.heterogeneity,
                        input_config=(lambda: input_config(mcfg)) if input_config else None)


def _weights_digest(mcfg) -> str:
    """sha256 of a local checkpoint file ('' without one), so a changed file retrains the exits."""
    if mcfg.checkpoint is None:
        return ""
    h = hashlib.sha256()
    with open(mcfg.checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _device_stats(device: str) -> dict:
    if not str(device).startswith("cuda"):
        return {}
    peak = torch.cuda.max_memory_allocated() / 2 ** 20
    torch.cuda.reset_peak_memory_stats()  # the next stage reports its own peak
    return {"cuda_peak_memory_mb": peak}


def _train_model(cfg: Config, data: Dataset, progress: bool) -> dict:
    model = build_model(cfg.model, data.image_shape, data.num_classes)
    stats = train_early_exit(model, data.train, cfg.model, seed=cfg.seed, device=cfg.device, progress=progress,
                             heads_only=cfg.model.train == "heads")
    stats.update(_device_stats(cfg.device))
    return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "train": stats}


def model_key(cfg: Config, data: Dataset) -> str:
    """The key of the trained model: the training config section (less fields such as ``retrain`` that do
    not change the weights), the data, the seed and a local checkpoint's bytes. Shipped models carry it."""
    return artifact_key("model", key_fields(cfg.model), data.digest, cfg.seed,
                        *([_weights_digest(cfg.model)] if cfg.model.checkpoint else []))


def load_or_train(cfg: Config, data: Dataset, progress: bool = True) -> tuple[dict, str]:
    """``({"state_dict", "train"}, source)``: the shipped model of this key unless ``model.retrain``
    (source "shipped model"), else the cached checkpoint trained on this machine, trained now if missing
    (source "trained here")."""
    key = model_key(cfg, data)
    entry = None if cfg.model.retrain else find_shipped(key)
    if entry is not None:
        return {"state_dict": load_shipped(entry), "train": dict(entry.train)}, "shipped model"
    with distributed.main_first():  # under torchrun rank 0 trains, the others then load its checkpoint
        ckpt = load_or_build(Store.at(cfg.cache_dir).file("model", key), key,
                             lambda: _train_model(cfg, data, progress), what="checkpoint")
    return ckpt, "trained here"


def prepare(cfg: Config, splits: tuple[str, ...] = ("calib", "test"), progress: bool = True) -> Prepared:
    """Load or build the trained model and the path cache of each split in ``splits``."""
    timings: dict = {}
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.model)
    t0 = time.perf_counter()
    ckpt, source = load_or_train(cfg, data, progress)
    timings["train_seconds"] = ckpt["train"]["seconds"]
    # heads-only: the backbone pass and head training apart; on CUDA, the stage's peak memory
    timings.update({f"train_{k}": v for k, v in ckpt["train"].items() if k != "seconds" and isinstance(v, (int, float))})
    timings["load_or_train_seconds"] = time.perf_counter() - t0
    # The trained weights are all in the checkpoint: rebuild the architecture without fetching any.
    model = build_model(dataclasses.replace(cfg.model, pretrained=False, checkpoint=None), data.image_shape,
                        data.num_classes)
    model.load_state_dict(ckpt["state_dict"])
    model.to(cfg.device).eval()
    levels = config_levels(cfg.quant)
    q = cfg.quant
    costs = CostModel(model.cpu(), data.image_shape, levels, levels[0], q.quantize_attention)
    model.to(cfg.device)
    tree = PathTree(levels, model.depth, cfg.paths.family)
    # Quantized once, here: the weights are rounded ahead of time; the path cache and the engine both run
    # these blocks, so they compute with the same backend.
    # q.residual: the residual stream entering each block is quantized too (a hypothesis of the conditions study)
    weights = tensor_digest(model.state_dict())
    act_scales = static_scales(cfg, data, model, weights) if q.act_scale == "static" else None
    qblocks = {i: [to_backend(_level_block(b, t, lv, q, act_scales), q.backend) for t, b in enumerate(model.blocks)]
               for i, lv in enumerate(levels)}
    if q.ref_dtype != "float32":  # float levels (the reference) run in that dtype
        for i, lv in enumerate(levels):
            if lv.is_float:
                qblocks[i] = [CastBlock(b, REF_DTYPES[q.ref_dtype]) for b in qblocks[i]]
    if cfg.paths.dtype != "float32":  # the path caches and the engine compute in it (models.widen)
        dtype = getattr(torch, cfg.paths.dtype)
        widen(model, dtype)
        qblocks = {i: [widen(b, dtype) for b in blocks] for i, blocks in qblocks.items()}
    prep = Prepared(cfg, data, model, levels, costs, tree, qblocks, timings=timings, model_hash=weights,
                    model_source=source, act_scales=act_scales, store=Store.at(cfg.cache_dir))
    missing = [s for s in splits if not cache_path(prep, s)[1].exists()]
    if len(missing) > 1 and resolve_jobs(cfg.jobs) > 1 and cfg.device == "cpu" and not distributed.is_active():
        run_jobs(_build_split_cache, missing, cfg.jobs, shared=cfg)  # one split per core, then loaded below
    for split in splits:
        prep.caches[split] = load_cache(prep, split, progress)
    return prep


def _level_block(block, t: int, lv: Level, q, act_scales: StaticScales | None):
    """Block index ``t`` at level ``lv``: dynamic or static activation scales, the residual stream quantized
    too with ``quant.residual``."""
    if act_scales is None:
        qb = apply_level(block, lv, q.quantize_attention)
        return quantize_residual(qb, lv) if q.residual else qb
    scales = act_scales_for(act_scales, lv, t)
    qb = apply_level_static(block, lv, scales, q.quantize_attention)
    return quantize_residual_static(qb, lv, scales) if q.residual else qb


def static_scales(cfg: Config, data: Dataset, model: EarlyExitModel, weights: str) -> StaticScales:
    """The static activation scales of ``model`` (float) on the first ``quant.static_samples`` train samples,
    an artifact keyed by the weights, the data and the settings: computed once per (model, data)."""
    q = cfg.quant
    key = artifact_key("static-scales", weights, data.digest, q.static_percentile, q.static_samples, q.residual)
    x = data.split("train").x[:q.static_samples]

    def build():
        with one_thread():  # the same bits whatever the core count
            return calibrate_static(model, x, q.static_percentile, cfg.paths.batch_size, cfg.device,
                                    residual=q.residual).to_payload()

    with distributed.main_first():
        payload = load_or_build(Store.at(cfg.cache_dir).file("static-scales", key), key, build,
                                what="static scales")
    return StaticScales.from_payload(payload)


def _build_split_cache(cfg: Config, split: str) -> None:
    prepare(dataclasses.replace(cfg, jobs=1), splits=(split,), progress=False)


def cache_path(prep: Prepared, split: str) -> tuple[str, Path]:
    """The key and file of the path cache of ``split``: the data, the weights, the levels and the paths and
    quant config sections, each as a whole (:func:`~quee_kit.config.key_fields`; the quant section through
    :func:`~quee_kit.backends.quant_key`)."""
    cfg = prep.cfg
    # a cache with the quantization-aware statistics is another artifact (never mixed with one without them)
    extra = ["quant-features", QUANT_STATS, QUANT_STATS_VERSION] if wants_quant_features(cfg.predictor) else []
    key = artifact_key("cache", prep.data.digest, split, prep.model_hash, [dataclasses.asdict(l) for l in prep.levels],
                       key_fields(cfg.paths), quant_key(cfg.quant), *extra,
                       *([prep.act_scales.digest()] if prep.act_scales is not None else []))
    return key, prep.store.file(f"cache-{split}", key)


def load_cache(prep: Prepared, split: str, progress: bool = True) -> PathCache | None:
    """Load or build the path cache of ``split`` (keyed as :func:`cache_path` says).

    Inside a torch.distributed process group (``torchrun``) the samples are sharded across ranks
    (:func:`_load_cache_sharded`): rank 0 gets the cache, the other ranks ``None``.
    """
    cfg = prep.cfg
    key, path = cache_path(prep, split)
    sp = prep.data.split(split)

    def build():
        with one_thread():  # the same bits whatever the core count or the jobs that build it
            c = build_path_cache(prep.model, prep.qblocks, prep.tree, prep.costs, sp.x, sp.y,
                                 cfg.paths.batch_size, cfg.device, progress, desc=f"{split} cache",
                                 quant_features=wants_quant_features(cfg.predictor))
        c.stats["peak_memory_mb"] = peak_memory_mb()
        c.stats.update(_device_stats(cfg.device))
        return {"logits": c.logits, "y": c.y, "node_cost": c.node_cost, "static_cost": c.static_cost,
                "stats": c.stats, **({} if c.qstats is None else {"qstats": c.qstats})}

    if distributed.is_active():
        payload = _load_cache_sharded(prep, split, path, key, progress)
        if payload is None:
            return None
    else:
        payload = load_or_build(path, key, build, what=f"{split} cache")
    return PathCache(prep.tree, payload["logits"], payload["y"], payload["node_cost"], payload["static_cost"],
                     stats=payload["stats"], qstats=payload.get("qstats"))


def wants_quant_features(pcfg: PredictorConfig) -> bool:
    """Whether the path caches carry the quantization-aware statistics (the predictor section's
    ``features: quant``)."""
    return pcfg.features == "quant"


def _load_cache_sharded(prep: Prepared, split: str, path: Path, key: str, progress: bool) -> dict | None:
    """The cache payload built by every rank of the process group, one shard of ``paths.batch_size``
    samples at a time (the chunks a one-process build runs, so every tensor is bit-identical), merged
    on rank 0 into the file one process writes; ``stats`` add the sharding counts. ``None`` off rank 0."""
    cfg, sp = prep.cfg, prep.data.split(split)

    def compute(start: int, stop: int) -> dict:
        c = build_path_cache(prep.model, prep.qblocks, prep.tree, prep.costs, sp.x[start:stop], sp.y[start:stop],
                             cfg.paths.batch_size, cfg.device, progress=False, quant_features=wants_quant_features(cfg.predictor))
        return {"logits": c.logits, "y": c.y, "node_cost": c.node_cost, "static_cost": c.static_cost,
                **({} if c.qstats is None else {"qstats": c.qstats})}

    def merge(shards, info: dict) -> dict:
        logits = y = first = qstats = None
        for start, stop, part in shards:
            if logits is None:
                first = part
                logits = torch.empty(part["logits"].shape[0], len(sp), part["logits"].shape[2])
                y = torch.empty(len(sp), dtype=part["y"].dtype)
                if "qstats" in part:
                    qstats = torch.empty(part["qstats"].shape[0], len(sp), part["qstats"].shape[2])
            logits[:, start:stop], y[start:stop] = part["logits"], part["y"]
            if qstats is not None:
                qstats[:, start:stop] = part["qstats"]
        seconds = time.perf_counter() - info["started"]
        stats = {"nodes": logits.shape[0], "samples": len(sp), "seconds": seconds,
                 "node_samples_per_s": logits.shape[0] * len(sp) / max(seconds, 1e-9),
                 "peak_memory_mb": peak_memory_mb(), **_device_stats(cfg.device),
                 **{k: info[k] for k in ("world_size", "shards", "computed", "reused", "shard_seconds")}}
        return {"logits": logits, "y": y, "node_cost": first["node_cost"], "static_cost": first["static_cost"],
                "stats": stats, **({} if qstats is None else {"qstats": qstats})}

    return distributed.load_or_build_sharded(path, key, len(sp), cfg.paths.batch_size, compute, merge,
                                             what=f"{split} cache", progress=progress)


def exits_table(prep: Prepared) -> pd.DataFrame:
    """Accuracy of every exit at every uniform level: columns level, exit, split, accuracy, cost.

    ``cost`` is the normalized cost of a static model exiting there (stem + blocks at that level +
    that exit's head), so exit L at the reference level costs exactly 1.0.
    """
    rows = []
    for split, cache in prep.caches.items():
        for qi, lv in enumerate(prep.levels):
            for t in range(1, prep.tree.L + 1):
                node = cache.node((qi,) * t)  # uniform paths exist in every family
                rows.append({"level": lv.name, "exit": t, "split": split,
                             "accuracy": cache.accuracy(node), "cost": float(cache.static_cost[node])})
    return pd.DataFrame(rows)
