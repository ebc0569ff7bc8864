"""Packaging promises: environment.yml mirrors pyproject.toml, torch stays pinned, the README's two
commands are the ones the Makefile and .ci/run provide."""
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
