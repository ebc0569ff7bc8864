"""What a config may be, checked as data: the errors, a strict YAML reader and the declared limits.

- :func:`read_yaml` refuses aliases (a 500-byte file of nested aliases expands to gigabytes) and
  duplicate keys (the second silently won);
- every value an error shows is cut to about 200 characters (:func:`shown`);
- :data:`LIMITS` declares the range of every number and :data:`MAX_LENGTH` the length of every list
  whose size scales the compute or the memory (the λ grid, the bootstrap, the budgets...), so that a
  typo fails in a second with one line instead of a MemoryError or hours of compute.
  ``tests/test_config.py`` generates the values just outside each range from these tables.
"""
from __future__ import annotations

import math
import reprlib
import typing

import yaml

__all__ = ["UserError", "ConfigError", "read_yaml", "fail", "shown", "LIMITS", "MAX_LENGTH", "check_lengths",
           "check_limits"]


class UserError(ValueError):
    """A problem the user can fix (a config, a data file, a missing file): its message is one line
    that names what is wrong, and the CLI prints it alone and exits with status 2 (``--debug`` shows
    the traceback). Anything else that escapes is a bug and keeps its traceback."""


class ConfigError(UserError):
    """A one-line error naming the offending config key and the allowed values."""


_REPR = reprlib.Repr()   # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def shown(value) -> str:
    """``repr(value)`` cut to at most 200 characters on one line (an error must stay one short line)."""
    text = _REPR.repr(value).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def fail(key: str, allowed: str, got) -> typing.NoReturn:
    raise ConfigError(f"config: {key} must be {allowed} (got {shown(got)})")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases (no expansion bombs) and without duplicate keys (no silent winner)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}",
                                                        key_node.start_mark)
            seen.add(key) if isinstance(key, typing.Hashable) else None
        return super().construct_mapping(node, deep)


def read_yaml(text: str, where: str):
    """Parse YAML with :class:`_StrictLoader`; errors become one line naming ``where`` and the position."""
    try:
        return yaml.load(text, Loader=_StrictLoader)   # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = str(getattr(e, "problem", None) or type(e).__name__)[:120]
        raise ConfigError(f"config: {where} is not valid YAML{pos}: {what}") from None


# Declared ranges [lo, hi] (both included) of every number a config holds; ``key[]``: each item of a list.
# Wide enough for any study the kit can run on one machine; they exist to stop typos before compute.
SEED_MAX = 2 ** 32 - 1
LIMITS: dict[str, tuple[float, float]] = {
    "seed": (0, SEED_MAX), "jobs": (0, 1024),
    "data.split_seed": (0, SEED_MAX), "data.sizes[]": (1, 100_000_000), "data.workers": (0, 256),
    "data.image_size": (8, 4096), "data.difficulty": (0.0, 1.0), "data.heterogeneity": (0.0, 1.0),
    "model.patch": (1, 1024), "model.dim": (1, 16384), "model.depth": (1, 256), "model.heads": (1, 1024),
    "model.mlp_ratio": (1, 64), "model.epochs": (0, 100_000), "model.batch_size": (1, 1_000_000),
    "model.lr": (1e-12, 10.0), "model.weight_decay": (0.0, 100.0), "model.warmup_epochs": (0.0, 100_000.0),
    "quant.clip_percentile": (50.0, 100.0), "quant.static_percentile": (50.0, 100.0),
    "quant.static_samples": (1, 10_000_000),
    "paths.batch_size": (1, 10_000_000),
    "predictor.bins": (2, 10_000), "predictor.K": (1, 100_000), "predictor.knn_k": (1, 1_000_000),
    "predictor.prior_weight": (0.0, 1e9), "predictor.hidden": (1, 65_536), "predictor.layers": (1, 64),
    "predictor.folds": (2, 1000), "predictor.epochs": (1, 100_000), "predictor.patience": (1, 100_000),
    "predictor.lr": (1e-12, 10.0), "predictor.max_rows": (1, 1_000_000_000),
    "eval.budgets[]": (1e-9, 100.0), "eval.auc_range[]": (1e-9, 100.0), "eval.lambda_grid": (2, 100_000),
    "eval.bootstrap": (100, 1_000_000), "eval.seeds[]": (0, SEED_MAX),
}
MAX_LENGTH: dict[str, int] = {"eval.budgets": 100, "eval.seeds": 1000, "quant.levels": 32,
                              "eval.variants": 64}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _number(lo, hi) -> str:
    if isinstance(lo, int) and isinstance(hi, int):
        return f"an int in [{lo}, {hi}]"
    return f"a number in [{lo:g}, {hi:g}]"


def check_lengths(cfg) -> None:
    """:class:`ConfigError` naming the first list longer than :data:`MAX_LENGTH` allows (checked first:
    a 10,000-item list is refused for its length, whatever else is wrong with it)."""
    for key, n in MAX_LENGTH.items():
        value = _get(cfg, key)
        if value is not None and len(value) > n:
            fail(key, f"a list of at most {n} items", f"{len(value)} items")


def check_limits(cfg) -> None:
    """:class:`ConfigError` naming the first number outside :data:`LIMITS` (a NaN or an infinity included)."""
    for key, (lo, hi) in LIMITS.items():
        items = _get(cfg, key.removesuffix("[]"))
        if items is None:
            continue
        for i, v in enumerate(items if key.endswith("[]") else [items]):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
                fail(key.replace("[]", f"[{i}]"), _number(lo, hi), v)
