"""The one door for bytes read from a session folder: bounded reads, bounded JSON, validated tensors.

Everything a reader takes from disk comes through here, with its size, nesting, string lengths and
numbers checked before it is used as a size or kept in memory:
- files are opened without following symlinks and without blocking (a FIFO is refused, not waited
  on), must be regular files, and are read only up to a cap;
- JSON is checked for nesting depth before it is parsed (no RecursionError), then every value is
  walked: strings bounded and valid Unicode (no lone surrogates), integers bounded, floats finite;
- a safetensors file's header is parsed and checked (one tensor, float dtype, the shape the event
  records, offsets that match the file) before its data is touched.
Failures are `SessionError("path[:line]: reason")` with any quoted value cut short.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from mechscope.requests.field_types import shown
from mechscope.sessions.errors import SessionError

MAX_MANIFEST_BYTES = 1 << 20  # session.json
MAX_LOG_BYTES = 64 << 20  # events.jsonl: ~40,000 runs
MAX_LINE_BYTES = 8 << 20  # one event
MAX_TENSOR_ELEMENTS = 1 << 24  # one vector or sweep matrix (64 MiB of float32)
MAX_TENSOR_HEADER = 64 << 10
MAX_DEPTH = 32  # JSON nesting
MAX_STRING = 1 << 20  # characters in one string (a prompt of a long context)
MAX_INT = (1 << 63) - 1
TENSOR_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file (not a symlink, FIFO or device) of at most `limit` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SessionError(f"{path}: missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise SessionError(f"{path}: is a symbolic link (links are not followed in a session)") from None
        raise SessionError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SessionError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise SessionError(f"{path}: {info.st_size} bytes, more than the {limit} this file may hold")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise SessionError(f"{path}: grew past the {limit} bytes this file may hold while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise SessionError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """ValueError when JSON text nests arrays/objects deeper than `limit` (checked before parsing)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise ValueError(f"JSON nested more than {limit} levels deep")
        else:
            depth -= 1


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes) -> Any:
    """Parse one bounded JSON document and check every value in it; ValueError with a short reason."""
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"{len(raw)} bytes in one JSON document (at most {MAX_LINE_BYTES})")
    check_depth(raw)
    text = raw.decode("utf-8")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    check_values(data)
    return data


def check_values(data: Any) -> None:
    """Every string bounded and valid Unicode, every integer bounded, every float finite."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            _check_string(value)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > MAX_INT:
                raise ValueError(f"integer {shown(value, 40)} is out of range")
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"number {value!r} is not finite")
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_string(key)
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        else:
            raise ValueError(f"unexpected value of type {type(value).__name__}")


def _check_string(value: str) -> None:
    if len(value) > MAX_STRING:
        raise ValueError(f"a string of {len(value)} characters (at most {MAX_STRING}): {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"string {shown(value)} holds a lone surrogate (not valid Unicode)") from None


def load_tensor(session_path: Path, file: str, key: str, shape: list[int], where: str,
                finite: bool = False) -> np.ndarray:
    """The float32 array `key` of `session_path/file`, checked against the event's `shape`."""
    tensors_dir = session_path / "tensors"
    if tensors_dir.is_symlink():
        raise SessionError(f"{where}: {tensors_dir} is a symbolic link (links are not followed)")
    path = session_path / file
    elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if elements > MAX_TENSOR_ELEMENTS:
        raise SessionError(f"{where}: shape {shown(shape)} has more than {MAX_TENSOR_ELEMENTS} values")
    if not path.exists() and not path.is_symlink():
        raise SessionError(f"{where}: tensor file {file} is missing")
    try:
        data = read_regular(path, 8 + MAX_TENSOR_HEADER + 8 * elements)
    except SessionError as exc:
        raise SessionError(f"{where}: tensor file {exc}") from None
    try:
        array = _parse_safetensors(data, key, shape)
    except ValueError as exc:
        raise SessionError(f"{where}: {path} is not a valid tensor file ({exc})") from None
    if finite and not np.isfinite(array).all():
        raise SessionError(f"{where}: {path} holds values that are not finite")
    return array


def _parse_safetensors(data: bytes, key: str, shape: list[int]) -> np.ndarray:
    """Decode a one-tensor safetensors file by hand: the header is checked before any data is used."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > MAX_TENSOR_HEADER or 8 + header_size > len(data):
        raise ValueError(f"header size {header_size} does not fit the file")
    try:
        header = loads(data[8:8 + header_size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    names = [name for name in header if name != "__metadata__"]
    if names != [key]:
        raise ValueError(f"expected one tensor named {key!r}, found {shown(names)}")
    entry = header[key]
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {key!r} has no description")
    dtype = TENSOR_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ValueError(f"tensor {key!r} has dtype {shown(entry.get('dtype'))}; expected F32, F16 or F64")
    if entry.get("shape") != list(shape):
        raise ValueError(f"tensor {key!r} has shape {shown(entry.get('shape'))}, the event says {list(shape)}")
    offsets = entry.get("data_offsets")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    size = count * np.dtype(dtype).itemsize
    start = 8 + header_size
    if offsets != [0, size] or start + size != len(data):
        raise ValueError(f"data offsets {shown(offsets)} do not match {size} bytes of data")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
    return array.astype(np.float32)
