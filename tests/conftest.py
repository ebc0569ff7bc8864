"""Shared fixtures: a small trained model and path caches on the bundled 8x8 digits (seconds)."""
import pytest

from quee_kit.config import load_config


@pytest.fixture(scope="session")
def digits_cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("quee_cache")
    return load_config("configs/digits.yaml", [f"cache_dir={cache}", "model.epochs=15"])


@pytest.fixture(scope="session")
def digits_prep(digits_cfg):
    from quee_kit.pipeline import prepare
    return prepare(digits_cfg, progress=False)


@pytest.fixture()
def plot_theme():
    """The kit's seaborn theme for a figure test, and every figure closed afterwards."""
    import matplotlib.pyplot as plt

    from quee_kit import plots
    plots.set_theme()
    yield
    plt.close("all")
