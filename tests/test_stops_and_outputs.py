"""Runs that stop cleanly (no worker left behind, one line, 130/143) and outputs that appear whole."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quee_kit.outputs import staged_output

ROOT = Path(__file__).resolve().parent.parent


def _env(extra: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(extra), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc): the pool's workers and the resource tracker."""
    found, frontier = set(), {pid}
    while frontier:
        new = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in frontier and int(stat.parent.name) not in found:
                new.add(int(stat.parent.name))
        found |= new
        frontier = new
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_workers_with_one_line(tmp_path, sig):
    (tmp_path / "slow.py").write_text(textwrap.dedent("""
        import os, time
        from pathlib import Path

        def nap(folder, item):
            Path(folder, str(os.getpid())).write_text("")
            time.sleep(300)
        """))
    (tmp_path / "main.py").write_text(textwrap.dedent("""
        import sys
        import slow
        from quee_kit import cli
        from quee_kit.parallel import run_jobs
        if __name__ == "__main__":
            cli.cmd_run = lambda args: len(run_jobs(slow.nap, range(4), jobs=2, shared=sys.argv[1])) * 0
            sys.exit(cli.main(["run", "--config", "configs/digits.yaml", "--out", sys.argv[2]]))
        """))
    started = tmp_path / "started"
    started.mkdir()
    p = subprocess.Popen([sys.executable, str(tmp_path / "main.py"), str(started), str(tmp_path / "out")],
                         cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        for _ in range(600):   # both workers inside a piece of work
            if len(list(started.iterdir())) == 2 or p.poll() is not None:
                break
            time.sleep(0.2)
        workers = {int(f.name) for f in started.iterdir()}
        assert len(workers) == 2, p.communicate(timeout=5)
        children = _children(p.pid)
        assert workers < children            # and the resource tracker
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)            # Ctrl-C in a terminal reaches the whole process group
        else:
            p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 128 + sig
    assert err.strip() == (f"quee-kit: stopped by {signal.Signals(sig).name}; the artifacts finished so far "
                           "are kept and the next run resumes from them")
    for _ in range(50):                      # no orphan after 5 s
        if not any(_alive(c) for c in children):
            break
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)]
    assert not (tmp_path / "out").exists()


def _files(folder: Path) -> dict:
    return {f.name: f.read_text() for f in folder.iterdir()}


def test_outputs_appear_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):        # a failed first run leaves no folder
        with staged_output(out) as stage:
            (stage / "curves.csv").write_text("new")
            raise RuntimeError("failed")
    assert not out.exists() and not list(tmp_path.iterdir())
    with staged_output(out) as stage:
        for name in ("curves.csv", "budgets.csv"):
            (stage / name).write_text("old")
    (out / "notes.txt").write_text("mine")   # not written by a run: kept
    with pytest.raises(KeyboardInterrupt):   # interrupted between two files: the old set stays
        with staged_output(out) as stage:
            (stage / "curves.csv").write_text("new")
            raise KeyboardInterrupt
    assert _files(out) == {"curves.csv": "old", "budgets.csv": "old", "notes.txt": "mine"}
    with staged_output(out) as stage:
        for name in ("curves.csv", "budgets.csv"):
            (stage / name).write_text("new")
    assert _files(out) == {"curves.csv": "new", "budgets.csv": "new", "notes.txt": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no stage left


def test_a_run_killed_between_files_leaves_the_old_set(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("curves.csv", "budgets.csv"):
        (out / name).write_text("old")
    code = textwrap.dedent(f"""
        import sys, time
        from quee_kit.outputs import staged_output
        with staged_output({str(out)!r}) as stage:
            (stage / "curves.csv").write_text("new")
            print("between", flush=True)
            time.sleep(300)
            (stage / "budgets.csv").write_text("new")
        """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "between"
        assert _files(out) == {"curves.csv": "old", "budgets.csv": "old"}
    finally:
        p.kill()
        p.wait(timeout=30)
    assert _files(out) == {"curves.csv": "old", "budgets.csv": "old"}


@pytest.mark.parametrize("where", ["--out", "cache_dir"])
def test_an_unwritable_place_fails_before_compute(tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("")       # a folder cannot be made under a file (root ignores read-only modes)
    out, cache = tmp_path / "out", tmp_path / "cache"
    if where == "--out":
        out = blocker / "out"
    else:
        cache = blocker / "cache"
    r = subprocess.run([sys.executable, "-m", "quee_kit", "run", "--config", "configs/digits.yaml", "--quiet",
                        "--set", f"cache_dir={cache}", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"quee-kit: {where}: {blocker if where == '--out' else cache} is not a writable folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]   # nothing computed, nothing made
