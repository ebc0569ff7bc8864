"""The setup every numbered notebook starts with (no torch: the explorer page imports nothing heavy)."""
from __future__ import annotations

from pathlib import Path

from .config import Config, load_config
from .plots import set_theme

__all__ = ["setup"]


def setup(config: str, overrides=(), seed: int = 0, fast: bool = True, out_dir: str = "../results/notebooks"
          ) -> tuple[Config, Path, Path]:
    """The kit's figure theme set, and ``(cfg, fig_dir, table_dir)``: the config of the notebook's
    ``parameters`` cell (``overrides`` as for ``quee-kit run --set``, then ``seed``) and the folders
    its figures and tables go to (``{out_dir}/figures``, ``{out_dir}/tables``)."""
    set_theme()
    cfg = load_config(config, overrides=[*overrides, f"seed={seed}"], fast=fast)
    return cfg, Path(out_dir) / "figures", Path(out_dir) / "tables"
