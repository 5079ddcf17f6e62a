"""The wire codec: results and outcomes as frames of one JSON line plus raw array bytes, never pickle.

A frame is a JSON object on one line; when it holds arrays, `"$bytes": [n0, n1, ...]` in it says
that n0 + n1 + ... raw bytes follow the line, one little-endian block per array. In the JSON,
results are tagged objects: `{"$dc": "RunResult", ...fields}` for the dataclasses registered in
`WIRE_TYPES` (and nothing else), `{"$nd": {"dtype", "shape", "blob"}}` for numpy arrays and
scalars (`blob`: the index of its bytes), `{"$tuple": [...]}` for tuples and `{"$map": [[k, v],
...]}` for dicts whose keys are not plain strings. Decoding rebuilds exactly what was encoded
(float bits included) and rejects anything else with a ValueError naming what was wrong.

A `Prediction` whose run did not ask for `Views.logits` travels compact: its `KEPT_LOGITS` most
likely logits exactly (plus the ids a caller names), the others as one value that shares the
probability left, so a softmax over the rebuilt [vocab] array is exact at every id kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mechscope.engine import results
from mechscope.engine.features import results as feature_results
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.requests.kinds import Outcome, Request

WIRE_TYPES: dict[str, type] = {}


def register(cls: type) -> type:
    """Allow the dataclass `cls` on the wire (by its class name, which must be unique)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    if WIRE_TYPES.setdefault(cls.__name__, cls) is not cls:
        raise TypeError(f"another wire type is already called {cls.__name__}")
    return cls


for _cls in (results.ModelInfo, results.TokenProb, results.MetricInfo, results.LogitLens,
             results.Attribution, results.ActivationStats, results.ComputeInfo, results.Prediction,
             results.RunResult, results.SweepResult, results.GeneratedToken, results.SetRunResult,
             results.SetSweepResult, results.Estimate, results.HeadScores, results.MassiveLayer,
             results.VerifiedEstimate, results.FunctionVectorResult, results.RoleAttention,
             feature_results.FeatureActivations, feature_results.FeatureAttribution,
             feature_results.FeatureCardResult, feature_results.SaeQuality, PromptRow, PromptSet):
    register(_cls)
register(results.PathPatchResult)

# Plain numeric dtypes only: an object dtype could smuggle code through a later unpickle.
DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                    "float16", "float32", "float64"})
MAX_DEPTH = 32
PLAIN = frozenset({str, int, float, bool, type(None)})  # values JSON carries as they are
MAX_FRAME_BYTES = 4 * 1024**3  # one frame's arrays together; a 10,000-row set sweep of a 70B model fits
MAX_LINE_BYTES = 256 * 1024**2
KEPT_LOGITS = 256  # logits a compact Prediction keeps exactly (the rest share what probability is left)


class LogitsRecord(dict):
    """A compact [vocab] logits array on its way out (encoded as `{"$logits": ...}`)."""


class Encoder:
    """Turns a value into JSON-ready data, collecting array bytes in `blobs` (see the module docstring)."""

    def __init__(self, full_logits: bool = True) -> None:
        self.blobs: list[bytes] = []
        self.full_logits = full_logits
        self.keep_ids: list[int] = []  # ids a compact Prediction keeps exactly whatever their rank

    def array(self, array: np.ndarray | np.generic) -> dict[str, Any]:
        arr = np.asarray(array)
        if arr.dtype.name not in DTYPES:
            raise TypeError(f"cannot send an array of dtype {arr.dtype}")
        self.blobs.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
        payload: dict[str, Any] = {"dtype": arr.dtype.name, "shape": list(arr.shape),
                                   "blob": len(self.blobs) - 1}
        if isinstance(array, np.generic):
            payload["scalar"] = True
        return {"$nd": payload}

    def __call__(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if type(value) is list and all(type(v) in PLAIN for v in value):
            return value  # token texts, ids, a table's numbers: as they are
        if isinstance(value, (np.ndarray, np.generic)):
            return self.array(value)
        if isinstance(value, LogitsRecord):
            return {"$logits": {"vocab": value["vocab"], "ids": self.array(value["ids"]),
                                "values": self.array(value["values"]), "fill": value["fill"]}}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = type(value).__name__
            if WIRE_TYPES.get(name) is not type(value):
                raise TypeError(f"cannot send a {name}")
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            if isinstance(value, results.RunResult):
                self.keep_ids = run_ids(value)
            if (isinstance(value, results.Prediction) and not self.full_logits
                    and value.logits_kept is None and np.size(value.logits) > 2 * KEPT_LOGITS):
                fields.update(compact_logits(value, self.keep_ids))  # smaller only when most of the vocabulary is left out
            out = {"$dc": name}
            out.update({k: self(v) for k, v in fields.items()})
            return out
        if isinstance(value, tuple):
            return {"$tuple": [self(v) for v in value]}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: self(v) for k, v in value.items()}
            return {"$map": [[self(k), self(v)] for k, v in value.items()]}
        raise TypeError(f"cannot send a {type(value).__name__}")


