"""Shared fixtures: a small trained model, path caches and one study on the bundled 8x8 digits (seconds)."""
import pytest

from quee_kit.config import load_config


@pytest.fixture(scope="session")
def digits_cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("quee_cache")
    return load_config("configs/digits.yaml", [f"cache_dir={cache}", "model.epochs=15"])


@pytest.fixture(scope="session")
def digits_prep(digits_cfg):
    from quee_kit.prepare import prepare
    return prepare(digits_cfg, progress=False)


# the one digits study of the tests (policy, analysis, widgets, methods): cross-fitted predictors shared
STUDY_OVERRIDES = ["model.epochs=15", "predictor.folds=3", "predictor.epochs=15", "eval.lambda_grid=40"]


@pytest.fixture(scope="session")
def study_cfg(digits_cfg):
    return load_config("configs/digits.yaml", [f"cache_dir={digits_cfg.cache_dir}", *STUDY_OVERRIDES])


@pytest.fixture(scope="session")
def study(study_cfg, digits_prep):
    from quee_kit.study_run import run_study
    return run_study(study_cfg, progress=False, prep=digits_prep)


@pytest.fixture()
def plot_theme():
    """The kit's seaborn theme for a figure test, and every figure closed afterwards."""
    import matplotlib.pyplot as plt

    from quee_kit import plots
    plots.set_theme()
    yield
    plt.close("all")
