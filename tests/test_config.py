"""Config validation: one line naming the key, before any compute."""
import dataclasses
import subprocess
import sys

import pytest

from quee_kit.config import ConfigError, load_config


@pytest.mark.parametrize("override,match", [
    (["model.depthh=3"], "unknown key 'model.depthh'"),
    (["bogus=1"], "unknown key 'bogus'"),
    (["model.depth=three"], "model.depth must be an int"),
    (["model.depth=0"], "model.depth must be an int >= 1"),
    (["quant.levels=[]"], "quant.levels must be a non-empty list"),
    (["quant.levels=[w16a16,w1a8]"], "quant.levels: level 'w1a8'"),
    (["quant.levels=[w16a16,w4a4,w4a4]"], "without repeats"),
    (["eval.budgets=[0.05,0]"], "eval.budgets must be a non-empty list of floats > 0"),
    (["paths.family=zigzag"], "paths.family must be"),
    (["data.name=cifar11"], "unknown dataset 'cifar11'"),
    (["model.heads=5"], "model.heads must be a divisor"),
    (["quant.quantize_attention=maybe"], "true or false"),
])
def test_bad_values_fail_with_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("configs/mnist10k.yaml", override)
    assert "\n" not in str(e.value)


def test_overrides_apply_and_types_coerce():
    cfg = load_config("configs/mnist10k.yaml", ["model.epochs=3", "predictor.lr=1", "quant.levels=[w16a16,w8a8]"])
    assert cfg.model.epochs == 3 and cfg.predictor.lr == 1.0 and isinstance(cfg.predictor.lr, float)
    assert cfg.quant.levels == ["w16a16", "w8a8"]


def test_shipped_configs_are_valid():
    for name in ["configs/mnist10k.yaml", "configs/digits.yaml", "configs/conditions.yaml"]:
        load_config(name)


def test_cli_rejects_bad_config_before_compute(tmp_path):
    r = subprocess.run([sys.executable, "-m", "quee_kit", "cache", "--config", "configs/mnist10k.yaml",
                        "--set", "quant.levels=[w16a16,w1a4]", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "quant.levels" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing was computed or written


def test_key_fields_are_the_config_section_less_what_cannot_change_numbers():
    from quee_kit.config import PathsConfig, QuantConfig, key_fields
    assert key_fields(PathsConfig()) == {"family": "monotone"}          # batch_size: same numbers either way
    q = QuantConfig()
    assert key_fields(q) == dataclasses.asdict(q)                        # every quant field changes the numbers


def test_levels_carry_the_config_granularity_and_clipping():
    from quee_kit.config import QuantConfig
    from quee_kit.quant import config_levels
    levels = config_levels(QuantConfig(levels=["w4a4", "w16a16"], act_granularity="tensor", clip_percentile=99.0))
    assert [lv.name for lv in levels] == ["w16a16", "w4a4"]
    assert {(lv.granularity, lv.clip_percentile) for lv in levels} == {("tensor", 99.0)}


def test_notebook_setup_is_the_parameters_cell_config():
    from pathlib import Path

    from quee_kit.notebook import setup
    cfg, fig_dir, table_dir = setup("configs/digits.yaml", ["model.epochs=3"], seed=2, fast=False, out_dir="out")
    assert (cfg.seed, cfg.model.epochs) == (2, 3)
    assert (fig_dir, table_dir) == (Path("out/figures"), Path("out/tables"))


def test_eval_variants_names_known_quee_variants():
    from quee_kit.config import ConfigError, load_config
    assert load_config(None, ["eval.variants=[quee, quee-exit-only]"]).eval.variants == ["quee", "quee-exit-only"]
    with pytest.raises(ConfigError, match=r"eval\.variants must be null or a list holding quee"):
        load_config(None, ["eval.variants=[quee-exit-only]"])
    with pytest.raises(ConfigError, match=r"eval\.variants"):
        load_config(None, ["eval.variants=[quee, quee-fancy]"])
