"""The documentation stays true: the README is short and lists every notebook, links resolve, documented
commands name only subcommands, flags and make targets that exist, the README's quickstart runs, and the
notebooks carry the metadata JupyterLab would otherwise add on opening them (which marks them changed)."""
import contextlib
import io
import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from quee_kit.cli import build_parser
from quee_kit.reproduce import KERNEL

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_README_LINES = 250
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
REST = r"((?:(?!\s#\s).)*)"   # the rest of a command, up to a shell comment (which may hold another)


def _code(path: Path) -> list[str]:
    """Every code line of a markdown file: the lines of its fenced blocks and its inline code spans."""
    text = path.read_text()
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    return [line for b in blocks for line in b.splitlines()] + SPAN.findall(prose)


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a markdown text."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail to docs/ (limit {MAX_README_LINES})"


@pytest.mark.parametrize("page", [README, ROOT / "docs" / "notebooks.md"], ids=lambda p: p.name)
def test_notebook_table_lists_every_notebook(page):
    rows = re.findall(r"^\| `(\d\d_\w+)` \|", page.read_text(), re.M)
    assert len(rows) == len(set(rows)), f"{page.name}: a notebook is listed twice"
    assert set(rows) == {nb.stem for nb in NOTEBOOKS}, f"{page.name}'s notebook table and notebooks/ differ"


def test_relative_links_resolve():
    bad = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):     # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", FENCE.sub("", dest.read_text()), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "broken links:\n" + "\n".join(bad)


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    return out.getvalue()


def test_documented_cli_commands_exist():
    """Every ``quee-kit SUB ...`` / ``-m quee_kit SUB ...`` in the docs names a subcommand and flags that
    ``quee_kit.cli`` accepts (read from the parser's own help)."""
    subcommands = set(re.search(r"\{([\w,-]+)\}", _help(["--help"])).group(1).split(","))
    flags = {sub: set(re.findall(r"(?<![\w-])(-h|--[\w-]+)", _help([sub, "--help"]))) for sub in subcommands}
    assert {"cache", "run", "reproduce"} <= subcommands and "--seeds" in flags["run"]
    seen, bad = 0, []
    for page in DOCS:
        for line in _code(page):
            for m in re.finditer(r"(?:\bquee-kit|-m quee_kit)\s+(\S+)" + REST, line):
                seen += 1
                subs = m.group(1).replace("\\|", "|").split("|")
                for sub in subs:
                    if sub not in subcommands:
                        bad.append(f"{page.name}: `{line.strip()}`: no subcommand {sub!r}")
                tokens = m.group(2).replace("[", " ").replace("]", " ").split()
                for tok in tokens:
                    flag = tok.split("=")[0]
                    if flag.startswith("-") and not all(flag in flags.get(s, ()) for s in subs):
                        bad.append(f"{page.name}: `{line.strip()}`: {flag} not accepted by {'/'.join(subs)}")
    assert seen >= 10, "the docs' quee-kit commands were not found"
    assert not bad, "\n".join(bad)


@lru_cache
def _tool_flags(*argv: str) -> frozenset:
    exe = Path(sys.executable).with_name(argv[0])
    if not exe.exists():
        pytest.skip(f"{exe} not installed")
    out = subprocess.run([str(exe), *argv[1:], "--help-all"], capture_output=True, text=True, timeout=120).stdout
    return frozenset(re.findall(r"^(--[\w.-]+)", out, re.M))


@pytest.mark.parametrize("tool,pattern", [(("voila",), r"\bvoila\s+" + REST),
                                          (("jupyter", "lab"), r"\bjupyter lab\s+" + REST)], ids=["voila", "jupyter-lab"])
def test_documented_jupyter_flags_exist(tool, pattern):
    """Every flag given to ``voila`` / ``jupyter lab`` in the docs is one the installed tool lists in
    ``--help-all``; in particular Voilà has no ``--allow-root`` (it runs as root without it)."""
    accepted = _tool_flags(*tool)
    assert "--port" in accepted and "--no-browser" in accepted      # the help output was parsed
    if tool == ("voila",):
        assert "--allow-root" not in accepted and "--token" in accepted
    else:
        assert "--allow-root" in accepted
    seen, bad = 0, []
    for page in DOCS:
        for line in _code(page):
            for m in re.finditer(pattern, line):
                seen += 1
                for tok in m.group(1).split():
                    if tok.startswith("-") and tok.split("=")[0] not in accepted:
                        bad.append(f"{page.name}: `{line.strip()}`: {tok}")
    assert seen >= 2 and not bad, "\n".join(bad) or "no documented command found"


def test_documented_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = {(page.name, t) for page in DOCS for line in _code(page) for t in re.findall(r"\bmake ([\w-]+)", line)}
    assert {t for _, t in named} >= {"reproduce", "test"}
    missing = sorted(f"{page}: make {t}" for page, t in named if t not in targets)
    assert not missing, missing


def test_readme_quickstart_runs(tmp_path):
    """The README's quickstart, run as a script (its own model, caches and predictors in an empty cache),
    prints test accuracies of the three methods at three budgets, each far above chance (10 classes)."""
    blocks = re.findall(r"^```python\n(.*?)^```", _section(README.read_text(), "Quickstart (Python)"), re.S | re.M)
    assert len(blocks) == 1
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 10
    call = 'load_config("configs/digits.yaml")'
    assert code.count(call) == 1
    script = tmp_path / "quickstart.py"
    script.write_text(code.replace(call, f'load_config("configs/digits.yaml", ["cache_dir={tmp_path / "cache"}"])'))
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("method")):]    # the printed table
    assert lines[0].split() == ["method", "best-single", "oracle", "quee"], res.stdout
    rows = {float(r.split()[0]): [float(x) for x in r.split()[1:]] for r in lines[2:]}
    assert sorted(rows) == [0.05, 0.1, 0.2], res.stdout
    for accs in rows.values():
        assert len(accs) == 3 and all(0.5 < a <= 1.0 for a in accs), res.stdout
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())   # it used the cache it was given


def test_notebooks_store_the_metadata_jupyterlab_writes():
    """JupyterLab sets ``kernelspec`` from the kernel it starts and ``language_info`` from the kernel's
    info reply, and marks the notebook changed when either differs from what is stored. So every notebook
    stores the kernel ``make venv`` registers and the full ``language_info`` an ipykernel reports."""
    display = re.search(r'--name (\S+) --display-name "([^"]+)"', (ROOT / "Makefile").read_text())
    assert display and display.group(1) == KERNEL
    want_spec = {"name": KERNEL, "display_name": display.group(2), "language": "python"}
    want_keys = {"codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter", "pygments_lexer",
                 "version"}
    infos = {}
    for nb in NOTEBOOKS:
        meta = json.loads(nb.read_text())["metadata"]
        assert meta["kernelspec"] == want_spec, nb.name
        info = meta["language_info"]
        assert set(info) == want_keys, f"{nb.name}: language_info has {sorted(info)}"
        assert info["name"] == "python" and info["pygments_lexer"] == "ipython3" and info["file_extension"] == ".py"
        infos[nb.name] = json.dumps(info, sort_keys=True)
    assert len(set(infos.values())) == 1, infos                     # one Python version for all of them
