"""The nbval-checked tutorials give the same checked outputs on every x86-64 CPU.

The tutorials study the fast model the kit ships (quee_kit/embedded/models): fixed weights, so their
accuracies no longer depend on where the model was trained (training turns last-bit differences between
CPU kernels into different weights). What can still differ is the forward pass: ATen picks its
vectorized kernels by CPU capability (``ATEN_CPU_CAPABILITY=default|avx2|avx512`` forces one), MKL its
GEMM path, oneDNN its ISA. Measured on the default model with ``ATEN_CPU_CAPABILITY=default``: logits
move by ~5e-6 at the reference level and by more at mixed-level nodes (a last-bit change can move a value
across a rounding boundary), yet no test sample changes correctness at any exit of any uniform level (2 x
2,000 digits x 30 exits). So nbval compares the exit accuracy tables again, and this file runs the
tutorials under two kernel paths to show those outputs are the same.
"""
import configparser
import os
import re
import subprocess
import sys

import nbformat
import papermill as pm
import pytest

from quee_kit.config import load_config
from quee_kit.locations import PROJECT_ROOT
from quee_kit.reproduce import KERNEL, NOTEBOOKS_DIR, TUTORIALS

CHECK = "# NBVAL_CHECK_OUTPUT"
# Two kernel paths and two thread counts; each run builds its own path caches from the shipped model.
KERNEL_PATHS = {
    "native-isa-2-threads": {"OMP_NUM_THREADS": "2"},
    # another CPU's kernels: ATen's plain code, MKL's compatible path, oneDNN's AVX2 kernels (the blocks' products)
    "default-isa-1-thread": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2",
                             "OMP_NUM_THREADS": "1"},
}


def _sanitizers():
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(PROJECT_ROOT / "tests" / "nbval_sanitize.cfg")
    return [(re.compile(cp[s]["regex"]), cp[s]["replace"]) for s in cp.sections()]


def checked_outputs(path) -> list[str]:
    """Sanitized text outputs of the cells nbval compares, in order."""
    subs = _sanitizers()
    out = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or CHECK not in cell.source:
            continue
        text = "".join(o.get("text", "") if o.output_type == "stream" else str(o.get("data", {}).get("text/plain", ""))
                       for o in cell.outputs)
        for rx, rep in subs:
            text = rx.sub(rep, text)
        out.append(text)
    return out


def test_forcing_the_kernel_path_takes_effect():
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "DEFAULT"


@pytest.mark.parametrize("name", list(KERNEL_PATHS))
def test_checked_outputs_identical_across_kernel_paths(name, tmp_path, monkeypatch):
    # The kernel inherits this process's environment; a cache of its own makes it compute its own path caches.
    for k, v in KERNEL_PATHS[name].items():
        monkeypatch.setenv(k, v)
    params = {"overrides": [f"cache_dir={tmp_path / 'cache'}"], "out_dir": str(tmp_path / "out")}
    for stem in TUTORIALS:
        stored = NOTEBOOKS_DIR / f"{stem}.ipynb"
        run = tmp_path / f"{stem}.ipynb"
        pm.execute_notebook(str(stored), str(run), parameters=params, kernel_name=KERNEL, cwd=str(NOTEBOOKS_DIR),
                            progress_bar=False)
        expected = checked_outputs(stored)
        assert expected and checked_outputs(run) == expected, stem


def test_the_tutorials_study_the_shipped_fast_model_and_what_they_teach_holds():
    from quee_kit.prepare import exits_table, prepare
    prep = prepare(load_config("configs/mnist10k.yaml", fast=True), splits=("test",), progress=False)
    assert prep.model_source == "shipped model"   # else nbval would compare a model trained here
    acc = exits_table(prep).pivot_table(index=["level", "exit"], columns="split", values="accuracy")
    ref, L = prep.ref.name, prep.tree.L
    # what the tutorials teach: exits climb with depth, and w8a8 costs a quarter of the reference for free
    assert acc.loc[(ref, L), "test"] - acc.loc[(ref, 1), "test"] >= 0.05
    for t in range(1, L + 1):
        assert abs(acc.loc[("w8a8", t), "test"] - acc.loc[(ref, t), "test"]) <= 0.01, t
