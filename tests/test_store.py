"""One store, one key recipe: artifact keys from what an artifact is built from and the code versions its
modules declare (not the source bytes of a hand-kept list of files)."""
import importlib

import pytest

from quee_kit.artifacts import content_hash
from quee_kit.registry import METHODS, PREDICTOR_KINDS
from quee_kit.store import Store, artifact_key, code_versions


def _package(root, files: dict):
    pkg = root / "pkg"
    pkg.mkdir(exist_ok=True)
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).write_text(text)
    code_versions.cache_clear()
    return pkg


def test_code_versions_follow_imports_and_ignore_what_is_not_a_version(tmp_path):
    files = {"a.py": '"""A."""\nfrom . import b\n\ndef f():\n    from .c import g\n',
             "b.py": "CODE_VERSION = 2\n", "c.py": "import pkg.d\nCODE_VERSION = 1\ndef g(): pass\n",
             "d.py": "X = 1\n", "e.py": "CODE_VERSION = 7\n"}   # e: imported by nobody
    pkg = _package(tmp_path, files)
    assert code_versions("pkg.a", pkg) == (("pkg.b", 2), ("pkg.c", 1))    # c only inside a function
    _package(tmp_path, {**files, "a.py": '"""A, said better."""\nfrom . import b\n\ndef f():\n    from .c import g\n'})
    assert code_versions("pkg.a", pkg) == (("pkg.b", 2), ("pkg.c", 1))    # a docstring edit: the same versions
    _package(tmp_path, {**files, "b.py": "CODE_VERSION = 3\n"})
    assert code_versions("pkg.a", pkg) == (("pkg.b", 3), ("pkg.c", 1))    # a bump: another version


def test_the_key_recipe_keeps_the_shipped_keys_and_adds_code_versions_where_asked():
    parts = ("model", {"dim": 64}, "digest", 0)
    assert artifact_key(*parts) == content_hash(*parts)        # the recipe shipped models were keyed with
    code_versions.cache_clear()
    study = artifact_key("study", 1, code="quee_kit.study")
    assert study == content_hash("study", 1, dict(code_versions("quee_kit.study"))) != content_hash("study", 1)


def test_every_module_that_registers_a_method_or_predictor_kind_keys_the_study():
    importlib.import_module("quee_kit.study")   # registers every baseline and kind
    declared = dict(code_versions("quee_kit.study"))
    owners = {c.__module__ for c in [*METHODS.values(), *PREDICTOR_KINDS.values()] if c.__module__.startswith("quee_kit.")}
    assert owners and owners <= set(declared)
    assert {"quee_kit.policy", "quee_kit.study", "quee_kit.paths"} <= set(declared)


@pytest.mark.parametrize("kind", ["model", "cache-calib", "study"])
def test_a_store_names_a_file_by_kind_and_key(tmp_path, kind):
    assert Store(tmp_path).file(kind, "ab" * 32) == tmp_path / f"{kind}-{'ab' * 8}.pt"
    assert Store.at("rel").root.is_absolute()


def test_a_lock_is_held_by_one_process_at_a_time(tmp_path):
    """A second process asking for a held lock gets it only once the first lets it go: it then finds what
    the first wrote before letting go (a broken lock would let it in at once, before that file exists)."""
    import subprocess
    import sys
    import time
    store = Store(tmp_path)
    child = ("import pathlib, sys; from quee_kit.store import Store; s = Store(pathlib.Path(sys.argv[1])); "
             "(s.root / 'trying').write_text(''); "
             "ctx = s.locked('study', 'ab' * 32); ctx.__enter__(); "
             "print((s.root / 'released').exists()); ctx.__exit__(None, None, None)")
    with store.locked("study", "ab" * 32):
        proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        while not (tmp_path / "trying").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        (tmp_path / "released").write_text("")
    assert proc.communicate(timeout=60)[0].strip() == "True"


def test_a_study_is_evaluated_under_its_lock(digits_prep, monkeypatch):
    from quee_kit.study_run import run_study
    from conftest import STUDY_OVERRIDES
    from quee_kit.config import load_config
    taken = []
    real = Store.locked

    def spy(self, kind, key):
        taken.append((kind, self.root))
        return real(self, kind, key)
    monkeypatch.setattr(Store, "locked", spy)
    cfg = load_config("configs/digits.yaml", [f"cache_dir={digits_prep.cfg.cache_dir}", *STUDY_OVERRIDES])
    run_study(cfg, progress=False, variants={"quee": ({}, "all")}, prep=digits_prep)
    assert taken == [("study", digits_prep.store.root)]
    run_study(cfg, progress=False, variants={"quee": ({}, "all")}, prep=digits_prep, store=False)
    assert len(taken) == 1            # nothing stored, nothing to wait for
