"""``make models``: train every model listed in ``data/shipped_models.yaml`` on this machine and ship it
(:func:`quee_kit.shipped.ship_model`). Resumable: a model already trained here is reused from the cache.

    python -m quee_kit.build_models [--only NAME] [--seeds 0,1]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import ConfigError, load_config, read_yaml
from .locations import resolve_path
from .prepare import load_data, load_or_train, model_key
from .shipped import ship_model

__all__ = ["shipped_list", "build_models", "main"]

LIST = "data/shipped_models.yaml"


def shipped_list(path: str = LIST) -> list[dict]:
    """The entries of the list file: dicts with name, config, seeds, and optionally fast and overrides."""
    entries = read_yaml(resolve_path(path).read_text(), path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"name", "config", "seeds"} <= set(e)
                                                for e in entries):
        raise ConfigError(f"{path}: must be a list of {{name, config, seeds[, fast, overrides]}} entries")
    return entries


def build_models(only: str | None = None, seeds: list[int] | None = None, progress: bool = True) -> list:
    """Train (or take from this machine's cache) and ship each listed model; returns the manifest entries."""
    out = []
    for e in shipped_list():
        if only is not None and e["name"] != only:
            continue
        base = load_config(e["config"], [*e.get("overrides", []), "model.retrain=true"], fast=bool(e.get("fast", False)))
        for seed in e["seeds"] if seeds is None else [s for s in e["seeds"] if s in seeds]:
            cfg = dataclasses.replace(base, seed=seed)
            data = load_data(cfg)
            ckpt, _ = load_or_train(cfg, data, progress)
            entry = ship_model(ckpt["state_dict"], key=model_key(cfg, data), study=e["name"], seed=seed,
                               data_digest=data.digest, train=ckpt["train"])
            print(f"shipped {entry.file} (train {entry.train.get('seconds', 0):.0f} s on {entry.cpu})")
            out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quee_kit.build_models", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one name of the list")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the list's)")
    args = ap.parse_args(argv)
    build_models(args.only, None if args.seeds is None else [int(s) for s in args.seeds.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