def run_ids(result: results.RunResult) -> list[int]:
    """The ids a run's readers look up in either prediction: both top lists and the metric's tokens
    (the Δ column, a pin's deltas, the spacing hint)."""
    ids = [t.id for t in (*result.prediction.top, *result.baseline.top)]
    if result.metric_info is not None:
        ids.extend(result.metric_info.target_ids[:1] + result.metric_info.foil_ids[:1])
    return ids


def top_ids(values: np.ndarray, k: int) -> np.ndarray:
    """The ids of `values`' k largest ([vocab] -> [k], any order). Every one of k blocks has its
    maximum at or above the smallest block maximum, so the k largest are among the values at or
    above it: a partition of those few (a few percent of a vocabulary) instead of all (5x faster)."""
    if k <= 0:
        return np.zeros(0, np.int64)
    if values.size <= 4 * k:
        return np.argpartition(-values, k - 1)[:k]
    width = values.size // k
    floor = values[: width * k].reshape(k, width).max(axis=1).min()
    candidates = np.flatnonzero(values >= floor)  # at least k
    return candidates[np.argpartition(-values[candidates], k - 1)[:k]]


def compact_logits(prediction: results.Prediction, keep_ids: Iterable[int] = ()) -> dict[str, Any]:
    """The `logits` and `logits_kept` fields of a compact Prediction: the most likely ids, its top
    tokens' and `keep_ids` exactly, a `$logits` record the decoder rebuilds the [vocab] array from."""
    logits = np.asarray(prediction.logits, dtype=np.float32)  # [vocab]
    ids = top_ids(logits, min(KEPT_LOGITS, logits.size))
    named = [i for i in (*(t.id for t in prediction.top), *keep_ids) if 0 <= i < logits.size]
    ids = np.union1d(ids, named).astype(np.int32)
    peak = float(logits.max()) if logits.size else 0.0
    mass = np.exp(logits - np.float32(peak))  # [vocab], each in (0, 1]
    total, kept_mass = float(mass.sum(dtype=np.float64)), float(mass[ids].sum(dtype=np.float64))
    rest = logits.size - ids.size
    # each id not kept gets the mean of the probability they share, as a logit
    fill = (peak + math.log((total - kept_mass) / rest)) if rest and total > kept_mass else -math.inf
    record = {"vocab": int(logits.size), "ids": ids, "values": logits[ids], "fill": fill}
    return {"logits": LogitsRecord(record), "logits_kept": int(ids.size)}


