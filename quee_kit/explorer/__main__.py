"""Build (or check) the explorer's stored points: ``python -m quee_kit.explorer --config FILE [--fast] [--seed S]``.

Without ``--fast`` this is the full study: trains the model and builds its caches and predictors
when they are not cached yet (minutes on 2 cores), then stores what notebook 07 shows.
"""
import argparse
import time

from .points import explorer_artifact, load_explorer_data
from ..config import load_config


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m quee_kit.explorer", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mnist10k.yaml")
    ap.add_argument("--fast", action="store_true", help="the reduced (CI) setting instead of the full study")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = load_explorer_data(args.config, fast=args.fast, seed=args.seed, overrides=args.overrides)
    path, _ = explorer_artifact(load_config(args.config, [*args.overrides, f"seed={args.seed}"], fast=args.fast))
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): {data.setting}, {len(data.methods)} methods, "
          f"{sum(len(t.knobs) for t in data.methods.values())} knobs; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
