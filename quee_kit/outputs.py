"""Output folders that appear whole, and folders checked writable before any compute.

A command's output files (``quee-kit run``: five of them) are written into a hidden folder beside
``--out`` and put in place together at the end (:func:`staged_output`): a reader of ``--out`` sees the
previous run's complete set or the new one, never a mix, and a failed or interrupted run leaves
``--out`` as it was (no empty folder where there was none). Files of ``--out`` that the run does not
write (another command's, a user's notes) are kept.

On Linux the swap of an existing ``--out`` is one ``renameat2(RENAME_EXCHANGE)``; elsewhere two
renames, with SIGINT and SIGTERM held back in between.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .artifacts import umask
from .config_rules import UserError

__all__ = ["check_writable_dir", "check_out", "staged_output"]


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Make ``path`` (a cache folder) if missing and create and remove a file in it; :class:`UserError`
    naming ``what`` when that fails (read-only, a file in the way, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{what}: {path} is not a writable folder ({e.strerror or type(e).__name__})") from None
    return path


def check_out(out: str | Path) -> Path:
    """The folder ``out`` will be written to (a link followed), checked before any compute: an existing
    ``out`` must be a writable folder, and its parent a writable folder (made if missing)."""
    out = Path(out)
    out = out.resolve() if out.is_symlink() else out.absolute()
    if out.exists() and not (out.is_dir() and os.access(out, os.W_OK)):
        raise UserError(f"--out: {out} is not a writable folder")
    check_writable_dir(out.parent, "--out")
    return out


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):   # ENOSYS, EINVAL, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _link(src, dst) -> None:
    """A hard link of ``src`` at ``dst``; a copy where the file system has no hard links."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _publish(stage: Path, out: Path) -> None:
    """Put ``stage`` in place of ``out``, keeping the files of ``out`` that ``stage`` lacks."""
    if not out.exists():
        os.rename(stage, out)
        return
    for entry in out.iterdir():   # kept: hard links (no copy) of what this run did not write
        if not (stage / entry.name).exists():
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link)
            else:
                _link(entry, stage / entry.name)
    if not _exchange(stage, out):
        old = stage.with_name(stage.name + "-old")
        os.rename(out, old)
        os.rename(stage, out)
        stage = old
    shutil.rmtree(stage, ignore_errors=True)   # the previous outputs, now at the stage's path


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM delivered after the block (the main thread only; elsewhere nothing held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def staged_output(out: str | Path):
    """Yield a fresh hidden folder beside ``out`` to write a command's outputs into; when the block ends
    normally it replaces ``out`` whole (see the module docstring), else it is removed and ``out`` is
    left as it was. The folder is made, so ``out``'s place is checked writable, when the block starts."""
    out = check_out(out)
    try:
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as e:
        raise UserError(f"--out: cannot write in {out.parent} ({e.strerror or type(e).__name__})") from None
    os.chmod(stage, 0o777 & ~umask())   # mkdtemp makes 0700; a plain mkdir gets the umask's mode
    try:
        yield stage
        with _signals_held():
            _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
