"""Shipped models: trained weights committed with the kit, so that every number quoted from a study
reproduces on any CPU (training amplifies the last-bit differences between CPU kernels; a fixed model
does not). The same holds for the MLP error predictors (``quee-mlp``, ``quee-raw``): fitting one on
identical path caches under another kernel path moved ``quee-mlp`` by 0.55 points, so their fits are
shipped too (``embedded/predictors/``, the study's predictor artifact as it is, keyed by the predictor key).

``quee_kit/embedded/models/`` holds one safetensors file per model and ``manifest.json``, one entry per
file: the model key (the hash of the training config section, the data digest and the seed: the same key
the kit's cache uses), the sha256 of the file, and how it was made (torch version, CPU, training time).
Safetensors holds tensors only, so loading a model runs no code. ``make models`` rebuilds every entry
(:mod:`quee_kit.build_models`).
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artifacts import atomic_write_bytes
from .config_rules import UserError

__all__ = ["MODELS_DIR", "PREDICTORS_DIR", "ShippedModel", "shipped_models", "find_shipped", "load_shipped",
           "load_shipped_bytes", "find_shipped_predictor", "load_shipped_predictor", "ship_model", "ship_bytes",
           "cpu_name"]

MODELS_DIR = Path(__file__).resolve().parent / "embedded" / "models"
PREDICTORS_DIR = Path(__file__).resolve().parent / "embedded" / "predictors"


@dataclass(frozen=True)
class ShippedModel:
    """One manifest entry. ``key``: the model key (:func:`quee_kit.prepare.model_key`); ``file``: the
    safetensors file beside the manifest; ``train``: the training statistics of the run that made it."""
    key: str
    file: str
    sha256: str
    study: str
    seed: int
    data_digest: str
    torch: str
    cpu: str
    train: dict = field(default_factory=dict)


def shipped_models(folder: Path | None = None) -> dict[str, ShippedModel]:
    """Every manifest entry by model key ({} when there is no manifest)."""
    path = (folder or MODELS_DIR) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {e["key"]: ShippedModel(**e) for e in entries}
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"shipped models: {path} is not a valid manifest ({type(e).__name__}: {e}); "
                        "restore it from the repository or run `make models`") from None


def find_shipped(key: str, folder: Path | None = None) -> ShippedModel | None:
    return shipped_models(folder).get(key)


def load_shipped_bytes(entry: ShippedModel, folder: Path | None = None) -> bytes:
    """The entry's file, after checking its sha256 against the manifest: a corrupted or replaced file is
    refused with one line, never used."""
    path = (folder or MODELS_DIR) / entry.file
    hint = "restore it from the repository (git checkout), run `make models`, or train afresh with --retrain"
    what = "shipped predictor" if folder == PREDICTORS_DIR else "shipped model"
    if not path.is_file():
        raise UserError(f"{what} {entry.file}: file missing; {hint}")
    raw = path.read_bytes()
    got = hashlib.sha256(raw).hexdigest()
    if got != entry.sha256:
        raise UserError(f"{what} {entry.file}: sha256 {got[:12]}... does not match the manifest's "
                        f"{entry.sha256[:12]}...; {hint}")
    return raw


def load_shipped(entry: ShippedModel, folder: Path | None = None) -> dict:
    """The entry's state dict (name -> CPU tensor), checked as :func:`load_shipped_bytes` does."""
    from safetensors.torch import load
    return load(load_shipped_bytes(entry, folder))


def find_shipped_predictor(key: str) -> ShippedModel | None:
    return shipped_models(PREDICTORS_DIR).get(key)


def load_shipped_predictor(entry: ShippedModel) -> bytes:
    """The shipped predictor artifact's bytes (a :mod:`quee_kit.safe_codec` body), sha256-checked."""
    return load_shipped_bytes(entry, PREDICTORS_DIR)


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ship_model(state_dict: dict, *, key: str, study: str, seed: int, data_digest: str, train: dict,
               folder: Path | None = None) -> ShippedModel:
    """Write ``state_dict`` as ``<study>-seed<seed>.safetensors`` and its manifest entry (replacing an
    entry of the same file), both atomically."""
    from safetensors.torch import save
    body = save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    return ship_bytes(body, name=f"{study}-seed{seed}.safetensors", key=key, study=study, seed=seed,
                      data_digest=data_digest, train=train, folder=folder or MODELS_DIR)


def ship_bytes(body: bytes, *, name: str, key: str, study: str, seed: int, data_digest: str, train: dict,
               folder: Path) -> ShippedModel:
    """Write ``body`` as ``folder/name`` and its manifest entry (replacing an entry of the same file), both
    atomically."""
    import torch
    atomic_write_bytes(folder / name, body)
    entry = ShippedModel(key=key, file=name, sha256=hashlib.sha256(body).hexdigest(), study=study, seed=seed,
                         data_digest=data_digest, torch=torch.__version__, cpu=cpu_name(),
                         train={k: v for k, v in train.items() if isinstance(v, (int, float, str))})
    entries = [e for e in shipped_models(folder).values() if e.file != name] + [entry]
    entries.sort(key=lambda e: e.file)
    atomic_write_bytes(folder / "manifest.json", (json.dumps([asdict(e) for e in entries], indent=1) + "\n").encode())
    return entry
