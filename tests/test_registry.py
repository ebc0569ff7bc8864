"""Registries in a leaf module: the config check asks them without importing the modules that register, a
declared name is the one its module registers, and a new predictor kind is one class."""
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from quee_kit import registry
from quee_kit.config import ConfigError, load_config
from quee_kit.registry import PREDICTOR_KINDS, Registry

# the leaves the config check may load: no loader, no backbone, no torch
CONFIG_CLOSURE = {"quee_kit", "quee_kit.config", "quee_kit.config_rules", "quee_kit.locations", "quee_kit.registry",
                  "quee_kit.dataset_files", "quee_kit.quant_levels", "quee_kit.variants"}


def test_the_config_check_imports_no_torch_and_nothing_above_the_registries():
    code = ("import sys, json; from quee_kit.config import load_config; "
            "load_config('configs/cnn.yaml', ['model.arch=timm', 'quant.backend=int', 'predictor.kind=binned']); "
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('quee_kit')), 'torch' in sys.modules]))")
    mods, torch_loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                   check=True).stdout)
    assert not torch_loaded and set(mods) == CONFIG_CLOSURE


@pytest.mark.parametrize("name", ["BACKBONES", "DATASETS", "PREDICTOR_KINDS", "METHODS"])
def test_every_declared_name_is_registered_by_the_module_declared(name):
    reg = getattr(registry, name)
    for owner in dict.fromkeys(reg.declared.values()):
        importlib.import_module(owner)
    kit = {n: m for n, m in reg.declared.items() if m.startswith("quee_kit.")}
    assert kit and set(kit) <= set(reg)
    for n, owner in kit.items():
        assert reg[n].__module__ == owner, n


def test_the_backend_names_are_the_backends_module_s():
    from quee_kit.backends import BACKENDS
    assert registry.QUANT_BACKENDS.names() == list(BACKENDS)


def test_registry_refuses_a_second_registration_and_says_what_is_known():
    reg = Registry("widget", {"far": "some.module"})
    reg.register("a")(len)
    assert reg.get("a") is len and reg.names() == ["far", "a"] and reg.get("b", None) is None
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(max)
    with pytest.raises(ValueError, match=r"unknown widget 'b' \(one of: far, a\)"):
        reg.get("b")
    with pytest.raises(LookupError, match="registered by some.module, which is not imported"):
        reg.get("far")


def test_config_messages_list_the_registered_names():
    with pytest.raises(ConfigError, match="predictor.kind must be 'platt', 'binned' or 'mlp'"):
        load_config("configs/digits.yaml", ["predictor.kind=forest"])
    with pytest.raises(ConfigError, match="quant.backend must be 'fake', 'compiled', 'int' or 'int-compiled'"):
        load_config("configs/digits.yaml", ["quant.backend=tpu"])
    with pytest.raises(ConfigError, match="model.arch must be one of cnn, resmlp, timm, vit"):
        load_config("configs/digits.yaml", ["model.arch=mamba"])


def test_a_new_predictor_kind_is_one_class(digits_prep):
    """A kind registered from outside the kit: the config accepts it, and the predictors' fit and cost
    dispatch to it, with no other change."""
    from quee_kit.options import OptionSpace
    from quee_kit.predictors import fit_predictor, predictor_macs

    @PREDICTOR_KINDS.register("constant")
    class ConstantErrorPredictor:
        kind, columns, macs, reads_quant_features = "constant", [], 0, False

        def __init__(self, rate):
            self.rate = rate

        @classmethod
        def fit_config(cls, rows, pcfg, opts, seed=0):
            return cls(float(np.nanmean(rows.wrong)))

        @staticmethod
        def config_macs(pcfg, n_options, n_quant=0):
            return 0

        @staticmethod
        def fit_seconds(pcfg):
            return 0.01

        @staticmethod
        def describe(pcfg):
            return "constant"

    try:
        cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_prep.cfg.cache_dir}", "predictor.kind=constant"])
        opts = OptionSpace(digits_prep.tree, digits_prep.caches["calib"].node_cost)
        fitted = fit_predictor(digits_prep.caches["calib"], opts, cfg.predictor, np.arange(100))
        assert isinstance(fitted, ConstantErrorPredictor) and 0 < fitted.rate < 1
        assert predictor_macs(cfg.predictor, opts.n_options) == 0
        from quee_kit.warm import study_tasks
        (fit,) = [t for t in study_tasks(cfg, {"quee": ({}, "all")}) if t.name.startswith("fit")]
        assert fit.label.startswith("constant predictors") and fit.cost == pytest.approx((cfg.predictor.folds + 1) * 0.01)   # the default 2,000 calib
    finally:
        PREDICTOR_KINDS.pop("constant")
        PREDICTOR_KINDS.declared.pop("constant")


def test_a_new_quantization_backend_is_one_class_and_its_numerics_key_its_artifacts():
    from torch import nn

    from quee_kit.backends import Backend, quant_key, to_backend
    from quee_kit.config import QuantConfig
    from quee_kit.models import ViTBlock
    from quee_kit.quant import apply_level

    class Marked(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

    try:
        @registry.QUANT_BACKENDS.register("marked")
        class MarkedBackend(Backend):
            numerics = 7

            @classmethod
            def convert(cls, block):
                return Marked(block)

        quantized = apply_level(ViTBlock(16, 2, 2), "w8a8")
        assert isinstance(to_backend(quantized, "marked"), Marked)
        float_block = ViTBlock(16, 2, 2)
        assert to_backend(float_block, "marked") is float_block     # nothing to quantize: unchanged
        assert quant_key(QuantConfig(backend="marked"))["int_numerics"] == 7
        assert "int_numerics" not in quant_key(QuantConfig(backend="compiled"))
    finally:
        registry.QUANT_BACKENDS.pop("marked", None)
        registry.QUANT_BACKENDS.declared.pop("marked", None)
