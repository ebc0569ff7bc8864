"""A real browser: Voilà serves notebook 07, headless Chromium moves the budget slider, and the page
shows the accuracy and cost that the library computes for the new budget.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package;
the test is skipped without them. It never downloads a browser (no ``playwright install``). A
cold cache first builds the fast study here (about a minute on 2 cores); Voilà then loads it.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/07_budget_explorer.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENABLE = "install Debian's chromium (apt-get install chromium) to run the browser test"
PAGE_TIMEOUT_S = 300      # Voilà runs the notebook before the widgets appear
SERVER_TIMEOUT_S = 60


def _skip_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found: {ENABLE}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"python package playwright missing (pip install playwright): {ENABLE}"
    try:
        import voila  # noqa: F401
    except ImportError:
        return "voila is not installed (pip install voila)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:   # any HTTP answer means the server is up (GET / would already start a kernel)
            with urllib.request.urlopen(url + "voila/static/", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"voila did not answer on {url} within {SERVER_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its kernel (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


def _readout(page) -> dict:
    return page.evaluate("""() => {
        const r = document.querySelector('.quee-readout');
        const a = r.querySelector('.quee-accuracy'), c = r.querySelector('.quee-cost');
        return {budget: r.dataset.budget, method: r.dataset.method, mode: r.dataset.mode,
                accuracy_text: a.textContent, cost_text: c.textContent,
                accuracy: a.dataset.value, cost: c.dataset.value};
    }""")


def _assert_library_numbers(study, shown: dict, method: str = "quee"):
    budget = float(shown["budget"])
    _, _, out = study.at_budget(method, budget)
    assert shown["accuracy_text"] == f"accuracy: {out.accuracy:.4f}"
    assert shown["cost_text"] == f"cost: {out.mean_cost:.4f}"
    assert float(shown["accuracy"]) == out.accuracy and float(shown["cost"]) == out.mean_cost
    return out


def test_voila_budget_slider(tmp_path):
    from playwright.sync_api import sync_playwright

    from quee_kit.config import load_config
    from quee_kit.evaluate import run_study

    # The notebook's defaults: fast study, seed 0. Built here first, so Voilà only loads the cache.
    t0 = time.monotonic()
    study = run_study(load_config("configs/mnist10k.yaml", ["seed=0"], fast=True), progress=False)
    t_study = time.monotonic() - t0

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "voila.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "voila", NOTEBOOK, f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1",
           "--Voila.port_retries=0", "--show_tracebacks=True"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    shot = tmp_path / "budget_explorer.png"
    try:
        _wait_for_server(url, proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t1 = time.monotonic()
                page.goto(url, wait_until="commit", timeout=PAGE_TIMEOUT_S * 1000)
                page.wait_for_selector(".quee-readout .quee-accuracy", timeout=PAGE_TIMEOUT_S * 1000)
                page.wait_for_selector(".quee-figure", timeout=60_000)
                t_page = time.monotonic() - t1
                before = _readout(page)
                assert before["method"] == "quee" and before["mode"] == "budget"
                assert float(before["budget"]) == pytest.approx(0.05, rel=1e-6)
                _assert_library_numbers(study, before)

                # move the budget slider with the keyboard: focus its handle, jump to the end
                handle = page.locator(".quee-budget-slider .noUi-handle").first
                handle.focus()
                handle.press("End")
                try:
                    page.wait_for_function(
                        "b => document.querySelector('.quee-readout').dataset.budget !== b",
                        arg=before["budget"], timeout=20_000)
                except Exception:   # older noUiSlider without Home/End: step up instead
                    for _ in range(10):
                        handle.press("PageUp")
                    page.wait_for_function(
                        "b => document.querySelector('.quee-readout').dataset.budget !== b",
                        arg=before["budget"], timeout=20_000)
                # settle: every key press is one update; wait until the readout stops changing
                last, stable_since = _readout(page), time.monotonic()
                while time.monotonic() - stable_since < 1.0:
                    time.sleep(0.2)
                    now = _readout(page)
                    if now != last:
                        last, stable_since = now, time.monotonic()
                after = last
                assert float(after["budget"]) > float(before["budget"])
                out = _assert_library_numbers(study, after)
                assert (after["accuracy"], after["cost"]) != (before["accuracy"], before["cost"])
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        _stop(proc)
    assert proc.poll() is not None
    assert shot.stat().st_size > 10_000
    keep = ROOT / "results" / "browser"   # git-ignored; handy to look at after a CI run
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "budget_explorer.png")
    print(f"study {t_study:.0f} s, page {t_page:.0f} s; budget {before['budget']} -> {after['budget']}: "
          f"accuracy {before['accuracy_text']} -> {out.accuracy:.4f}, cost -> {out.mean_cost:.4f}")
