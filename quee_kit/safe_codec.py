"""A payload codec that runs no code when it reads: JSON for the structure, safetensors for the arrays.

:mod:`quee_kit.artifacts` stores every artifact (checkpoints, path caches, predictors, the study store,
the explorer's points) with it, so that a file planted in a shared ``cache_dir`` can at worst be wrong
data, never a program (the pickle and the unrestricted ``torch.load`` it replaces ran whatever the
file said). What it encodes, and restores with the same types and bits:

- ``None``, ``bool``, ``int``, ``float`` (NaN and ±inf included), ``str``, ``list``, ``tuple`` and ``dict``
  (any of these as keys, order kept);
- numpy arrays and scalars and torch tensors of a numeric or bool dtype (bfloat16 included), any shape;
- pandas DataFrames whose columns are numeric, bool or objects made of the above (e.g. strings).

Anything else raises :class:`TypeError` when saving: there is no fallback to pickle. Decoding needs
torch only when the payload holds tensors, so a payload of numpy arrays loads without importing it.

A body is ``structure length (uint32 LE) | structure (JSON) | arrays (safetensors)``; an array in the
structure is ``{"$a": name}`` with ``"torch"`` naming the tensor dtype when it was a tensor.
"""
from __future__ import annotations

import json
import struct
import sys
from typing import Any

import numpy as np

__all__ = ["encode", "decode"]

# Tags of the structure: a plain JSON dict never appears in it (dicts are {"$d": [[k, v], ...]}).
_ARRAY, _DICT, _TUPLE, _FRAME, _SCALAR = "$a", "$d", "$t", "$df", "$s"


def _torch():
    """torch, when the caller already imported it (a numpy-only payload never does)."""
    return sys.modules.get("torch")


def encode(obj: Any) -> bytes:
    """The bytes of ``obj`` (see the module docstring for what it may hold); TypeError otherwise."""
    from safetensors.numpy import save
    arrays: dict[str, np.ndarray] = {}
    structure = _enc(obj, arrays)
    head = json.dumps(structure, allow_nan=True, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + (save(arrays) if arrays else b"")


def decode(body: bytes) -> Any:
    """The object :func:`encode` wrote; ValueError when ``body`` is not such bytes."""
    from safetensors.numpy import load
    (n,) = struct.unpack("<I", body[:4])
    structure = json.loads(body[4:4 + n])
    arrays = load(body[4 + n:]) if len(body) > 4 + n else {}
    return _dec(structure, arrays)


def _array(x: np.ndarray, arrays: dict, torch_dtype: str | None = None) -> dict:
    if x.dtype.kind not in "biufc":
        raise TypeError(f"cannot store an array of dtype {x.dtype} (numbers and bools only)")
    name = str(len(arrays))
    arrays[name] = x if x.flags.c_contiguous else x.copy(order="C")   # 0-d stays 0-d
    return {_ARRAY: name, **({"torch": torch_dtype} if torch_dtype else {})}


def _enc(obj: Any, arrays: dict) -> Any:
    if obj is None or type(obj) in (bool, int, float, str):
        return obj   # json writes NaN/Infinity, which json.loads reads back; repr keeps every bit of a float
    if isinstance(obj, np.ndarray):
        return _array(obj, arrays)
    if isinstance(obj, np.generic):
        return {_SCALAR: _array(np.asarray(obj), arrays)[_ARRAY]}
    torch = _torch()
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        # numpy has no bfloat16: its 16 bits travel as int16 and are viewed back on loading
        return _array((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy(), arrays, dtype)
    if isinstance(obj, dict):   # an OrderedDict (a state dict) comes back as a dict, in its order
        return {_DICT: [[_enc(k, arrays), _enc(v, arrays)] for k, v in obj.items()]}
    if type(obj) is list:
        return [_enc(v, arrays) for v in obj]
    if type(obj) is tuple:
        return {_TUPLE: [_enc(v, arrays) for v in obj]}
    import pandas as pd
    if type(obj) is pd.DataFrame:
        return {_FRAME: {"columns": _column(obj.columns, arrays), "index": _column(obj.index, arrays),
                         "data": [_column(obj[c], arrays) for c in obj.columns]}}
    raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in an artifact "
                    "(numbers, strings, lists, tuples, dicts, arrays, tensors and DataFrames only)")


def _column(values, arrays: dict) -> dict:
    """A DataFrame column or index: its array when numeric, else its values one by one."""
    import pandas as pd
    if isinstance(values, pd.RangeIndex):
        return {"range": [values.start, values.stop, values.step], "name": _enc(values.name, arrays)}
    name = _enc(values.name, arrays) if isinstance(values, pd.Index) else None
    if values.dtype.kind in "biufc":
        return {"array": _array(values.to_numpy(), arrays), "name": name}
    if values.dtype != object and not isinstance(values.dtype, pd.StringDtype):
        raise TypeError(f"cannot store a DataFrame column of dtype {values.dtype}")
    return {"objects": _enc(list(values), arrays), "dtype": str(values.dtype), "name": name}


def _dec(node: Any, arrays: dict) -> Any:
    if isinstance(node, list):
        return [_dec(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if _DICT in node:
        return {_dec(k, arrays): _dec(v, arrays) for k, v in node[_DICT]}
    if _TUPLE in node:
        return tuple(_dec(v, arrays) for v in node[_TUPLE])
    if _SCALAR in node:
        return arrays[node[_SCALAR]][()]
    if _ARRAY in node:
        x = arrays[node[_ARRAY]].copy()   # safetensors' arrays are read-only views of the file's bytes
        if "torch" not in node:
            return x
        import torch
        dtype = getattr(torch, node["torch"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown tensor dtype {node['torch']!r}")
        t = torch.from_numpy(x)
        return t.view(dtype) if dtype == torch.bfloat16 else t
    if _FRAME in node:
        return _frame(node[_FRAME], arrays)
    raise ValueError(f"unknown node {sorted(node)[:3]}")


def _frame(f: dict, arrays: dict):
    import pandas as pd
    df = pd.DataFrame({i: _values(col, arrays) for i, col in enumerate(f["data"])}, index=_index(f["index"], arrays))
    df.columns = _index(f["columns"], arrays)
    return df


def _index(col: dict, arrays: dict):
    import pandas as pd
    name = _dec(col["name"], arrays)
    return pd.RangeIndex(*col["range"], name=name) if "range" in col else pd.Index(_values(col, arrays), name=name)


def _values(col: dict, arrays: dict):
    if "array" in col:
        return _dec(col["array"], arrays)
    objects = _dec(col["objects"], arrays)
    out = np.empty(len(objects), dtype=object)
    for i, o in enumerate(objects):   # one by one: a tuple stays one cell
        out[i] = o
    import pandas as pd
    return pd.array(out, dtype=None if col["dtype"] == "object" else col["dtype"]) if col["dtype"] != "object" \
        else pd.Series(out, dtype=object).array
