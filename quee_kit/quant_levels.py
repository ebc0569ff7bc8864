"""Precision levels as names and fields, no torch: ``w{W}a{A}`` parsed into a :class:`Level`, ordered by
cost, built from a config's quant section. :mod:`quee_kit.quant` applies them to blocks; the config check
parses levels here without importing torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Level", "parse_level", "sorted_levels", "config_levels", "FLOAT_BITS"]

FLOAT_BITS = 16  # bits >= this run in float32 (costed at their nominal bits)
_LEVEL_RE = re.compile(r"^w(\d+)a(\d+)$")


@dataclass(frozen=True)
class Level:
    """One precision level: weights at ``w_bits`` (per output channel), activations at ``a_bits`` with
    one scale per sample (``granularity="tensor"``) or per token (``"token"``), optionally clipped at
    the ``clip_percentile`` of |x| per sample. Everything that defines the level's numbers is here, so
    a level (``dataclasses.asdict``) is its own cache key."""
    w_bits: int
    a_bits: int
    granularity: str = "token"
    clip_percentile: float | None = None

    @property
    def name(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}"

    @property
    def is_float(self) -> bool:
        """Both widths at FLOAT_BITS or more: the block runs in float (costed at its nominal bits)."""
        return min(self.w_bits, self.a_bits) >= FLOAT_BITS

    def __str__(self) -> str:
        return self.name


def parse_level(s: str | Level, granularity: str = "token", clip_percentile: float | None = None) -> Level:
    """``'w4a8'`` -> ``Level(4, 8, granularity, clip_percentile)``; bits must be in [2, 32]."""
    if isinstance(s, Level):
        return s
    m = _LEVEL_RE.match(str(s).strip())
    if not m:
        raise ValueError(f"level {s!r} is not of the form w<bits>a<bits>, e.g. w4a8")
    w, a = int(m.group(1)), int(m.group(2))
    if not (2 <= w <= 32 and 2 <= a <= 32):
        raise ValueError(f"level {s!r}: bits must be between 2 and 32")
    return Level(w, a, granularity, clip_percentile)


def sorted_levels(levels) -> list[Level]:
    """Levels (or their names) ordered by cost per MAC, costliest (the reference) first."""
    return sorted((parse_level(s) for s in levels), key=lambda l: (l.w_bits * l.a_bits, l.a_bits, l.w_bits),
                  reverse=True)


def config_levels(q) -> list[Level]:
    """The levels of a :class:`~quee_kit.config.QuantConfig`, ordered as :func:`sorted_levels`, each
    carrying the config's activation granularity and clipping."""
    return sorted_levels(parse_level(s, q.act_granularity, q.clip_percentile) for s in q.levels)