def decode_logits(payload: Any, depth: int, blobs: list[bytes]) -> np.ndarray:
    if not isinstance(payload, dict) or set(payload) != {"vocab", "ids", "values", "fill"}:
        raise ValueError("logits: expected {vocab, ids, values, fill}")
    vocab, fill = payload["vocab"], payload["fill"]
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 <= vocab <= 2**24:
        raise ValueError("logits: bad vocab size")
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise ValueError("logits: fill must be a number")
    ids, values = decode(payload["ids"], depth + 1, blobs), decode(payload["values"], depth + 1, blobs)
    if (not isinstance(ids, np.ndarray) or not isinstance(values, np.ndarray) or ids.ndim != 1
            or ids.shape != values.shape or ids.dtype != np.int32 or values.dtype != np.float32):
        raise ValueError("logits: ids and values must be int32 and float32 arrays of one length")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError("logits: an id is outside the vocabulary")
    out = np.full(vocab, fill, dtype=np.float32)  # [vocab]
    out[ids] = values
    return out


def decode_array(payload: Any, blobs: list[bytes]) -> np.ndarray | np.generic:
    if not isinstance(payload, dict) or set(payload) - {"dtype", "shape", "blob", "scalar"}:
        raise ValueError("array: expected {dtype, shape, blob}")
    dtype, shape, index = payload.get("dtype"), payload.get("shape"), payload.get("blob")
    if dtype not in DTYPES:
        raise ValueError(f"array: dtype {dtype!r} is not allowed")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError("array: shape must be a list of non-negative integers")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(blobs):
        raise ValueError("array: blob must index the frame's byte blocks")
    raw = blobs[index]
    dt = np.dtype(dtype).newbyteorder("<")
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise ValueError(f"array: {len(raw)} bytes do not hold {dtype}{shape}")
    arr = np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=True).reshape(shape)
    return arr[()] if payload.get("scalar") else arr


def encode(value: Any, full_logits: bool = True) -> tuple[Any, list[bytes]]:
    """(JSON-ready data, the array bytes it refers to) for a result value."""
    encoder = Encoder(full_logits)
    return encoder(value), encoder.blobs


def decode(data: Any, depth: int = 0, blobs: list[bytes] | None = None) -> Any:
    """Inverse of `encode`; ValueError on anything that `encode` could not have produced."""
    blobs = [] if blobs is None else blobs
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        if all(type(v) in PLAIN for v in data):
            return data
        return [decode(v, depth + 1, blobs) for v in data]
    if not isinstance(data, dict):
        raise ValueError(f"unexpected {type(data).__name__}")
    tags = [k for k in data if k.startswith("$")]
    if not tags:
        return {k: decode(v, depth + 1, blobs) for k, v in data.items()}
    tag = tags[0]
    if tag == "$dc":
        return _decode_dataclass(data, depth, blobs)
    if len(data) != 1:
        raise ValueError(f"unexpected keys next to {tag}")
    body = data[tag]
    if tag == "$nd":
        return decode_array(body, blobs)
    if tag == "$logits":
        return decode_logits(body, depth, blobs)
    if tag == "$tuple":
        if not isinstance(body, list):
            raise ValueError("tuple: expected {$tuple: [...]}")
        return tuple(decode(v, depth + 1, blobs) for v in body)
    if tag == "$map":
        return _decode_map(body, depth, blobs)
    raise ValueError(f"unknown tag {tag!r}")


def _decode_map(body: Any, depth: int, blobs: list[bytes]) -> dict[Any, Any]:
    if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
        raise ValueError("map: expected {$map: [[key, value], ...]}")
    out = {}
    for key_data, value in body:
        key = decode(key_data, depth + 1, blobs)
        if key is not None and not isinstance(key, (str, int, float, bool, tuple)):
            raise ValueError(f"map: a key cannot be a {type(key).__name__}")
        out[key] = decode(value, depth + 1, blobs)
    return out


