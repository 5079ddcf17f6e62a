"""JSON codec for engine results and outcomes on the wire: arrays as raw bytes, never pickle.

Every value is JSON. Results are tagged objects: `{"$dc": "RunResult", ...fields}` for the result
dataclasses of `mechscope.engine.results` (and nothing else), `{"$nd": {"dtype", "shape", "b64"}}`
for numpy arrays and scalars (little-endian raw bytes, base64), `{"$tuple": [...]}` for tuples.
Decoding rebuilds exactly what was encoded (float bits included) and rejects anything else with a
ValueError naming what was wrong.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from typing import Any

import numpy as np

from mechscope.engine import results
from mechscope.workbench.requests import Outcome, Request

RESULT_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (
        results.ModelInfo, results.TokenProb, results.MetricInfo, results.LogitLens,
        results.Attribution, results.ActivationStats, results.ComputeInfo, results.Prediction,
        results.RunResult, results.SweepResult, results.GeneratedToken,
    )
}
# Plain numeric dtypes only: an object dtype could smuggle code through a later unpickle.
DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                    "float16", "float32", "float64"})
MAX_DEPTH = 32


def encode_array(array: np.ndarray | np.generic) -> dict[str, Any]:
    arr = np.asarray(array)
    if arr.dtype.name not in DTYPES:
        raise TypeError(f"cannot send an array of dtype {arr.dtype}")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    payload: dict[str, Any] = {"dtype": arr.dtype.name, "shape": list(arr.shape),
                               "b64": base64.b64encode(data).decode("ascii")}
    if isinstance(array, np.generic):
        payload["scalar"] = True
    return {"$nd": payload}


def decode_array(payload: Any) -> np.ndarray | np.generic:
    if not isinstance(payload, dict) or set(payload) - {"dtype", "shape", "b64", "scalar"}:
        raise ValueError("array: expected {dtype, shape, b64}")
    dtype, shape, b64 = payload.get("dtype"), payload.get("shape"), payload.get("b64")
    if dtype not in DTYPES:
        raise ValueError(f"array: dtype {dtype!r} is not allowed")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError("array: shape must be a list of non-negative integers")
    if not isinstance(b64, str):
        raise ValueError("array: b64 must be a string")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise ValueError("array: b64 is not valid base64") from None
    dt = np.dtype(dtype).newbyteorder("<")
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise ValueError(f"array: {len(raw)} bytes do not hold {dtype}{shape}")
    arr = np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=True).reshape(shape)
    return arr[()] if payload.get("scalar") else arr


def encode(value: Any) -> Any:
    """A JSON-ready form of a result value (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return encode_array(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if RESULT_TYPES.get(name) is not type(value):
            raise TypeError(f"cannot send a {name}")
        out = {"$dc": name}
        out.update({f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return out
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) and not k.startswith("$") for k in value):
            raise TypeError("dict keys on the wire must be strings not starting with '$'")
        return {k: encode(v) for k, v in value.items()}
    raise TypeError(f"cannot send a {type(value).__name__}")


def decode(data: Any, depth: int = 0) -> Any:
    """Inverse of `encode`; ValueError on anything that `encode` could not have produced."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, depth + 1) for v in data]
    if not isinstance(data, dict):
        raise ValueError(f"unexpected {type(data).__name__}")
    if "$nd" in data:
        if len(data) != 1:
            raise ValueError("array: unexpected keys next to $nd")
        return decode_array(data["$nd"])
    if "$tuple" in data:
        if len(data) != 1 or not isinstance(data["$tuple"], list):
            raise ValueError("tuple: expected {$tuple: [...]}")
        return tuple(decode(v, depth + 1) for v in data["$tuple"])
    if "$dc" in data:
        cls = RESULT_TYPES.get(data["$dc"]) if isinstance(data["$dc"], str) else None
        if cls is None:
            raise ValueError(f"unknown result type {data['$dc']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k != "$dc"}
        if set(fields) != names:
            raise ValueError(f"{cls.__name__}: fields {sorted(fields)} do not match {sorted(names)}")
        return cls(**{k: decode(v, depth + 1) for k, v in fields.items()})
    if any(k.startswith("$") for k in data):
        raise ValueError(f"unknown tag in {sorted(data)}")
    return {k: decode(v, depth + 1) for k, v in data.items()}


def outcome_to_dict(outcome: Outcome) -> dict[str, Any]:
    """The outcome without its request (the client holds the request it sent)."""
    return {"result": encode(outcome.result), "error": outcome.error,
            "cancelled": outcome.cancelled, "seconds": outcome.seconds}


def outcome_from_dict(request: Request, data: Any) -> Outcome:
    if not isinstance(data, dict) or set(data) != {"result", "error", "cancelled", "seconds"}:
        raise ValueError("outcome: expected {result, error, cancelled, seconds}")
    error, cancelled, seconds = data["error"], data["cancelled"], data["seconds"]
    if error is not None and not isinstance(error, str):
        raise ValueError("outcome: error must be a string or null")
    if not isinstance(cancelled, bool) or not isinstance(seconds, (int, float)):
        raise ValueError("outcome: bad cancelled or seconds")
    return Outcome(request, result=decode(data["result"]), error=error, cancelled=cancelled,
                   seconds=float(seconds))


def dumps(value: Any) -> bytes:
    """One JSON line (NaN and infinities allowed: metrics can be nan)."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n"


def loads(line: bytes | str) -> Any:
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None
