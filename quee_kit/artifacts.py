"""Content hashes, atomic writes, and stale/corrupt artifact detection.

An artifact file is ``MAGIC | header length | JSON header | payload``; the header holds the
key (hash of everything the artifact was built from) and the sha256 of the payload. The payload is
always :mod:`quee_kit.safe_codec` (JSON + safetensors): the code decides how a file is read, never
the file, so a file planted in a shared cache cannot run code (``docs/shared-caches.md``; the key and
checksum are public, they only catch stale and damaged files). A payload of numpy arrays loads
without importing torch (the explorer's points). :func:`load_or_build` reuses a file only when key
and checksum match; anything else (stale key, truncated or flipped bytes, an old pickle-format
file, unreadable file) is reported and rebuilt.

Files are created with the permissions the umask allows (as ``open`` would), not ``mkstemp``'s 0600,
so that a group can share a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from .digests import content_hash, tensor_digest  # re-exported: artifact keys and weights' digests

__all__ = ["content_hash", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json", "file_mode", "umask", "save_artifact", "load_artifact", "load_or_build",
           "ArtifactError", "tensor_digest"]

# QUEEKIT1 files held pickle or torch.load payloads: they are refused (and rebuilt), never read.
MAGIC = b"QUEEKIT2"
OLD_MAGIC = b"QUEEKIT1"
PAYLOAD_FORMAT = "safe1"   # the only payload this code reads (quee_kit.safe_codec)


class ArtifactError(RuntimeError):
    """An artifact that is missing, stale or corrupted."""


def umask() -> int:
    """This process's umask, read once (reading it means setting it: it is set straight back)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """The mode a new file gets from the umask (0o666 less it), as a plain ``open`` would give it."""
    return 0o666 & ~umask()


_UMASK: int | None = None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``; the file gets the
    umask's permissions (:func:`file_mode`), as a plain ``open`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())   # mkstemp makes 0600: another user of a shared cache could not read it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: str | Path, df, index: bool = False) -> None:
    """A DataFrame as CSV (6 significant digits, the kit's table format), written atomically."""
    atomic_write_bytes(path, df.to_csv(index=index, float_format="%.6g").encode())


def atomic_write_json(path: str | Path, obj) -> None:
    """``obj`` as indented JSON (numpy scalars as floats) with a final newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


def save_artifact(path: str | Path, key: str, payload: Any) -> None:
    """Store ``payload`` (what :mod:`quee_kit.safe_codec` encodes, else TypeError) under ``key``, atomically."""
    from .safe_codec import encode
    body = encode(payload)
    header = json.dumps({"key": key, "sha256": hashlib.sha256(body).hexdigest(), "format": PAYLOAD_FORMAT}).encode()
    atomic_write_bytes(path, MAGIC + struct.pack("<I", len(header)) + header + body)


def load_artifact(path: str | Path, key: str) -> Any:
    """Load an artifact, raising :class:`ArtifactError` if missing, stale, corrupted or of the old format."""
    from .safe_codec import decode
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    raw = path.read_bytes()
    if raw[:8] == OLD_MAGIC:
        raise ArtifactError(f"{path}: old format (a pickle payload, which this version never reads)")
    try:
        if raw[:8] != MAGIC:
            raise ValueError("bad magic")
        (n,) = struct.unpack("<I", raw[8:12])
        header = json.loads(raw[12:12 + n])
        body = raw[12 + n:]
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupted file
        raise ArtifactError(f"{path}: corrupted header ({e})") from None
    if header.get("key") != key:
        raise ArtifactError(f"{path}: stale (built from different inputs)")
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise ArtifactError(f"{path}: corrupted payload (checksum mismatch)")
    try:
        return decode(body)
    except Exception as e:  # noqa: BLE001 - bytes that are not the codec's: a damaged or forged file
        raise ArtifactError(f"{path}: unreadable payload ({type(e).__name__})") from None


def load_or_build(path: str | Path, key: str, build: Callable[[], Any], what: str = "artifact") -> Any:
    """Return the artifact at ``path`` built from ``key``, building and saving it if needed."""
    path = Path(path)
    try:
        return load_artifact(path, key)
    except ArtifactError as e:
        if path.exists():
            warnings.warn(f"rebuilding {what}: {e}", stacklevel=2)
    payload = build()
    save_artifact(path, key, payload)
    return payload
