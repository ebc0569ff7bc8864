"""Packaging promises: environment.yml mirrors pyproject.toml, torch stays pinned, the README's two
commands are the ones the Makefile and .ci/run provide."""
import os
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_mirrors_pyproject():
    proj = _pyproject()["project"]
    wanted = set(proj["dependencies"]) | set(proj["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(p for p in pip if not p.startswith("-e")) == wanted
    assert any(d == "python=3.11" for d in env["dependencies"] if isinstance(d, str))


def test_torch_is_pinned_everywhere():
    assert "torch==2.13.0" in _pyproject()["project"]["dependencies"]
    assert "pip install -q torch==2.13.0" in (ROOT / "Makefile").read_text()


def test_readme_commands_exist_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    make = (ROOT / "Makefile").read_text()
    for cmd in ("make reproduce", "make test"):
        assert cmd in readme and f"\n{cmd.split()[1]}: venv" in make
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_modules_are_small_and_import_no_private_names():
    """The house rules a line-based tool can check: no module over 400 lines, and no ``_name`` imported
    from another module (what another module uses gets a public name)."""
    import ast
    for f in sorted((ROOT / "quee_kit").rglob("*.py")):
        text = f.read_text()
        assert len(text.splitlines()) <= 400, f"{f.relative_to(ROOT)}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{f.relative_to(ROOT)}: imports {private} from {node.module}"


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """A wheel install is a user's install: build the wheel from a copy of the sources, install it (no
    editable link) into a fresh venv, and from a folder outside the checkout import the explorer, load the
    embedded digits and run ``quee-kit cache``; the cache lands in the working directory."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    src = tmp_path / "src"
    shutil.copytree(ROOT / "quee_kit", src / "quee_kit", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("quee_kit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], check=True, env=env)
    # The dependencies (torch & co.) come from this venv's site-packages as a plain path entry: its .pth
    # files (the checkout's editable link among them) are not processed, so quee_kit can only be the wheel's.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    code = ("import quee_kit, quee_kit.explorer; from quee_kit.data import load_dataset; "
            "ds = load_dataset('mnist10k'); print(quee_kit.__file__); print(ds.digest)")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=work, env=env)
    where, digest = out.stdout.split()
    assert Path(where).is_relative_to(venv)
    from quee_kit.data import load_dataset
    assert digest == load_dataset("mnist10k").digest   # the same 10,000 digits as the checkout's
    shutil.copy(ROOT / "configs" / "digits.yaml", work / "digits.yaml")
    r = subprocess.run([str(venv / "bin" / "quee-kit"), "cache", "--config", "digits.yaml", "--set", "model.epochs=2",
                        "--out", "out", "--quiet"], capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    exits = pd.read_csv(work / "out" / "exits.csv")
    assert exits.accuracy.between(0, 1).all() and len(exits) > 0
    assert any((work / ".quee_cache").iterdir())           # the cache is the working directory's
    assert not (Path(site) / ".quee_cache").exists() and not (Path(site).parent / ".quee_cache").exists()


def test_built_in_defaults_are_the_default_config():
    """``quee-kit run`` without --config (an installed kit has no configs/) runs configs/mnist10k.yaml."""
    import dataclasses
    from quee_kit.config import load_config
    assert dataclasses.asdict(load_config(None)) == dataclasses.asdict(load_config(ROOT / "configs" / "mnist10k.yaml"))
