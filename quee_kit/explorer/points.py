"""What the explorer shows, stored as one content-hashed artifact, so that the page starts in seconds.

:class:`ExplorerData` holds, for one study (config + seed): every method's knob table
(``Study.points``: cost and accuracy on calib and test per knob) with the final test node of every
sample under every knob, and the per-sample arrays the panels need (tree depth/level per node, test
correctness and max prob per node, the predicted error of exiting, the test images). It is built
once from a :class:`~quee_kit.study.Study` and saved through :func:`quee_kit.artifacts.load_or_build`
as its fields (:meth:`ExplorerData.to_payload`: arrays, tables, strings; no pickle), so loading it
imports neither torch nor the study's modules, and runs no code from the file. Its key hashes
the whole config, the data file of ``npz:`` datasets and the ``CODE_VERSION`` of every module this one
imports that declares one (:func:`~quee_kit.store.code_versions`: a method whose numbers change bumps its
version, and the points are recomputed). A level subset other than "all levels" needs the
live study (:func:`restricted_table`); it is loaded on first use.

    python -m quee_kit.explorer --config configs/mnist10k.yaml [--fast] [--seed 0]   # build it
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import ArtifactError, load_artifact, load_or_build
from ..config import load_config
from ..store import Store, artifact_key
from .state import Memo

# Bump when a change here changes the numbers of stored explorer points (keyed by quee_kit.store.code_versions).
CODE_VERSION = 1

__all__ = ["ExplorerData", "MethodTable", "build_explorer_data", "load_explorer_data", "explorer_artifact",
           "FORMAT"]

FORMAT = 3   # bump when the stored fields change (3: fields through the safe codec, no pickle)

# What a stored MethodTable / ExplorerData holds: their fields less the live objects.
_TABLE_FIELDS = ("name", "points", "knobs", "knob_fields", "knob_name", "err_key", "nodes")


@dataclass
class MethodTable:
    """One method's knobs within a level set. ``points``: the knob's named fields (``entry`` and the
    method's ``knob_name``, e.g. ``tau``), ``cost_calib, acc_calib, cost_test, acc_test`` per knob;
    ``nodes``: (n_knobs, N) final test node per knob and sample, or None when ``method`` (a live
    method object) computes them on demand."""
    name: str
    points: pd.DataFrame
    knobs: list
    knob_fields: tuple        # names of a knob's fields (the method's ``knob_fields``)
    knob_name: str | None     # its continuous knob (λ, τ, r, p; :func:`quee_kit.methods.scalar_knob`)
    err_key: str | None       # which predictor's ê the examples show (None: 1 - max prob)
    nodes: np.ndarray | None = None
    method: object = None
    _index: dict = field(default=None, repr=False)
    _memo: Memo = field(default=None, repr=False)

    def knob_index(self, knob) -> int:
        if self._index is None:
            self._index = {tuple(k): i for i, k in enumerate(self.knobs)}
        if tuple(knob) not in self._index:
            raise ValueError(f"{self.name}: no knob {knob} in this level set")
        return self._index[tuple(knob)]

    @property
    def has_lambda(self) -> bool:
        """λ is a knob (QuEE variants, oracles): the explorer's λ mode applies."""
        return self.knob_name == "lambda"

    @property
    def has_entry(self) -> bool:
        """λ mode also picks the entry level (QuEE variants)."""
        return self.has_lambda and "entry" in self.knob_fields

    def describe(self, knob) -> dict:
        """``entry`` (a level name, or e.g. ``per-sample``) and ``value``, the continuous knob (NaN: none)."""
        row = self.points.iloc[self.knob_index(knob)]
        return {"entry": row["entry"], "value": row.get(self.knob_name, np.nan) if self.knob_name else np.nan}

    def test_nodes(self, i: int) -> np.ndarray:
        if self.nodes is not None:
            return self.nodes[i].astype(np.int64)
        if self._memo is None:
            self._memo = Memo(512)
        return self._memo.get(i, lambda: np.asarray(self.method.outcome("test", self.knobs[i]).node))

    def __getstate__(self):
        return {**self.__dict__, "method": None, "_index": None, "_memo": None}


@dataclass
class ExplorerData:
    """Everything the explorer shows for one study (test split). Arrays: ``depth``/``level``
    (n_nodes,) of the path tree (depth 1-based, level index 0 = reference), ``exit_option``
    (n_nodes,), ``correct`` (n_nodes, N) bool, ``max_prob`` (n_nodes, N), ``err_hat_exit[key]``
    (n_nodes, N) predicted error of exiting at each node (1 - max prob at the last exit),
    ``images`` (N, C, H, W) uint8."""
    setting: str
    fast: bool
    seed: int
    config: str
    overrides: list
    level_names: list
    depth: np.ndarray
    level: np.ndarray
    exit_option: np.ndarray
    correct: np.ndarray
    max_prob: np.ndarray
    err_hat_exit: dict
    images: np.ndarray
    c_min: float
    c_sat: float
    ref_acc: float
    lambdas: np.ndarray
    methods: dict
    build_seconds: float = 0.0
    note: str = ""
    _study: object = field(default=None, repr=False)

    @property
    def n_test(self) -> int:
        return int(self.correct.shape[1])

    def table(self, method: str, level_set: tuple[int, ...]) -> MethodTable:
        """The method's table within ``level_set`` (level indices); subsets use the live study."""
        if tuple(level_set) == tuple(range(len(self.level_names))):
            return self.methods[method]
        return restricted_table(self.study(), method, tuple(level_set), self.methods[method])

    @property
    def study_loaded(self) -> bool:
        return self._study is not None

    def study(self):
        """The live :class:`~quee_kit.study.Study` (loaded from the cache on first use: seconds to minutes)."""
        if self._study is None:
            from ..study_run import run_study
            cfg = load_config(self.config, [*self.overrides, f"seed={self.seed}"], fast=self.fast)
            self._study = run_study(cfg, progress=False)
        return self._study

    def __getstate__(self):
        return {**self.__dict__, "_study": None, "note": ""}

    def to_payload(self) -> dict:
        """The stored fields as plain data (:mod:`quee_kit.safe_codec`): no live study, method or note."""
        skip = ("_study", "note", "methods")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out["methods"] = {k: {f: getattr(t, f) for f in _TABLE_FIELDS} for k, t in self.methods.items()}
        return out

    @classmethod
    def from_payload(cls, d: dict) -> "ExplorerData":
        """The inverse of :meth:`to_payload`."""
        return cls(**{**d, "methods": {k: MethodTable(**t) for k, t in d["methods"].items()}})


def _images_uint8(x) -> np.ndarray:
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    return np.round((x - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)


def build_explorer_data(study, fast: bool, config: str, overrides=()) -> ExplorerData:
    """Every method's knob table with its test nodes, from a study (the nodes its evaluation kept, or else
    its methods' outcomes run again: seconds)."""
    from ..study import c_min_sat
    from ..methods import scalar_knob
    from ..styles import setting_label
    t0 = time.perf_counter()
    prep, tree = study.prep, study.prep.tree
    test = prep.caches["test"]
    max_prob = test.features[..., 0].numpy().astype(np.float32)
    n_nodes, n = max_prob.shape
    exit_option = np.asarray(study.opts.exit_option)
    err_hat_exit, err_keys, source = {}, {}, {}
    for name, p in study.predictors.items():   # variants sharing a predictor share one array
        key = next((k for k, q in source.items() if q is p), None)
        if key is None:
            key, source[name] = name, p
            e = p["test"][np.arange(n_nodes)[:, None], np.arange(n)[None, :], exit_option[:, None]]
            err_hat_exit[name] = np.where(np.isfinite(e), e, 1.0 - max_prob).astype(np.float32)
        err_keys[name] = key
    default_err = err_keys.get("quee")
    dtype = np.int16 if n_nodes < 2 ** 15 else np.int32
    methods = {}
    for name, m in study.methods.items():
        nodes = study.test_nodes.get(name)   # kept by the study's evaluation; else the outcomes are run again
        if nodes is None:
            nodes = np.stack([np.asarray(o.node) for o in m.outcomes("test")])
        methods[name] = MethodTable(
            name, study.points[name].reset_index(drop=True), [tuple(k) for k in m.knobs],
            tuple(m.knob_fields), scalar_knob(m), err_key=err_keys.get(name, default_err),
            nodes=nodes.astype(dtype))
    c_min, c_sat = c_min_sat(study)
    cfg = prep.cfg
    return ExplorerData(
        setting=setting_label(fast, [cfg.seed], n, len(prep.data.train)), fast=fast, seed=cfg.seed,
        config=str(config), overrides=list(overrides), level_names=[lv.name for lv in tree.levels],
        depth=np.asarray(tree.depth), level=np.asarray(tree.level), exit_option=exit_option,
        correct=np.asarray(test.correct_np, dtype=bool), max_prob=max_prob, err_hat_exit=err_hat_exit,
        images=_images_uint8(prep.data.test.x), c_min=c_min, c_sat=c_sat,
        ref_acc=float(study.points["static-quant"]["acc_test"].iloc[0]),
        lambdas=np.asarray(sorted({k[-1] for k in study.methods["oracle"].knobs})), methods=methods,
        build_seconds=time.perf_counter() - t0, _study=study)


def explorer_artifact(cfg) -> tuple[Path, str]:
    """(path, key) of the explorer artifact of a config (its ``seed`` included)."""
    data = cfg.data.name
    if data.startswith("npz:"):   # a user's file: its bytes are part of what the points were built from
        data = hashlib.sha256(Path(data[4:]).expanduser().read_bytes()).hexdigest()
    key = artifact_key("explorer", FORMAT, dataclasses.asdict(cfg), data, code="quee_kit.explorer.points")
    return Store.at(cfg.cache_dir).file("explorer", key, ".pkl"), key


def load_explorer_data(config: str = "configs/mnist10k.yaml", fast: bool | None = None, seed: int = 0,
                       overrides=(), build: bool = True, progress: bool = True) -> ExplorerData:
    """The explorer's data for a study. ``fast=None``: the full study when its artifact exists, else the
    fast one (``note`` then says how to get the full one). A missing artifact is built (needs the
    study: loads or trains it) when ``build``, else :class:`~quee_kit.artifacts.ArtifactError`."""
    def locate(f: bool):
        return explorer_artifact(load_config(config, [*overrides, f"seed={seed}"], fast=f, validate=False))

    note = ""
    if fast is None:
        path, key = locate(False)
        try:
            return ExplorerData.from_payload(load_artifact(path, key))
        except ArtifactError:
            fast = True
            note = ("The full study's explorer points are not built yet: build them once in a terminal with "
                    f"`python -m quee_kit.explorer --config {config}` (minutes), then reload this page.")
    path, key = locate(fast)
    if not build:
        data = ExplorerData.from_payload(load_artifact(path, key))
    else:
        def make():
            from ..study_run import run_study
            if progress:
                print(f"building the explorer data for the {'fast' if fast else 'full'} study (once; "
                      f"minutes when the model is not trained yet)…", flush=True)
            cfg = load_config(config, [*overrides, f"seed={seed}"], fast=fast)
            built.append(build_explorer_data(run_study(cfg, progress=progress), fast, config, overrides))
            return built[0].to_payload()
        built: list = []   # a fresh build keeps its live study (the level subsets need it)
        payload = load_or_build(path, key, make, what="explorer data")
        data = built[0] if built else ExplorerData.from_payload(payload)
    data.note = note
    return data


def restricted_table(study, name: str, level_set: tuple[int, ...], full: MethodTable) -> MethodTable:
    """``full`` (the all-levels table of method ``name``) restricted to ``level_set`` (the explorer's *levels*
    control): each method restricts itself (``Method.restrict``); its points are recomputed on the restricted
    method (seconds), test nodes computed per knob on demand. Needs the live study (torch), hence the imports
    here, on first use."""
    from ..methods import scalar_knob
    from ..study import method_points
    m = study.methods[name].restrict(level_set)
    return MethodTable(name, method_points(m), [tuple(k) for k in m.knobs], tuple(m.knob_fields), scalar_knob(m),
                       full.err_key, nodes=None, method=m)