def _decode_dataclass(data: dict[str, Any], depth: int, blobs: list[bytes]) -> Any:
    cls = WIRE_TYPES.get(data["$dc"]) if isinstance(data["$dc"], str) else None
    if cls is None:
        raise ValueError(f"unknown result type {data['$dc']!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in data.items() if k != "$dc"}
    if set(fields) != names:
        raise ValueError(f"{cls.__name__}: fields {sorted(fields)} do not match {sorted(names)}")
    return cls(**{k: decode(v, depth + 1, blobs) for k, v in fields.items()})


# -------------------------------------------------------------------- outcomes and frames


def outcome_to_dict(outcome: Outcome, encoder: Encoder | None = None) -> dict[str, Any]:
    """The outcome without its request (the client holds the request it sent)."""
    encoder = encoder or Encoder()
    return {"result": encoder(outcome.result), "error": outcome.error,
            "cancelled": outcome.cancelled, "seconds": outcome.seconds}


def outcome_from_dict(request: Request, data: Any, blobs: list[bytes] | None = None) -> Outcome:
    if not isinstance(data, dict) or set(data) != {"result", "error", "cancelled", "seconds"}:
        raise ValueError("outcome: expected {result, error, cancelled, seconds}")
    error, cancelled, seconds = data["error"], data["cancelled"], data["seconds"]
    if error is not None and not isinstance(error, str):
        raise ValueError("outcome: error must be a string or null")
    if not isinstance(cancelled, bool) or not isinstance(seconds, (int, float)):
        raise ValueError("outcome: bad cancelled or seconds")
    return Outcome(request, result=decode(data["result"], 0, blobs), error=error, cancelled=cancelled,
                   seconds=float(seconds))


def wants_full_logits(request: Request) -> bool:
    """A request's predictions travel with every logit only when its views ask for them."""
    views = getattr(request, "views", None)
    return views is None or bool(getattr(views, "logits", True))


def pack(frame: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One frame: its JSON line, then its arrays' bytes (their lengths under "$bytes")."""
    if blobs:
        frame = {**frame, "$bytes": [len(b) for b in blobs]}
    return b"".join([dumps(frame), *blobs])


def pack_value(frame: dict[str, Any], key: str, value: Any, full_logits: bool = True) -> bytes:
    """A frame with `value` encoded under `key`."""
    data, blobs = encode(value, full_logits)
    return pack({**frame, key: data}, blobs)


def dumps(value: Any) -> bytes:
    """One JSON line (NaN and infinities allowed: metrics can be nan)."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n"


def loads(line: bytes | str) -> Any:
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None


class FrameReader:
    """Frames from a byte stream that arrives in chunks of any size: (JSON object, its byte blocks)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()
        self._start = 0

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                if self._start:
                    del self._buffer[:self._start]
                    self._start = 0
                self._buffer += chunk
                return True
        return False

    def _line(self) -> bytes | None:
        searched = self._start
        while (end := self._buffer.find(b"\n", searched)) < 0:
            searched = len(self._buffer)
            if searched - self._start > MAX_LINE_BYTES:
                raise ValueError(f"a frame's JSON line is over {MAX_LINE_BYTES} bytes")
            consumed = self._start
            if not self._more():
                if len(self._buffer) > self._start:
                    raise ValueError("the stream ended inside a frame")
                return None
            searched -= consumed - self._start  # `_more` dropped the bytes already read
        line = bytes(self._buffer[self._start:end])
        self._start = end + 1
        return line

    def _take(self, size: int) -> bytes:
        while len(self._buffer) - self._start < size:
            if not self._more():
                raise ValueError("the stream ended inside a frame's arrays")
        out = bytes(self._buffer[self._start:self._start + size])
        self._start += size
        return out

    def __iter__(self) -> Iterator[tuple[dict[str, Any], list[bytes]]]:
        while (line := self._line()) is not None:
            if not line.strip():
                continue
            frame = loads(line)
            if not isinstance(frame, dict):
                raise ValueError("a frame must be a JSON object")
            sizes = frame.pop("$bytes", [])
            if (not isinstance(sizes, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
                    or sum(sizes) > MAX_FRAME_BYTES):
                raise ValueError("a frame's $bytes must be a list of sizes within the limit")
            yield frame, [self._take(n) for n in sizes]


def unpack(body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The one frame a whole response body holds."""
    frames = list(FrameReader([body]))
    if len(frames) != 1:
        raise ValueError(f"expected one frame, got {len(frames)}")
    return frames[0]
