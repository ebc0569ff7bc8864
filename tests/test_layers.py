"""The package's imports point one way: no module can reach itself through imports, function-local
imports counted (a developer reads those as dependencies just the same)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "quee_kit"


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (``a.b`` names, package-relative)."""
    mods = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg[:len(pkg) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
            graph[m] |= {t for t in targets if t in mods and t != m
                         and not (f.name == "__init__.py" and t.startswith(m + "."))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_known_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "quee_kit.study" in graph["quee_kit.evaluate"]   # the graph is read at all
    assert cycles(graph) == []


def test_function_local_imports_are_counted():
    # warm imports the study inside its functions only: that must still be an edge
    assert "quee_kit.study" in import_graph()["quee_kit.warm"]


# ---------------------------------------------------------------- science imports no machinery
#
# Every module of the package in one layer (docs/architecture.md): a new module must be placed. Machinery
# is how things are cached, stored, shipped and scheduled; science computes the numbers from values it is
# handed. Above both sit the modules that compose them (stage one, running studies, warm, the pipeline,
# reproduce, the CLI) and the presentation (plots, notebooks' setup, the explorer).

LEAVES = {"quee_kit", "config_rules", "locations", "registry", "variants", "quant_levels", "dataset_files", "gemm",
          "dials", "styles", "budget_rule", "calibration", "digests", "threads"}
SCHEMA = {"config"}
MACHINERY = {"artifacts", "store", "safe_codec", "outputs", "parallel", "distributed", "shipped", "study_store"}
SCIENCE = {"vision_import", "real_data", "data", "quant", "quant_static", "quant_features", "models", "cnn",
           "timm_backbones", "backends", "costs", "train", "paths", "options", "probe", "prepared", "calibrated",
           "targets", "predictors", "methods", "policy", "baselines", "schedules", "engine", "study", "verdicts",
           "conditions", "evaluate", "analysis", "tables"}
ABOVE = {"prepare", "study_run", "warm", "dial_sweep", "hypotheses", "build_models", "pipeline", "reproduce", "cli",
         "__main__", "plots", "notebook", "explorer", "explorer.__main__", "explorer.figure", "explorer.page",
         "explorer.points", "explorer.state", "explorer.widgets"}


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others (function-local imports included)."""
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    return seen


def reaches_up(graph: dict[str, set[str]], lower: set[str], upper: set[str]) -> dict[str, set[str]]:
    """module of ``lower`` -> the modules of ``upper`` it reaches through imports (only the offenders)."""
    out = {m: reach(graph, m) & upper for m in sorted(lower)}
    return {m: up for m, up in out.items() if up}


def test_reaches_up_finds_an_indirect_import():
    g = {"sci": {"helper"}, "helper": {"cache"}, "cache": set(), "other": set()}
    assert reaches_up(g, {"sci", "other"}, {"cache"}) == {"sci": {"cache"}}
    assert reaches_up(g, {"other"}, {"cache"}) == {}


def test_every_module_is_in_one_layer():
    names = {m.removeprefix("quee_kit.") if m != "quee_kit" else m for m in import_graph()}
    layers = [LEAVES, SCHEMA, MACHINERY, SCIENCE, ABOVE]
    assert sum(len(layer) for layer in layers) == len(set().union(*layers))   # no module in two layers
    assert set().union(*layers) == names


def test_science_imports_no_machinery():
    """No science module imports a machinery module, nor anything that does (stage one, the study runner),
    function-local imports counted; machinery and the leaves import no science either."""
    q = {m: "quee_kit" if m == "quee_kit" else f"quee_kit.{m}" for m in
         LEAVES | SCHEMA | MACHINERY | SCIENCE | ABOVE}
    graph = import_graph()
    science, machinery, above = ({q[m] for m in layer} for layer in (SCIENCE, MACHINERY, ABOVE))
    assert "quee_kit.artifacts" in reach(graph, "quee_kit.study_run")   # the graph reads what it should
    assert reaches_up(graph, science, machinery | above) == {}
    below = {q[m] for m in LEAVES | SCHEMA | MACHINERY}
    assert reaches_up(graph, below, science | above) == {}


# ---------------------------------------------------------------- the config moves down the layers
#
# The rule: a call is recorded when one of its arguments (positional, keyword, *args, **kwargs, and the
# items of a tuple, list or dict among them, two levels deep) is a whole `Config`; what is recorded is the
# package module whose file holds the called code (code made at run time, such as a dataclass's generated
# `__init__`, is in no file: building a Config runs no code of config.py). Config *sections* are what the
# science takes, by design: they are not followed. Consecutive calls into one module count as one visit;
# a return is a visit to a module the trace had already left.

def _carries_config(value, config_type, depth: int = 2) -> bool:
    if isinstance(value, config_type):
        return True
    if depth and isinstance(value, (tuple, list)):
        return any(_carries_config(v, config_type, depth - 1) for v in value)
    if depth and isinstance(value, dict):
        return any(_carries_config(v, config_type, depth - 1) for v in value.values())
    return False


def config_trace(fn, *args) -> list[str]:
    """The package modules that receive a whole Config while ``fn(*args)`` runs, in call order, consecutive
    repeats collapsed (``quee_kit.x`` names)."""
    import sys

    from quee_kit.config import Config
    files = {str(f.resolve()): m for m, f in _module_files().items()}
    seen: list[str] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        mod = files.get(frame.f_code.co_filename)
        if mod is None or (seen and seen[-1] == mod):
            return
        co = frame.f_code
        n = co.co_argcount + co.co_kwonlyargcount + bool(co.co_flags & 4) + bool(co.co_flags & 8)
        if any(_carries_config(frame.f_locals.get(name), Config) for name in co.co_varnames[:n]):
            seen.append(mod)

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return seen


def returns(visits: list[str]) -> int:
    """How many visits of ``visits`` (consecutive repeats already collapsed) go back to a module left before."""
    left, n = set(), 0
    for prev, mod in zip(visits, visits[1:]):
        left.add(prev)
        n += mod in left
    return n


def _module_files() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def test_returns_counts_visits_to_a_module_already_left():
    assert returns(["a", "b", "c"]) == 0
    assert returns(["a", "b", "a", "c", "b"]) == 2
    assert returns(["a"]) == 0 and returns([]) == 0


@pytest.mark.parametrize("seeds, jobs", [("0", 1), ("0,1", 2)])
def test_cfg_moves_down(tmp_path, seeds, jobs):
    """The CLI's ``run`` on the digits (cold: models trained, caches built, predictors fitted; with two seeds
    and two jobs first as warm's task graph in worker processes, which are not traced) hands the whole config
    down the layers, with at most 4 returns to a module already left (20 returns by this rule before issue 26
    moved orchestration into pipeline.py)."""
    from quee_kit.cli import main
    argv = ["run", "--config", "configs/digits.yaml", "--quiet", "--seeds", seeds, "--out", str(tmp_path / "out")]
    for s in [f"cache_dir={tmp_path / 'cache'}", f"jobs={jobs}", "model.epochs=2", "predictor.folds=3",
              "predictor.epochs=5", "eval.lambda_grid=20", "eval.bootstrap=100", "eval.budgets=[0.04,0.08,0.2]",
              "eval.auc_range=[0.04,0.3]"]:
        argv += ["--set", s]
    visits = config_trace(main, argv)
    assert (tmp_path / "out" / "budgets.csv").is_file()                     # the run ran
    assert {"quee_kit.config", "quee_kit.pipeline", "quee_kit.prepare"} <= set(visits)   # and was traced
    assert returns(visits) <= 4, visits
