"""Where the cached artifacts live: one folder, one file name per (kind, key).

A :class:`Store` is made from the config's ``cache_dir`` string once, where the config is taken apart
(stage one, the pipeline), and handed down as a value: the modules that compute numbers never see the
whole config to learn where their files go. A relative folder is under the project root, so that the
CLI and the notebooks (which run in ``notebooks/``) share one trained model and one cache per split.
Imports nothing of the kit but :mod:`quee_kit.locations` (machinery, below every science module).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .locations import PROJECT_ROOT

__all__ = ["Store", "store_root"]


def store_root(cache_dir: str | Path) -> Path:
    """The folder of the config field ``cache_dir``: absolute as given, relative under the project root."""
    p = Path(cache_dir)
    return p if p.is_absolute() else PROJECT_ROOT / p


@dataclass(frozen=True)
class Store:
    """The artifact folder ``root``; ``file(kind, key)`` is ``root/{kind}-{key[:16]}.pt`` (the key's first
    16 hex digits name the file; the whole key is checked inside it, :mod:`quee_kit.artifacts`)."""
    root: Path

    @classmethod
    def at(cls, cache_dir: str | Path) -> "Store":
        """The store of the config field ``cache_dir`` (:func:`store_root`)."""
        return cls(store_root(cache_dir))

    def file(self, kind: str, key: str, suffix: str = ".pt") -> Path:
        """The file of the artifact of ``kind`` (``model``, ``cache-calib``, ``predictors``, ``study``, ...)
        and ``key``."""
        return self.root / f"{kind}-{key[:16]}{suffix}"
