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
    assert key_fields(PathsConfig()) == {"family": "monotone", "dtype": "float64"}   # batch_size: same numbers either way
    q = QuantConfig()
    # every quant field changes the numbers; the static-scale ones are keyed only when set, so that the
    # default keys (and every stored default artifact) stay what they were before those options existed
    late = {"act_scale", "static_percentile", "static_samples"}
    assert key_fields(q) == {k: v for k, v in dataclasses.asdict(q).items() if k not in late}
    s = QuantConfig(act_scale="static", static_percentile=99.0)
    assert key_fields(s) == {k: v for k, v in dataclasses.asdict(s).items() if k != "static_samples"}


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


# ---------------------------------------------------------------- values generated from the declared limits

from quee_kit.config_rules import LIMITS, MAX_LENGTH, read_yaml  # noqa: E402

_LIST_AT = {"data.sizes": lambda v: [v, 10, 10], "eval.auc_range": None}


def _outside(lo, hi):
    """Values just outside [lo, hi], plus the non-finite ones for a float range."""
    if isinstance(lo, int) and isinstance(hi, int):
        return [lo - 1, hi + 1]
    return [lo - max(abs(lo), 1.0), hi * 2 + 1, float("nan"), float("inf"), float("-inf")]


def _override(key: str, v) -> str:
    text = {float("nan"): ".nan", float("inf"): ".inf", float("-inf"): "-.inf"}.get(v, repr(v)) if v == v else ".nan"
    if not key.endswith("[]"):
        return f"{key}={text}"
    base = key[:-2]
    if base == "eval.auc_range":   # the item out of range next to a valid one, so that lo < hi holds where it can
        return f"{base}=[{text},90.0]" if not v == v or v < 1 else f"{base}=[0.03,{text}]"
    items = {"data.sizes": f"[{text},10,10]"}.get(base, f"[{text}]")
    return f"{base}={items}"


@pytest.mark.parametrize("key", sorted(LIMITS))
def test_every_declared_limit_fails_with_one_short_line(key):
    for v in _outside(*LIMITS[key]):
        with pytest.raises(ConfigError) as e:
            load_config("configs/digits.yaml", [_override(key, v)])
        msg = str(e.value)
        assert key.removesuffix("[]") in msg and "\n" not in msg and len(msg) <= 300, (v, msg)
    lo, hi = LIMITS[key]    # the bounds themselves pass the limit check (a section may still refuse them)
    for v in (lo, hi):
        try:
            load_config("configs/digits.yaml", [_override(key, v)])
        except ConfigError as e:
            assert "must be an int in" not in str(e) and "must be a number in" not in str(e), str(e)


@pytest.mark.parametrize("key", sorted(MAX_LENGTH))
def test_lists_longer_than_declared_fail(key):
    n = MAX_LENGTH[key] + 1
    item = {"eval.budgets": "0.05", "eval.seeds": "0", "quant.levels": "w8a8", "eval.variants": "quee"}[key]
    with pytest.raises(ConfigError, match=rf"^config: {key} must be a list of at most {n - 1} items \(got '{n} items'\)$"):
        load_config("configs/digits.yaml", [f"{key}=[{','.join([item] * n)}]"])


def test_yaml_aliases_and_duplicate_keys_are_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    with pytest.raises(ConfigError, match=r"line 2, column \d+: aliases \(\*name\) are not allowed"):
        read_yaml(bomb, "bomb.yaml")
    with pytest.raises(ConfigError, match=r"^config: dup.yaml is not valid YAML at line 3, column 3: duplicate key 'epochs'$"):
        read_yaml("model:\n  epochs: 3\n  epochs: 30\n", "dup.yaml")
    assert read_yaml("model: {epochs: 3}\nseed: 1\n", "ok.yaml") == {"model": {"epochs": 3}, "seed": 1}


def test_a_huge_value_is_shown_cut():
    with pytest.raises(ConfigError) as e:
        load_config("configs/digits.yaml", ["model.arch=" + "x" * 100_000])
    assert len(str(e.value)) <= 300 and "\n" not in str(e.value) and "model.arch" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("configs/digits.yaml", ["eval.budgets=[" + ",".join(["[0.1]"] * 10_000) + "]"])
    assert len(str(e.value)) <= 300 and "eval.budgets" in str(e.value)


def test_patch_that_does_not_divide_the_image_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "quee_kit", "cache", "--config", "configs/digits.yaml", "--quiet",
                        "--set", "model.patch=3", "--set", f"cache_dir={tmp_path / 'c'}", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == ("quee-kit: config: model.patch must divide the image side 8 (got 3) "
                                "(--debug shows the traceback)")
