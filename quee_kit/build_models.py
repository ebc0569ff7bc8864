"""``make models``: train every model listed in ``data/shipped_models.yaml`` on this machine and ship it
(:func:`quee_kit.shipped.ship_model`), then fit and ship the MLP error predictors an entry lists under
``predictors`` (QuEE variants) on the shipped model. Resumable: a model or predictor already built here is
reused from the cache.

    python -m quee_kit.build_models [--only NAME] [--seeds 0,1] [--predictors-only] [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import ConfigError, load_config, read_yaml
from .locations import resolve_path
from .prepare import load_data, load_or_train, model_key, prepare
from .safe_codec import encode
from . import shipped
from .shipped import ship_bytes, ship_model
from .study import predictor_configs
from .study_run import predictor_artifact_keys, predictor_artifacts
from .options import OptionSpace
from .variants import QUEE_VARIANTS

__all__ = ["shipped_list", "build_models", "build_predictors", "main"]

LIST = "data/shipped_models.yaml"


def shipped_list(path: str = LIST) -> list[dict]:
    """The entries of the list file: dicts with name, config, seeds, and optionally fast and overrides."""
    entries = read_yaml(resolve_path(path).read_text(), path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"name", "config", "seeds"} <= set(e)
                                                for e in entries):
        raise ConfigError(f"{path}: must be a list of {{name, config, seeds[, fast, overrides, predictors]}} entries")
    for e in entries:
        unknown = sorted(set(e.get("predictors", [])) - set(QUEE_VARIANTS))
        if unknown:
            raise ConfigError(f"{path}: {e['name']}: predictors must be QuEE variants {sorted(QUEE_VARIANTS)} "
                              f"(got {unknown})")
    return entries


def _chosen(only: str | None, seeds: list[int] | None):
    """(entry, its seeds) of the list, filtered by ``only`` and ``seeds``."""
    for e in shipped_list():
        if only is None or e["name"] == only:
            yield e, e["seeds"] if seeds is None else [s for s in e["seeds"] if s in seeds]


def build_models(only: str | None = None, seeds: list[int] | None = None, progress: bool = True,
                 overrides: list[str] = ()) -> list:
    """Train (or take from this machine's cache) and ship each listed model; returns the manifest entries."""
    out = []
    for e, chosen in _chosen(only, seeds):
        base = load_config(e["config"], [*e.get("overrides", []), *overrides, "model.retrain=true"],
                           fast=bool(e.get("fast", False)))
        for seed in chosen:
            cfg = dataclasses.replace(base, seed=seed)
            data = load_data(cfg.data, cfg.model)
            ckpt, _ = load_or_train(cfg, data, progress)
            entry = ship_model(ckpt["state_dict"], key=model_key(cfg, data), study=e["name"], seed=seed,
                               data_digest=data.digest, train=ckpt["train"])
            print(f"shipped {entry.file} (train {entry.train.get('seconds', 0):.0f} s on {entry.cpu})")
            out.append(entry)
    return out


def build_predictors(only: str | None = None, seeds: list[int] | None = None, progress: bool = True,
                     overrides: list[str] = ()) -> list:
    """Fit (or take from this machine's cache) the cross-fitted predictors of each entry's ``predictors``
    variants on the shipped model, and ship each as ``<name>-seed<seed>-<variant>.qkit`` (the study's
    predictor artifact, safe_codec-encoded, keyed by its predictor key); returns the manifest entries."""
    out = []
    for e, chosen in _chosen(only, seeds):
        if not e.get("predictors"):
            continue
        base = load_config(e["config"], [*e.get("overrides", []), *overrides], fast=bool(e.get("fast", False)))
        for seed in chosen:
            cfg = dataclasses.replace(base, seed=seed)
            prep = prepare(cfg, splits=("calib",), progress=progress)
            if prep.model_source != "shipped model":
                raise ConfigError(f"{e['name']} seed {seed}: no shipped model to fit predictors on; run `make models`")
            opts = OptionSpace(prep.tree, prep.caches["calib"].node_cost)
            for variant in e["predictors"]:
                (pcfg,) = predictor_configs(cfg.predictor, {variant: QUEE_VARIANTS[variant]}).values()
                (key,) = predictor_artifact_keys(prep, [pcfg], seed)
                (art,) = predictor_artifacts(prep, opts, [pcfg], seed, progress)
                entry = ship_bytes(encode(art), name=f"{e['name']}-seed{seed}-{variant}.qkit", key=key,
                                   study=e["name"], seed=seed, data_digest=prep.data.digest,
                                   train={"variant": variant, "kind": pcfg.kind}, folder=shipped.PREDICTORS_DIR)
                print(f"shipped {entry.file}")
                out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quee_kit.build_models", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one name of the list")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the list's)")
    ap.add_argument("--predictors-only", action="store_true", help="ship the listed predictors, keep the models")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every entry, e.g. --set cache_dir=/path")
    args = ap.parse_args(argv)
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    if not args.predictors_only:
        build_models(args.only, seeds, overrides=args.overrides)
    build_predictors(args.only, seeds, overrides=args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
