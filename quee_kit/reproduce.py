"""Batch reproduction: execute every numbered notebook with papermill.

``reproduce(config, OUT)`` runs ``notebooks/[0-9][0-9]_*.ipynb`` in order (kernel ``python3``,
working directory = the notebooks folder) with the parameters ``config``, ``fast``, ``out_dir``
and ``overrides``, plus per-notebook ones from a YAML file ``{notebook stem: {param: value}}``.
Executed notebooks go to ``OUT/notebooks``, figures to ``OUT/figures``, tables to ``OUT/tables``,
timings to ``OUT/reproduce.json``.

``python -m quee_kit.reproduce --store-tutorials`` re-executes the nbval-checked tutorials in
place with their default (fast) parameters and keeps their outputs, without papermill's
timing metadata so that diffs stay small.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .artifacts import atomic_write_json
from .config import PROJECT_ROOT, ConfigError, read_yaml, resolve_path

__all__ = ["reproduce", "store_tutorials", "notebook_paths", "NOTEBOOKS_DIR", "TUTORIALS", "KERNEL"]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
TUTORIALS = ["01_quickstart", "02_backbone_and_exits", "03_quantization_sensitivity"]  # nbval-checked
KERNEL = "python3"


def notebook_paths(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    return sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def _notebook_params(params_file, notebooks: list[Path]) -> dict[str, dict]:
    """Read ``{stem: {param: value}}``; an unknown stem or parameter is a one-line ConfigError."""
    import papermill as pm
    if params_file is None:
        return {}
    raw = read_yaml(Path(params_file).read_text(), str(params_file)) or {}
    by_stem = {nb.stem: nb for nb in notebooks}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: {params_file} must map notebook stems to {{param: value}}")
    for stem, params in raw.items():
        if stem not in by_stem:
            raise ConfigError(f"params: unknown notebook {stem!r} in {params_file} (known: {', '.join(by_stem)})")
        if not isinstance(params, dict):
            raise ConfigError(f"params: {stem} must be a mapping {{param: value}} (got {params!r})")
        known = pm.inspect_notebook(str(by_stem[stem]))
        for p in params:
            if p not in known:
                raise ConfigError(f"params: {stem} has no parameter {p!r} (known: {', '.join(known)})")
    return raw


def reproduce(config: str | Path, out_dir: str | Path, fast: bool = False, overrides: list[str] | None = None,
              params_file: str | Path | None = None, progress: bool = True, only: list[str] | None = None,
              notebooks_dir: str | Path = NOTEBOOKS_DIR) -> int:
    """Execute the notebooks (all, or the stems in ``only``); returns 0, or 1 after a failing cell."""
    import papermill as pm
    out = Path(out_dir).resolve()
    notebooks = [nb for nb in notebook_paths(notebooks_dir) if only is None or nb.stem in only]
    per_notebook = _notebook_params(params_file, notebook_paths(notebooks_dir))  # every stem is known
    common = {"config": str(resolve_path(config).resolve()), "fast": bool(fast), "out_dir": str(out),
              "overrides": list(overrides or [])}
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    seconds, status = {}, "ok"
    for nb in tqdm(notebooks, desc="notebooks", disable=not progress):
        t0, target = time.perf_counter(), out / "notebooks" / nb.name
        try:
            pm.execute_notebook(str(nb), str(target), parameters={**common, **per_notebook.get(nb.stem, {})},
                                kernel_name=KERNEL, cwd=str(nb.parent), progress_bar=False)
        except pm.PapermillExecutionError as e:
            evalue = (str(e.evalue).strip().splitlines() or [""])[0]
            print(f"reproduce: {nb.name} failed in cell {e.cell_index} ({e.ename}: {evalue}); "
                  f"executed notebook: {target}", file=sys.stderr)
            status = f"failed: {nb.stem}"
            break
        finally:
            seconds[nb.stem] = round(time.perf_counter() - t0, 2)
    summary = {"status": status, **common, "seconds": seconds, "total_seconds": round(sum(seconds.values()), 2)}
    atomic_write_json(out / "reproduce.json", summary)
    return 0 if status == "ok" else 1


def _strip_run_metadata(path: Path) -> None:
    """Drop papermill's notebook/cell metadata and per-cell timings (they change on every run)."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
        if not cell.metadata.get("tags", True):  # papermill adds empty tag lists
            del cell.metadata["tags"]
    nbformat.write(nb, path)


def store_tutorials(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> None:
    """Re-execute :data:`TUTORIALS` in place with their defaults and keep the outputs (for nbval)."""
    import papermill as pm
    for stem in tqdm(TUTORIALS, desc="tutorials"):
        path = Path(notebooks_dir) / f"{stem}.ipynb"
        pm.execute_notebook(str(path), str(path), kernel_name=KERNEL, cwd=str(path.parent), progress_bar=False)
        _strip_run_metadata(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quee_kit.reproduce",
                                 description="Store tutorial outputs (use `quee-kit reproduce` for a batch run).")
    ap.add_argument("--store-tutorials", action="store_true", required=True,
                    help=f"re-execute {', '.join(TUTORIALS)} in place and keep their outputs")
    ap.parse_args(argv)
    store_tutorials()
    return 0


if __name__ == "__main__":
    sys.exit(main())
