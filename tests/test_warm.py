"""Building a batch of studies' artifacts first, as a graph on every core: the serial files, and all of them."""
import json
import struct

import pytest

from quee_kit.artifacts import load_artifact
from quee_kit.config import load_config
from quee_kit.study_run import run_study
from quee_kit.warm import Task, release_loaded, run_graph, study_tasks, warm

from test_parallel import assert_same

SMALL = ["model.epochs=2", "predictor.folds=2", "predictor.epochs=3"]
VARIANTS = {"quee": ({}, "all"), "quee-mlp": ({"kind": "mlp"}, "all"), "quee-exit-only": ({}, "exit-only")}


def _cfg(cache, seed=0, extra=()):
    return load_config("configs/digits.yaml", [f"cache_dir={cache}", f"seed={seed}", *SMALL, *extra])


def _artifacts(cache):
    """name -> payload of every stored artifact, less what records time (stats, training seconds)."""
    out = {}
    for p in sorted(cache.glob("*.pt")):
        raw = p.read_bytes()
        key = json.loads(raw[12:12 + struct.unpack("<I", raw[8:12])[0]])["key"]
        payload = load_artifact(p, key)
        out[(p.name, key)] = {k: v for k, v in payload.items() if k not in ("stats", "train")}
    return out


def test_warm_on_two_cores_stores_the_serial_files(tmp_path):
    stores = {}
    for jobs in (1, 2):
        cache = tmp_path / f"jobs{jobs}"
        seconds = warm([(_cfg(cache, s), VARIANTS) for s in (0, 1)], jobs=jobs, progress=False)
        # per seed: a model, two caches, two predictor configs (quee and quee-exit-only share one)
        assert len(seconds) == 2 * (1 + 2 + 2)
        stores[jobs] = _artifacts(cache)
    assert sorted(stores[1]) == sorted(stores[2]) and len(stores[1]) == 2 * 5
    for name in stores[1]:
        assert_same(stores[1][name], stores[2][name], name)


def test_fit_tasks_sharing_a_loaded_calib_cache_store_the_fits_of_a_fresh_one(tmp_path):
    # a worker keeps the calib cache its last fit task loaded for the next fit of that seed: the stored fits
    # are those of fitting each on a freshly loaded cache
    stores = {}
    for reuse in (False, True):
        tasks = study_tasks(_cfg(tmp_path / str(reuse)), VARIANTS)
        run_graph([t for t in tasks if not t.name.startswith("fit")], jobs=1, progress=False)
        for t in [t for t in tasks if t.name.startswith("fit")]:
            if not reuse:
                release_loaded()
            t.fn(*t.args)
        release_loaded()
        stores[reuse] = _artifacts(tmp_path / str(reuse))
    assert sorted(stores[False]) == sorted(stores[True]) and sum(n.startswith("predictors") for n, _ in stores[True]) == 2
    for name in stores[False]:
        assert_same(stores[False][name], stores[True][name], name)


def test_a_warmed_study_builds_nothing(tmp_path):
    cfg = _cfg(tmp_path)
    warm([(cfg, VARIANTS)], jobs=2, progress=False)
    def files():   # the artifacts (not the folder of the study's lock, quee_kit.store.Store.locked)
        return {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    before = files()
    study = run_study(cfg, progress=False, variants=VARIANTS)
    # no model, cache or predictor built: the one new file is the study's own evaluation, which the next
    # run of the same study loads without writing anything
    after = files()
    (new,) = set(after) - set(before)
    assert new.startswith("study-") and {n: after[n] for n in before} == before
    assert set(VARIANTS) <= set(study.points) and not study.timings["stored"]
    assert run_study(cfg, progress=False, variants=VARIANTS).timings["stored"]
    assert files() == after


def test_studies_sharing_a_model_share_its_tasks(tmp_path):
    a = study_tasks(_cfg(tmp_path), VARIANTS)
    b = study_tasks(_cfg(tmp_path), {"quee": VARIANTS["quee"], "quee-K4": ({"kind": "mlp", "K": 4}, "all")})
    c = study_tasks(_cfg(tmp_path, extra=["quant.levels=[w16a16,w8a8]"]), VARIANTS)  # same model only
    names = lambda ts, word: {t.name for t in ts if t.name.startswith(word)}
    assert names(a, "train") == names(b, "train") == names(c, "train")
    assert names(a, "cache") == names(b, "cache") and not names(a, "cache") & names(c, "cache")
    # K changes the MLP fit only; the platt fit (quee, quee-exit-only) is one task
    assert len(names(a, "fit") & names(b, "fit")) == 1 and len(names(a, "fit")) == 2
    for t in a:
        assert all(d in {x.name for x in a} for d in t.deps)



def _record(log_path, name):
    with open(log_path, "a") as f:
        f.write(name + "\n")


def _fail(_):
    raise RuntimeError("task failed on purpose")


def test_run_graph_runs_each_task_once_after_its_dependencies(tmp_path):
    log = tmp_path / "log"
    tasks = [Task("a", _record, (log, "a"), cost=1), Task("b", _record, (log, "b"), ("a",), cost=5),
             Task("c", _record, (log, "c"), cost=2), Task("d", _record, (log, "d"), ("b", "c"), cost=1),
             Task("a", _record, (log, "a-again"), cost=1)]   # one name, one task
    assert sorted(run_graph(tasks, jobs=1, progress=False)) == ["a", "b", "c", "d"]
    # one job: the longest chain first (a -> b -> d: 7 against c -> d: 3), dependencies before
    assert log.read_text().split() == ["a", "b", "c", "d"]
    log.unlink()
    assert sorted(run_graph(tasks, jobs=2, progress=False)) == ["a", "b", "c", "d"]
    order = log.read_text().split()
    assert sorted(order) == ["a", "b", "c", "d"] and order.index("b") > order.index("a") and order[-1] == "d"
    with pytest.raises(ValueError, match="not in the graph"):
        run_graph([Task("x", _record, (log, "x"), ("nope",))], jobs=1, progress=False)
    for jobs in (1, 2):
        with pytest.raises(RuntimeError, match="on purpose"):
            run_graph([Task("x", _fail, (0,)), Task("y", _record, (log, "y"), ("x",))], jobs=jobs, progress=False)


def _die_in_a_worker(log, name):
    """Kills the worker process it runs in (a broken pool); in the main process it records ``name``."""
    import multiprocessing
    import os
    if multiprocessing.parent_process() is not None:
        os._exit(1)
    _record(log, name)


def test_a_broken_pool_runs_the_rest_here_without_losing_a_task(tmp_path):
    # the task whose worker died must be run again here, and its dependants after it (it was once dropped:
    # its dependants then never became ready)
    log = tmp_path / "log"
    tasks = [Task("a", _die_in_a_worker, (log, "a"), cost=5), Task("b", _record, (log, "b"), ("a",))]
    with pytest.warns(UserWarning, match="worker processes"):
        assert sorted(run_graph(tasks, jobs=2, progress=False)) == ["a", "b"]
    assert log.read_text().split() == ["a", "b"]
