"""Where the kit's files live: the project root, and relative paths resolved against it. Imports nothing
of the package, so every layer may use it."""
from __future__ import annotations

from pathlib import Path

__all__ = ["PROJECT_ROOT", "resolve_path", "store_root"]


def _project_root() -> Path:
    """The repository root when the package runs from a checkout (its notebooks, configs and cache share
    it), else the working directory: an installed wheel keeps nothing beside site-packages."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else Path.cwd()


PROJECT_ROOT = _project_root()


def resolve_path(path: str | Path) -> Path:
    """A relative path is taken from the working directory, else from the project root
    (so notebooks run from ``notebooks/`` find ``configs/...`` and share one cache)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (PROJECT_ROOT / p).exists():
        return p
    return PROJECT_ROOT / p


def store_root(cache_dir: str | Path) -> Path:
    """The artifact folder of the config field ``cache_dir``: absolute as given, a relative one under the
    project root, so that the CLI and the notebooks (which run in ``notebooks/``) share one cache."""
    p = Path(cache_dir)
    return p if p.is_absolute() else PROJECT_ROOT / p
