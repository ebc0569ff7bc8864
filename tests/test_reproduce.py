"""Batch reproduction with papermill: outputs written, failures named, params validated, notebooks well-formed."""
import dataclasses
import json

import nbformat
import papermill as pm
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from quee_kit.cli import main
from quee_kit.config import ConfigError, load_config
from quee_kit.reproduce import KERNEL, NOTEBOOKS_DIR, TUTORIALS, notebook_paths, reproduce, run_order

CONFIG = "configs/mnist10k.yaml"


def _write_notebook(path, *sources):
    cells = [new_code_cell('fast = True\nout_dir = "out"', metadata={"tags": ["parameters"]})]
    book = new_notebook(cells=cells + [new_code_cell(s) for s in sources])
    book.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nbformat.write(book, path)


def test_notebook_04_writes_figures_and_tables(tmp_path):
    # the full run's params file names other notebooks: running one notebook must still accept it
    assert reproduce(CONFIG, tmp_path, fast=True, only=["04_path_cache_and_costs"], progress=False,
                     params_file="configs/reproduce_params.yaml") == 0
    for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
        data = (tmp_path / "figures" / f"04_path_cost_hist.{ext}").read_bytes()
        assert len(data) > 1000 and data.startswith(magic)
    sizes = (tmp_path / "tables" / "04_tree_sizes.csv").read_text()
    assert "monotone,461," in sizes and "free,19530," in sizes and "uniform,30," in sizes
    assert (tmp_path / "notebooks" / "04_path_cache_and_costs.ipynb").is_file()
    summary = json.loads((tmp_path / "reproduce.json").read_text())
    assert summary["status"] == "ok" and list(summary["seconds"]) == ["04_path_cache_and_costs"]


def test_every_other_notebook_runs_on_fast_parameters(tmp_path):
    # The tutorials are executed by nbval; every other notebook is executed here, and must save figures.
    others = [p.stem for p in notebook_paths() if p.stem not in TUTORIALS and p.stem != "04_path_cache_and_costs"]
    assert reproduce(CONFIG, tmp_path, fast=True, only=others, progress=False) == 0
    summary = json.loads((tmp_path / "reproduce.json").read_text())
    assert summary["status"] == "ok" and sorted(summary["seconds"]) == sorted(others)
    # the plan built every model, cache and predictor first: the notebooks (two at a time) only loaded them
    assert summary["built_by_notebooks"] == []
    pngs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    for stem in others:
        assert any(n.startswith(stem[:2]) or stem.startswith("07") for n in pngs), stem
    assert "budget_explorer.png" in pngs and "06_accuracy_cost.png" in pngs


def test_failing_notebook_is_named_with_its_cell(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _write_notebook(nbs / "01_fine.ipynb", "x = 1")
    _write_notebook(nbs / "02_boom.ipynb", "x = 1", "raise ValueError('boom')")
    _write_notebook(nbs / "03_never.ipynb", "x = 1")
    # one notebook at a time: with two, 03 may start before 02 fails (then it runs to its end)
    assert reproduce(CONFIG, tmp_path / "out", fast=True, progress=False, notebooks_dir=nbs, overrides=["jobs=1"]) == 1
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("reproduce:")]
    # cells: parameters (0), papermill's injected parameters (1), x = 1 (2), raise (3)
    assert len(lines) == 1 and "02_boom.ipynb" in lines[0] and "cell 3" in lines[0] and "ValueError: boom" in lines[0]
    summary = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert summary["status"] == "failed: 02_boom" and "03_never" not in summary["seconds"]


def test_params_file_errors_are_one_line(tmp_path, capsys):
    bad_stem = tmp_path / "stem.yaml"
    bad_stem.write_text("99_nope: {bins: 10}\n")
    with pytest.raises(ConfigError, match="unknown notebook '99_nope'") as e:
        reproduce(CONFIG, tmp_path / "out", fast=True, params_file=bad_stem, progress=False)
    assert "\n" not in str(e.value)
    bad_param = tmp_path / "param.yaml"
    bad_param.write_text("04_path_cache_and_costs: {binz: 10}\n")
    with pytest.raises(ConfigError, match="no parameter 'binz'"):
        reproduce(CONFIG, tmp_path / "out", fast=True, params_file=bad_param, progress=False)
    assert main(["reproduce", "--fast", "--params", str(bad_stem), "--out", str(tmp_path / "cli")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_is_parameterized(path):
    raw = json.loads(path.read_text())
    ids = [c.get("id") for c in raw["cells"]]       # nbformat 4.5: every cell has a unique id (soon a hard error)
    assert None not in ids and len(set(ids)) == len(ids)
    book = nbformat.read(path, as_version=4)
    assert book.metadata.kernelspec.name == KERNEL
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = pm.inspect_notebook(str(path))
    # the explorer's None opens the full study only when its points are stored (it never builds it by default)
    assert params["fast"]["default"] == ("None" if path.stem == "07_budget_explorer" else "True")
    assert {"config", "out_dir", "overrides", "seed"} <= set(params)


def test_tutorials_exist():
    assert set(TUTORIALS) <= {p.stem for p in notebook_paths(NOTEBOOKS_DIR)}


def test_notebooks_side_by_side_write_the_serial_tables(tmp_path):
    # two notebooks at a time, each kernel on one thread, against one at a time on the default threads
    stems = ["04_path_cache_and_costs", "08_conditions_for_success"]
    for jobs in (1, 2):
        assert reproduce(CONFIG, tmp_path / str(jobs), fast=True, only=stems, progress=False,
                         overrides=[f"jobs={jobs}"]) == 0
        assert json.loads((tmp_path / str(jobs) / "reproduce.json").read_text())["jobs"] == jobs
    tables = sorted(p.name for p in (tmp_path / "1" / "tables").glob("*.csv"))
    assert len(tables) >= 6 and any(t.startswith("08_noise_sweep") for t in tables)
    for name in tables:
        assert (tmp_path / "1" / "tables" / name).read_bytes() == (tmp_path / "2" / "tables" / name).read_bytes(), name


def test_the_notebooks_with_the_most_studies_to_evaluate_start_first():
    c0, c1 = (load_config(CONFIG, [f"seed={s}"]) for s in (0, 1))
    k8 = {"quee-K8": ({"kind": "mlp", "K": 8}, "all")}
    planned = {"01": [(c0, {})], "05": [(c0, k8)], "06": [(c0, None), (c1, None)], "07": [(c0, None)],
               "08": [(dataclasses.replace(c0, jobs=1), None)], "09": []}
    # 06: two studies x 6 variants; 07, 08: one x 6 (numbered order); 05: one variant; 01 and 09: none
    assert run_order(planned) == ["06", "07", "08", "05", "01", "09"]
