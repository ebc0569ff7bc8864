"""Tests of quee_kit.dials: the difficulty and heterogeneity dials of in-memory datasets."""
import numpy as np
import pytest

from quee_kit.config import ConfigError, load_config
from quee_kit.data import load_dataset
from quee_kit.dials import DIAL_SEED, apply_dials


@pytest.fixture(scope="module")
def x():
    return load_dataset("mnist10k").test.x.numpy()[:300, 0]  # (300, 28, 28) float in [0, 1]


def test_dials_at_zero_are_the_plain_data(x):
    assert apply_dials(x, 0.0, 0.0) is x
    u8 = (x * 255).round().astype(np.uint8)
    assert apply_dials(u8) is u8
    plain, zero = load_dataset("mnist10k"), load_dataset("mnist10k", difficulty=0.0, heterogeneity=0.0)
    assert plain.digest == zero.digest and bool((plain.test.x == zero.test.x).all())


@pytest.mark.parametrize("d,h", [(0.5, 0.0), (0.0, 0.5), (1.0, 1.0)])
def test_dials_deterministic_shapes_and_ranges(x, d, h):
    a, b = apply_dials(x, d, h), apply_dials(x, d, h)
    assert np.array_equal(a, b)                                  # fixed seed: the same data every time
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.array_equal(a, apply_dials(x, d, h, seed=DIAL_SEED + 1))
    assert np.abs(a - x).mean() > 0.01                           # it does change the images
    chw = apply_dials(x[:, None], d, h)                          # (N, C, H, W) gives the same pixels
    assert chw.shape == (len(x), 1, 28, 28) and np.allclose(chw[:, 0], a, atol=1e-6)


def test_uint8_input_is_scaled_like_float(x):
    u8 = (x * 255).round().astype(np.uint8)
    np.testing.assert_allclose(apply_dials(u8, 0.3, 0.3), apply_dials(u8.astype(np.float32) / 255, 0.3, 0.3),
                               atol=1e-6)


def test_heterogeneity_spreads_contrast_per_image(x):
    # At h = 1 each image gets its own contrast factor in [1/5, 1] and its own noise std in [0, 0.5], so
    # the per-image pixel std varies more across images than in the plain digits (fixed seed and data).
    spread = lambda a: a.reshape(len(a), -1).std(1).std()
    assert spread(apply_dials(x, 0.0, 1.0)) > spread(x) * 1.2


def test_dial_datasets_differ_and_keep_the_split(x):
    plain = load_dataset("digits")
    hard = load_dataset("digits", difficulty=0.5)
    assert hard.digest != plain.digest
    assert bool((hard.test.y == plain.test.y).all()) and hard.test.x.shape == plain.test.x.shape


def test_bad_dial_values_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"data\.difficulty must be a number in \[0, 1\]"):
        load_config(None, ["data.difficulty=1.5"])
    with pytest.raises(ConfigError, match=r"data\.heterogeneity"):
        load_config(None, ["data.heterogeneity=-0.1"])
    with pytest.raises(ValueError, match="difficulty must be a number in"):
        apply_dials(np.zeros((10, 4, 4)), difficulty=2)


_DIGEST = ("import sys, hashlib; from quee_kit.data import load_dataset; "
           "d = load_dataset('mnist10k', difficulty=0.75); "
           "print(d.digest, hashlib.sha256(d.train.x.numpy().tobytes()).hexdigest())")


def test_a_dialled_datasets_digest_names_its_recipe_not_the_kernels_bits():
    """The warp's pixels differ in their last bits between ATen kernel paths (as between CPUs), but the
    digest, which keys shipped models and every cache, does not: it hashes the raw data and the dials."""
    import os
    import subprocess
    import sys
    out = {}
    for cap in ("", "default"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap} if cap else dict(os.environ)
        res = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True)
        out[cap] = res.stdout.split()
    # same recipe, same digest, although the derived pixels differ (here: 5% of them, by up to 3e-6)
    assert out[""][0] == out["default"][0]
    a = load_dataset("mnist10k", difficulty=0.75)
    assert a.digest == out[""][0]
    assert load_dataset("mnist10k", difficulty=1).digest == load_dataset("mnist10k", difficulty=1.0).digest
    assert len({a.digest, load_dataset("mnist10k", difficulty=0.5).digest,
                load_dataset("mnist10k", heterogeneity=0.75).digest, load_dataset("mnist10k").digest}) == 4
