"""The shape every method has, and the registry the study builds its baselines from.

A *method* is anything the budget rule can pick an operating point of: QuEE and its ablations,
every baseline and the oracle bounds. It has

- ``name`` and ``knobs``: its own parameter grid, a list of tuples;
- ``knob_fields``: the names of a knob's fields, in order (``("entry", "lambda")`` for QuEE: the entry
  level index and λ; ``("entry", "tau")`` for confidence exits; ``("lambda",)`` for the oracles);
- ``outcome(split, knob)``: an :class:`Outcome` (final node, cost, correctness per sample);
- ``describe(knob)``: the knob as named fields, the entry level by name (``{"entry": "w8a8", "tau": 0.9}``);
- ``restrict(levels)``: the same method running only blocks at the level indices ``levels``.

:class:`Method` gives the common parts (a knob's entry level is its first field; restricting keeps
the knobs whose entry is in the set). A new baseline is one class in one file::

    @register_method("my-baseline")
    class MyBaseline(Method):
        knob_fields = ("entry", "p")
        @classmethod
        def build(cls, ctx: MethodContext, name: str): ...
        def outcome(self, split, knob): ...

:func:`build_methods` builds every registered method, in registration order, for a study.
The budget rule is :func:`quee_kit.budget_rule.select_for_budget`, the same for every method.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .options import OptionSpace
from .paths import PathCache
from .registry import METHODS

# Bump when a change here changes the numbers of a stored study (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["Outcome", "make_outcome", "Method", "Envelope", "MethodContext", "METHODS", "register_method",
           "build_methods", "scalar_knob"]


@dataclass
class Outcome:
    """Per-sample result of a method on one split: final node, cost (normalized BOPs), correctness."""
    node: np.ndarray
    cost: np.ndarray
    correct: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())


def make_outcome(cache: PathCache, node: np.ndarray, cost: np.ndarray) -> Outcome:
    node = np.asarray(node)
    correct = cache.correct_np[node, np.arange(len(node))]
    return Outcome(node, np.asarray(cost, dtype=float), correct)


@dataclass(frozen=True)
class MethodContext:
    """What a registered method is built from: the study's caches (split -> :class:`PathCache`), its
    option space, the λ grid, the seed, and the methods built before it (``built``, name -> method)."""
    caches: dict
    opts: OptionSpace
    lambdas: np.ndarray
    seed: int = 0
    built: dict = field(default_factory=dict)

    @property
    def tree(self):
        return self.opts.tree


class Method:
    """Common parts of a method. Subclasses set ``name``, ``knobs``, ``knob_fields``, ``tree`` and
    ``outcome``; the first knob field ``entry`` is a level index (described by its name)."""

    name: str
    knobs: list
    knob_fields: tuple[str, ...] = ("entry",)

    def describe(self, knob) -> dict:
        """The knob as named fields; a level index ``entry`` by its level's name."""
        d = dict(zip(self.knob_fields, knob))
        if "entry" in d:
            d["entry"] = self.tree.levels[d["entry"]].name
        return d

    def knob_levels(self, knob) -> set:
        """Level indices the blocks of ``knob`` may run at (restriction keeps a knob inside the set)."""
        return {knob[self.knob_fields.index("entry")]}

    def restrict(self, levels) -> "Method":
        """A copy that only runs blocks at the level indices ``levels`` (knobs outside dropped)."""
        allowed = set(int(q) for q in levels)
        m = copy.copy(self)
        m.knobs = [k for k in self.knobs if self.knob_levels(k) <= allowed]
        if not m.knobs:
            raise ValueError(f"{self.name} has no knob inside the level set {tuple(sorted(allowed))}")
        return m

    def outcomes(self, split: str) -> list[Outcome]:
        """Every knob's outcome (subclasses vectorize where they can)."""
        return [self.outcome(split, k) for k in self.knobs]


class Envelope(Method):
    """A union of other methods' knobs (``parts``: part name -> method), the budget rule picking among all of
    them: a knob is (part, *that part's knob), run and described by that part, its entry prefixed with the
    part's name."""

    parts: dict

    def outcome(self, split, knob) -> Outcome:
        return self.parts[knob[0]].outcome(split, knob[1:])

    def describe(self, knob) -> dict:
        d = self.parts[knob[0]].describe(knob[1:])
        d["entry"] = f"{knob[0]}:{d['entry']}"
        return d


def scalar_knob(method) -> str | None:
    """The name of the method's continuous knob (``lambda``, ``tau``, ...), None when it has none:
    the last knob field that is neither the entry level nor a part of a union of methods."""
    last = method.knob_fields[-1]
    return None if last in ("entry", "part") else last


def register_method(*names: str):
    """Class decorator: the study builds ``cls.build(ctx, name)`` for each of ``names``
    (:data:`~quee_kit.registry.METHODS`: name -> class; insertion order is the study's order)."""
    return METHODS.register(*names)


def build_methods(ctx: MethodContext, names=None) -> dict:
    """Every registered method (or those of ``names``), in registration order; a method may use the
    ones built before it through ``ctx.built``."""
    for n in names or METHODS:
        ctx.built[n] = METHODS[n].build(ctx, n)
    return {n: ctx.built[n] for n in (names or METHODS)}
