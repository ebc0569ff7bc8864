"""The kit's registries: backbones, datasets, predictor kinds, quantization backends and methods.

A :class:`Registry` maps a name to the thing that implements it (a builder, a loader, a class), filled by
the module that defines it, with a decorator, when that module is imported (``@BACKBONES.register("cnn")``).
Each registry also *declares* the names the kit's own modules register, and which module does: plain data,
so that the config check (:mod:`quee_kit.config`) asks ``name in REGISTRY.names()`` without importing
those modules (torch, torchvision, timm) and without any module reaching up. A name registered from
outside the kit (a notebook's own backbone) declares itself when it registers.

The QuEE variants are plain data of their own (:mod:`quee_kit.variants`). Imports nothing of the kit.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["Registry", "BACKBONES", "DATASETS", "PREDICTOR_KINDS", "QUANT_BACKENDS", "METHODS"]


class Registry(dict):
    """name -> implementation of one kind of thing (``what``: "backbone", "dataset", ...), in the order
    registered; ``declared``: every known name -> the module that registers it."""

    def __init__(self, what: str, declared: dict[str, str] | None = None):
        super().__init__()
        self.what = what
        self.declared = dict(declared or {})

    def register(self, *names: str) -> Callable[[Any], Any]:
        """Decorator: ``obj`` registered under each of ``names``; a name registered twice is an error."""
        def deco(obj):
            for name in names:
                if name in self:
                    raise ValueError(f"a {self.what} named {name!r} is already registered "
                                     f"({getattr(self[name], '__name__', self[name])!r})")
                self[name] = obj
                self.declared.setdefault(name, getattr(obj, "__module__", "?"))
            return obj
        return deco

    def names(self) -> list[str]:
        """Every known name: the kit's declared ones and any registered since (imported or not)."""
        return list(dict.fromkeys([*self.declared, *self]))

    def check(self, name: str) -> None:
        """ValueError (one line, the names allowed) unless ``name`` is known."""
        if name not in self.names():
            raise ValueError(f"unknown {self.what} {name!r} (one of: {', '.join(self.names())})")

    def get(self, name: str, *default):
        """The implementation of ``name`` (``default`` when given and ``name`` is not registered). A known
        name whose module has not been imported says which module registers it."""
        if name in self:
            return self[name]
        if default:
            return default[0]
        self.check(name)
        raise LookupError(f"{self.what} {name!r} is registered by {self.declared[name]}, which is not imported")


BACKBONES = Registry("backbone", {"vit": "quee_kit.models", "resmlp": "quee_kit.models", "cnn": "quee_kit.cnn",
                                  "timm": "quee_kit.timm_backbones"})
DATASETS = Registry("dataset", {"mnist10k": "quee_kit.data", "digits": "quee_kit.data",
                                "cifar10": "quee_kit.real_data", "cifar100": "quee_kit.real_data",
                                "svhn": "quee_kit.real_data", "imagenet": "quee_kit.real_data"})
# A predictor kind (the config's ``predictor.kind``) is a class with fit_config(rows, pcfg, opts, seed) -> a fitted
# predictor, config_macs(pcfg, n_options, n_quant) -> MACs of one call, reads_quant_features (bool),
# fit_seconds(pcfg) (rough seconds of one fit: orders warm's tasks) and describe(pcfg) (a label for people).
PREDICTOR_KINDS = Registry("predictor kind", {"platt": "quee_kit.calibrated", "binned": "quee_kit.calibrated",
                                              "mlp": "quee_kit.predictors"})
# How quantized blocks compute (``quant.backend``); quee_kit.backends implements them.
QUANT_BACKENDS = Registry("quantization backend", {"fake": "quee_kit.backends", "compiled": "quee_kit.backends",
                                                   "int": "quee_kit.backends", "int-compiled": "quee_kit.backends"})
# Baselines and bounds the study builds besides the QuEE variants, in registration order (best-single after
# the methods it envelops, the schedules after best-single: quee_kit.study imports baselines, then schedules).
METHODS = Registry("method", {n: "quee_kit.baselines" for n in (
    "static-quant", "ee-confidence", "ee-confidence@q", "ee-confidence-perexit", "best-single", "random", "oracle",
    "oracle-uniform")} | {n: "quee_kit.schedules" for n in ("static-schedule", "ee-confidence-schedule",
                                                             "best-static")})
