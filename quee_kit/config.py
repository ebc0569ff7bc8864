"""Validated configuration: dataclasses, YAML files, ``--set key=value`` overrides.

Every key has a default. An unknown key, a wrong type or an impossible value raises
:class:`ConfigError` with one line naming the key and what is allowed, before any
compute starts (configs are built and validated by :func:`load_config`). YAML is read without
aliases or duplicate keys, and every number must lie in its declared range
(:mod:`quee_kit.config_rules`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config_rules import ConfigError, UserError, check_lengths, check_limits, fail, read_yaml
from .dataset_files import check_files, validate_dataset_name
from .locations import resolve_path, store_root
from .quant_levels import parse_level
from .registry import BACKBONES, PREDICTOR_KINDS, QUANT_BACKENDS
from .variants import ALL_VARIANTS

__all__ = ["UserError", "ConfigError", "read_yaml", "Config", "DataConfig", "ModelConfig", "QuantConfig", "PathsConfig",
           "PredictorConfig", "EvalConfig", "load_config", "parse_overrides", "cache_dir", "key_fields", "FAST_OVERRIDES"]


@dataclass
class DataConfig:
    name: str = "mnist10k"          # mnist10k | digits | cifar10 | cifar100 | svhn | imagenet | npz:PATH
    split_seed: int = 0             # fixed shuffle seed of the train/calib/test split (same for every run seed)
    # [train, calib, test]; None = dataset default (6000/2000/2000 on mnist10k; on datasets with an official
    # split: the rest of train / 5,000 (CIFAR-10, SVHN) or 10,000 (CIFAR-100, ImageNet) calib carved from
    # train / the whole official test set). On those, the three numbers cap each part.
    sizes: list[int] | None = None
    root: str | None = None         # folder holding the real datasets; None = $QUEE_KIT_DATA or data/
    download: bool = False          # true: fetch cifar10/cifar100/svhn into root with torchvision (network)
    verify: bool = True             # md5 of CIFAR/SVHN files must match the official release (false: any copy)
    workers: int = 4                # image-decoding workers for image folders (imagenet)
    image_size: int | None = None   # image folders: side decoded to; None = the backbone's input size (else 224)
    # Data dials in [0, 1] (quee_kit/dials.py, fixed seed): 0 = the plain data. In-memory datasets only.
    difficulty: float = 0.0         # the same random warp + noise for every image, scaled by the dial
    heterogeneity: float = 0.0      # per-image contrast / brightness / noise drawn from a spread scaled by the dial

    def validate(self, p: str) -> None:
        try:   # the dataset registry's names and file checks: no loader (no torch) imported
            check_files(self.name, self.root, self.download)
            validate_dataset_name(self.name)
        except ValueError as e:
            raise ConfigError(f"config: {e}") from None
        if self.workers < 0:
            fail(f"{p}.workers", "an int >= 0", self.workers)
        if self.image_size is not None and self.image_size < 8:
            fail(f"{p}.image_size", "null or an int >= 8", self.image_size)
        if self.sizes is not None and (len(self.sizes) != 3 or min(self.sizes) < 1):
            fail(f"{p}.sizes", "null or three positive ints [train, calib, test]", self.sizes)
        for k in ("difficulty", "heterogeneity"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                fail(f"{p}.{k}", "a number in [0, 1] (0 = the plain data)", getattr(self, k))


@dataclass
class ModelConfig:
    arch: str = "vit"          # backbone registry name (quee_kit.registry.BACKBONES)
    patch: int = 7             # patch size in pixels (must divide the image side)
    dim: int = 64              # token width
    depth: int = 6             # number of blocks L (one exit head after each)
    heads: int = 4             # attention heads (must divide dim)
    mlp_ratio: int = 2         # MLP hidden = mlp_ratio * dim
    epochs: int = 30           # joint training of backbone + all exits (sum of exit losses)
    batch_size: int = 128
    lr: float = 3.0e-3         # AdamW peak learning rate (linear warm-up, cosine decay)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    exit_weighting: str = "depth"  # uniform: plain sum of exit losses | depth: exit t weighted t / mean(t)
    # joint: backbone and exits trained together | heads: exits only, on the frozen backbone, from cached
    # per-block CLS features (one backbone pass over train; for pretrained backbones)
    train: str = "joint"
    # arch=timm only (quee_kit.timm_backbones): a timm ViT/DeiT name, e.g. vit_small_patch16_224.augreg_in21k_ft_in1k
    timm_name: str = "vit_small_patch16_224"
    timm_shape: str = "pretrained"  # pretrained: timm's architecture as named | config: patch/dim/depth/heads/mlp_ratio above
    pretrained: bool = False        # true: weights from timm (its hub cache, else the network)
    checkpoint: str | None = None   # a local .pth/.pt/.safetensors state dict of the timm model (checked against it)
    # false: a shipped model with this key (quee_kit/embedded/models) is used as is; true: train here (--retrain)
    retrain: bool = field(default=False, metadata={"key": False})

    def validate(self, p: str) -> None:
        if self.exit_weighting not in ("uniform", "depth"):
            fail(f"{p}.exit_weighting", "'uniform' or 'depth'", self.exit_weighting)
        if self.arch not in BACKBONES.names():
            fail(f"{p}.arch", "one of " + ", ".join(sorted(BACKBONES.names())), self.arch)
        for k in ("patch", "dim", "depth", "heads", "mlp_ratio", "batch_size"):
            if getattr(self, k) < 1:
                fail(f"{p}.{k}", "an int >= 1", getattr(self, k))
        if self.epochs < 0:
            fail(f"{p}.epochs", "an int >= 0", self.epochs)
        if self.dim % self.heads:
            fail(f"{p}.heads", f"a divisor of model.dim={self.dim}", self.heads)
        if self.lr <= 0:
            fail(f"{p}.lr", "a float > 0", self.lr)
        if self.train not in ("joint", "heads"):
            fail(f"{p}.train", "'joint' or 'heads'", self.train)
        if self.timm_shape not in ("pretrained", "config"):
            fail(f"{p}.timm_shape", "'pretrained' or 'config'", self.timm_shape)
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            fail(f"{p}.checkpoint", "null or an existing .pth/.pt/.safetensors file", self.checkpoint)
        if self.checkpoint is not None and self.pretrained:
            fail(f"{p}.pretrained", "false when model.checkpoint is set (one source of weights)", self.pretrained)


@dataclass
class QuantConfig:
    # Precision levels 'w{bits}a{bits}'; the costliest is the reference. Fixed by measurement (README).
    levels: list[str] = field(default_factory=lambda: ["w16a16", "w8a8", "w4a8", "w3a8", "w4a4"])
    act_granularity: str = "token"       # token: one scale per token of a sample | tensor: one per sample
    clip_percentile: float | None = None  # e.g. 99.9 clips activations at that percentile of |x| (per sample)
    quantize_attention: bool = True       # attention matmuls at a_bits (and costed so) or float (costed at reference)
    ref_dtype: str = "float32"            # the float reference level: float32 (as the forward, paths.dtype) | bfloat16 (costed at its bits either way)
    backend: str = "fake"                 # how quantized blocks compute: fake (in paths.dtype) | compiled | int (int8 GEMMs) | int-compiled
    residual: bool = False                # also quantize each block's input (the un-normalized residual stream) at a_bits
    # dynamic: activation scales per sample/token (above) | static: one scale per tensor and point, calibrated once
    # on the float model (quant_static.py). Keyed only when set, so the default keys (and caches) stay as they were.
    act_scale: str = field(default="dynamic", metadata={"key_if_set": True})
    static_percentile: float = field(default=99.9, metadata={"key_if_set": True})  # of |x| at each point
    static_samples: int = field(default=1000, metadata={"key_if_set": True})       # the first N train samples

    def validate(self, p: str) -> None:
        if not self.levels:
            fail(f"{p}.levels", "a non-empty list like [w16a16, w8a8]", self.levels)
        for s in self.levels:
            try:
                parse_level(s)
            except ValueError as e:
                raise ConfigError(f"config: {p}.levels: {e}") from None
        if len(set(self.levels)) != len(self.levels):
            fail(f"{p}.levels", "a list without repeats", self.levels)
        if self.ref_dtype not in ("float32", "bfloat16"):
            fail(f"{p}.ref_dtype", "'float32' or 'bfloat16'", self.ref_dtype)
        if self.backend not in QUANT_BACKENDS.names():
            fail(f"{p}.backend", _one_of(QUANT_BACKENDS.names()), self.backend)
        if self.act_granularity not in ("tensor", "token"):
            fail(f"{p}.act_granularity", "'tensor' or 'token'", self.act_granularity)
        if self.clip_percentile is not None and not (50.0 < self.clip_percentile <= 100.0):
            fail(f"{p}.clip_percentile", "null or a float in (50, 100]", self.clip_percentile)
        if self.act_scale not in ("dynamic", "static"):
            fail(f"{p}.act_scale", "'dynamic' or 'static'", self.act_scale)
        if self.act_scale == "static" and self.backend.startswith("int"):
            fail(f"{p}.backend", "'fake' or 'compiled' with quant.act_scale static", self.backend)
        if self.act_scale == "static" and self.clip_percentile is not None:
            fail(f"{p}.clip_percentile", "null with quant.act_scale static (use quant.static_percentile)",
                 self.clip_percentile)


@dataclass
class PathsConfig:
    family: str = "monotone"   # monotone (level may only stay or go down) | free | uniform
    batch_size: int = field(default=500, metadata={"key": False})  # samples per chunk when building the path cache (same numbers)
    # the forward pass of the path caches and the engine: float64 (near-ties of quantization rounding fall the
    # same way on every CPU: docs/results.md, "Across machines") | float32 (about 3x faster to build on a CPU)
    dtype: str = "float64"

    def validate(self, p: str) -> None:
        if self.family not in ("monotone", "free", "uniform"):
            fail(f"{p}.family", "'monotone', 'free' or 'uniform'", self.family)
        if self.dtype not in ("float32", "float64"):
            fail(f"{p}.dtype", "'float32' or 'float64'", self.dtype)
        if self.batch_size < 1:
            fail(f"{p}.batch_size", "an int >= 1", self.batch_size)


@dataclass
class PredictorConfig:
    kind: str = "platt"        # platt | binned (per-node calibration of the log-odds) | mlp (one MLP on compact features)
    bins: int = 10             # binned: quantile bins of the head's log-odds per node
    balance: str = "depth"     # mlp: fitting rows weighted so every depth counts equally | none (every row alike)
    targets: str = "kmeans"    # kmeans (K cells per depth x level) | knn (k neighbours) | raw (0/1 labels)
    K: int = 8                 # k-means cells per (depth, level) group, on the continuous features
    knn_k: int = 50            # neighbours for targets=knn
    prior_weight: float = 5.0  # cell mean shrunk toward the depth mean with this many pseudo-samples
    hidden: int = 32           # MLP width
    layers: int = 2            # hidden layers
    folds: int = 5             # cross-fitting folds on calib
    epochs: int = 40           # max epochs (early stopping on held-out 0/1 BCE)
    patience: int = 5
    lr: float = 3.0e-3
    history: bool = True       # previous head's max prob and agreement with the current prediction
    shared: bool = True        # one MLP for all depths (False: one per depth)
    max_rows: int = 200000     # cap on (node, sample) rows per fold for fitting (subsampled evenly per depth)
    probe: bool = False        # platt only: also read a paid probe's head (quee_kit.probe; set by variant quee-probe)
    features: str = "softmax"  # softmax (functions of the head's output) | quant (+ the state's statistics at
                               # each cheaper activation quantizer, quee_kit/quant_features.py; platt and mlp)

    def validate(self, p: str) -> None:
        if self.kind not in PREDICTOR_KINDS.names():
            fail(f"{p}.kind", _one_of(PREDICTOR_KINDS.names()), self.kind)
        if self.features not in ("softmax", "quant"):
            fail(f"{p}.features", "'softmax' or 'quant'", self.features)
        if self.balance not in ("depth", "none"):
            fail(f"{p}.balance", "'depth' or 'none'", self.balance)
        if self.bins < 2:
            fail(f"{p}.bins", "an int >= 2", self.bins)
        if self.targets not in ("kmeans", "knn", "raw"):
            fail(f"{p}.targets", "'kmeans', 'knn' or 'raw'", self.targets)
        for k in ("K", "knn_k", "hidden", "layers", "epochs", "patience", "max_rows"):
            if getattr(self, k) < 1:
                fail(f"{p}.{k}", "an int >= 1", getattr(self, k))
        if self.folds < 2:
            fail(f"{p}.folds", "an int >= 2 (cross-fitting)", self.folds)
        if self.prior_weight < 0:
            fail(f"{p}.prior_weight", "a float >= 0", self.prior_weight)
        if self.lr <= 0:
            fail(f"{p}.lr", "a float > 0", self.lr)
        if self.probe and self.kind != "platt":
            fail(f"{p}.probe", "false unless kind is platt (the probe predictor is a Platt fit)", self.probe)


@dataclass
class EvalConfig:
    # Target budgets: mean normalized BOPs (1.0 = full depth at the reference level), chosen in the
    # trade-off region of the default model (README, "Choosing the budgets").
    budgets: list[float] = field(default_factory=lambda: [0.03, 0.04, 0.05, 0.06, 0.08, 0.12])
    auc_range: list[float] = field(default_factory=lambda: [0.03, 0.15])
    lambda_grid: int = 120        # log-spaced lambda values (plus 0) swept per entry level
    bootstrap: int = 2000         # paired bootstrap resamples for the 95% intervals
    seeds: list[int] = field(default_factory=lambda: [0])
    # QuEE variants to fit and report (quee_kit.variants.ALL_VARIANTS); null = QUEE_VARIANTS (quee-probe is
    # opt-in). quee and quee-exit-only
    # share one fit, so [quee, quee-exit-only] costs one predictor fit per seed instead of four.
    variants: list[str] | None = None

    def validate(self, p: str) -> None:
        if not self.budgets or min(self.budgets) <= 0:
            fail(f"{p}.budgets", "a non-empty list of floats > 0", self.budgets)
        if len(self.auc_range) != 2 or not (0 < self.auc_range[0] < self.auc_range[1]):
            fail(f"{p}.auc_range", "[lo, hi] with 0 < lo < hi", self.auc_range)
        if self.lambda_grid < 2:
            fail(f"{p}.lambda_grid", "an int >= 2", self.lambda_grid)
        if self.bootstrap < 100:
            fail(f"{p}.bootstrap", "an int >= 100", self.bootstrap)
        if not self.seeds:
            fail(f"{p}.seeds", "a non-empty list of ints", self.seeds)
        if self.variants is not None:
            if "quee" not in self.variants or not set(self.variants) <= set(ALL_VARIANTS):
                fail(f"{p}.variants", "null or a list holding quee and any of " + ", ".join(ALL_VARIANTS),
                      self.variants)


@dataclass
class Config:
    seed: int = 0                  # seed of training and predictors (the data split has its own)
    device: str = "cpu"            # cpu | cuda
    cache_dir: str = ".quee_cache"  # checkpoints, path caches, predictors (content-hashed)
    jobs: int = 0                  # worker processes for independent single-threaded work (0: one per core); no number depends on it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        check_lengths(self)
        if self.jobs < 0:
            fail("jobs", "an int >= 0 (0: one per core)", self.jobs)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            fail("device", "'cpu', 'cuda' or 'cuda:N'", self.device)
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate(f.name)
        if self.predictor.kind != "platt" and any(ALL_VARIANTS[v][0].get("probe") for v in self.eval.variants or []):
            fail("eval.variants", "no quee-probe unless predictor.kind is platt (its predictor is a Platt fit)",
                 self.eval.variants)
        if self.predictor.features == "quant" and self.quant.act_scale == "static":
            fail("predictor.features", "'softmax' with quant.act_scale static (the statistics use dynamic scales)",
                 self.predictor.features)
        check_limits(self)   # after the sections: their own messages come first where both apply
        return self


# ---------------------------------------------------------------- building from dicts

def _one_of(names: list[str]) -> str:
    """``'a', 'b' or 'c'``: what a registry allows, as a config message says it."""
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check ``value`` against annotation ``tp`` (int, float, bool, str, list[...], Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail(key, f"a list of {_type_name(args[0])}", value)
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    simple = {bool: ((bool,), "true or false"), int: ((int,), "an int"), float: ((int, float), "a number"),
              str: ((str,), "a string")}
    if tp in simple:
        types, what = simple[tp]
        if not isinstance(value, types) or (tp is not bool and isinstance(value, bool)):   # True is an int too
            fail(key, what, value)
        return float(value) if tp is float else value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _from_dict(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        fail(prefix or "config", "a mapping", d)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"config: unknown key '{key}' (allowed: {', '.join(names)})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _from_dict(tp, v or {}, key)
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


def parse_overrides(items: list[str] | None) -> dict:
    """``['model.depth=4', 'quant.levels=[w16a16,w8a8]']`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"config: --set expects key=value (got {item!r})")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = read_yaml(raw, f"--set {key.strip()}")
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Reduced settings for CI, nbval and ``--fast``: same pipeline, smaller data and fewer epochs.
FAST_OVERRIDES = ["model.epochs=15", "data.sizes=[3000,600,600]", "predictor.folds=3", "predictor.epochs=10",
                  "predictor.max_rows=20000",
                  "eval.bootstrap=300", "eval.lambda_grid=60"]

def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                fast: bool = False, validate: bool = True) -> Config:
    """Read a YAML config (or defaults when ``path`` is None), apply overrides, validate.

    ``fast`` applies :data:`FAST_OVERRIDES` first (explicit ``overrides`` still win).
    ``validate=False`` only fills the defaults: no name, range or file check (validation asks the
    registries of :mod:`quee_kit.registry` and imports no torch either way), for a cache lookup such as
    the explorer page's.
    """
    raw: dict = {}
    if fast:
        raw = _merge(raw, parse_overrides(FAST_OVERRIDES))
    if path is not None:
        p = resolve_path(path)
        if not p.is_file():
            raise ConfigError(f"config: file not found: {p}")
        raw = _merge(read_yaml(p.read_text(), str(p)) or {}, raw)
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    cfg = _from_dict(Config, _merge(raw, over), "")
    return cfg.validate() if validate else cfg


def cache_dir(cfg: Config) -> Path:
    """Where ``cfg``'s artifacts live: a relative ``cache_dir`` under the project root, so that the CLI
    and the notebooks (which run in ``notebooks/``) share one trained model and one cache per split."""
    return store_root(cfg.cache_dir)


def key_fields(section) -> dict:
    """The fields of a config section that a cached result depends on (``dataclasses.asdict`` less the
    fields marked ``metadata={"key": False}``, e.g. a batch size, and those marked ``{"key_if_set": True}``
    while at their default, so that adding such an option leaves every existing key as it was): what an
    artifact key hashes."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.metadata.get("key", True)
            and not (f.metadata.get("key_if_set") and getattr(section, f.name) == f.default)}
