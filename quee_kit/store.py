"""Where the cached artifacts live (one folder, one file name per kind and key) and the one recipe of
their keys.

Every artifact key (trained model, static scales, path cache, predictors, study, explorer points) is
:func:`artifact_key`: the sha256 of its kind and what it is built from (config sections as
:func:`~quee_kit.config.key_fields` gives them, digests of data and weights, the keys of the artifacts it
reads, format versions) and, for the artifacts of computed points (study, explorer), the code versions of
the modules that compute them (:func:`code_versions`): each such module declares ``CODE_VERSION``, an int
bumped with a change that changes its numbers, so a docstring or a figure edit keeps every stored study.

A :class:`Store` is made from the config's ``cache_dir`` string once, where the config is taken apart
(stage one, the pipeline), and handed down as a value: the modules that compute numbers never see the
whole config to learn where their files go. A relative folder is under the project root, so that the
CLI and the notebooks (which run in ``notebooks/``) share one trained model and one cache per split.
Imports nothing of the kit but :mod:`quee_kit.locations` (machinery, below every science module).
"""
from __future__ import annotations

import ast
import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import content_hash
from .locations import store_root

__all__ = ["Store", "store_root", "artifact_key", "code_versions", "PACKAGE_DIR"]

PACKAGE_DIR = Path(__file__).resolve().parent


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

    @contextlib.contextmanager
    def locked(self, kind: str, key: str):
        """Held by one process at a time: an advisory lock (``flock``) on ``root/locks/{kind}-{key[:16]}.lock``
        (a folder of their own: the artifact files stay all there is beside them), so
        that two processes about to build one artifact (two notebooks reading one study) build it once,
        the second loading what the first stored. Where ``fcntl`` does not exist (Windows) it locks nothing."""
        try:
            import fcntl
        except ImportError:   # no flock: two processes may each build it (the same bits, written atomically)
            yield
            return
        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / self.file(kind, key, ".lock").name, "a") as f:   # "a": never truncates a file another holds
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def artifact_key(kind: str, *parts: Any, code: str | None = None) -> str:
    """The key of an artifact of ``kind`` built from ``parts``; with ``code`` (a module name, e.g.
    ``quee_kit.study_run``) also the :func:`code_versions` of that module. Without ``code`` it is
    ``content_hash(kind, *parts)``, the recipe the shipped models and predictors were keyed with."""
    return content_hash(kind, *parts, *([dict(code_versions(code))] if code else []))


@functools.lru_cache(maxsize=None)
def code_versions(module: str, root: Path = PACKAGE_DIR) -> tuple[tuple[str, int], ...]:
    """``((module, CODE_VERSION), ...)``, sorted, of ``module`` and every module of the package at ``root`` it
    imports, directly or not, at module level or inside a function, that declares a module-level
    ``CODE_VERSION = <int>``. Read from the source files (nothing is imported), so the answer is the same
    in every process whatever it has imported."""
    files = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    out, seen, todo = {}, set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m not in files:
            continue
        seen.add(m)
        tree = ast.parse(files[m].read_text())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["CODE_VERSION"]
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)):
                out[m] = node.value.value
        pkg = m.split(".") if files[m].name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = ".".join((pkg[:len(pkg) - node.level + 1] if node.level else [])
                                + ([node.module] if node.module else []))
                todo += [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
    return tuple(sorted(out.items()))
