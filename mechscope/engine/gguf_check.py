"""Validate a GGUF file's header against its own size and its declared model, in bounded memory."""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mechscope.engine.errors import LoadError

# Value types of the GGUF key/value section (gguf.GGUFValueType), with the byte size of scalars.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Real files nest at most one level (arrays of strings); anything deeper is hostile or broken.
MAX_ARRAY_DEPTH = 3
MAX_KEY_BYTES = 1 << 16
# Strings kept in the parsed metadata; longer ones (chat templates) are skipped, only their length checked.
MAX_KEPT_STRING = 1 << 16
# Arrays of scalars kept (per-layer values); tokenizer tables are only checked, never held.
MAX_KEPT_ARRAY = 4096
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_BLOCK_COUNT = 4096
MAX_WIDTH = 1 << 20
DEFAULT_ALIGNMENT = 32
# The smallest encodings, used to bound declared counts by the bytes left in the file.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
# `general.architecture` -> transformers model_type where they differ.
GGUF_TO_MODEL_TYPE = {"gptneox": "gpt_neox", "gemma3": "gemma3_text"}


@dataclass(frozen=True)
class ArrayInfo:
    """An array value that was checked but not kept (a tokenizer table)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the fastest-varying (row length)
    ggml_type: int
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int


@dataclass
class GGUFHeader:
    """What a GGUF file declares, every size checked against the file."""

    path: Path
    version: int
    file_size: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def model_type(self) -> str:
        return GGUF_TO_MODEL_TYPE.get(self.architecture, self.architecture)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")


class _Bad(Exception):
    """A malformed header; becomes a one-line LoadError naming the file."""


class _Reader:
    """Reads a file front to back, never asking for more bytes than remain in it."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size
        self.pos = 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise _Bad(f"the file ends inside {what} (needs {n} bytes at offset {self.pos}, "
                       f"{self.left} left)")
        data = self.handle.read(n)
        if len(data) != n:
            raise _Bad(f"the file ends inside {what} (it shrank while being read)")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.left:
            raise _Bad(f"{what} declares {n} bytes at offset {self.pos}; only {self.left} are left")
        self.handle.seek(n, io.SEEK_CUR)
        self.pos += n

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str, keep_limit: int) -> str | None:
        """A length-prefixed string: decoded when it fits `keep_limit`, else skipped (None)."""
        length = self.u64(f"the length of {what}")
        if length > self.left:
            raise _Bad(f"{what} declares {length} bytes; only {self.left} are left in the file")
        if length > keep_limit:
            self.skip(length, what)
            return None
        try:
            return self.take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} is not UTF-8") from None


def _value(reader: _Reader, value_type: int, what: str, depth: int) -> Any:
    if value_type in _SCALAR_FORMATS:
        return reader.scalar(_SCALAR_FORMATS[value_type], what)
    if value_type == _STRING:
        return reader.string(what, MAX_KEPT_STRING)
    if value_type != _ARRAY:
        raise _Bad(f"{what} has unknown value type {value_type}")
    if depth >= MAX_ARRAY_DEPTH:
        raise _Bad(f"{what} nests arrays more than {MAX_ARRAY_DEPTH} deep")
    item_type = reader.u32(f"the item type of {what}")
    count = reader.u64(f"the length of {what}")
    item_min = struct.calcsize(_SCALAR_FORMATS[item_type]) if item_type in _SCALAR_FORMATS else (
        8 if item_type == _STRING else 12 if item_type == _ARRAY else 0)
    if item_min == 0:
        raise _Bad(f"{what} has unknown item type {item_type}")
    if count * item_min > reader.left:
        raise _Bad(f"{what} declares {count} items; the {reader.left} bytes left hold at most "
                   f"{reader.left // item_min}")
    if item_type in _SCALAR_FORMATS:
        if count <= MAX_KEPT_ARRAY:
            fmt = _SCALAR_FORMATS[item_type]
            data = reader.take(count * item_min, what)
            return tuple(struct.unpack(f"<{count}{fmt[1]}", data))
        reader.skip(count * item_min, what)
        return ArrayInfo(item_type, count)
    if item_type == _STRING:
        for _ in range(count):  # each item's length is checked against the bytes left
            reader.string(what, -1)
        return ArrayInfo(item_type, count)
    for _ in range(count):
        _value(reader, item_type, what, depth + 1)
    return ArrayInfo(item_type, count)


def _quant_sizes() -> dict[int, tuple[int, int]]:
    """ggml type -> (elements per block, bytes per block), from the gguf package."""
    import gguf

    return {int(kind): (int(block), int(size)) for kind, (block, size) in gguf.GGML_QUANT_SIZES.items()}


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse and check a GGUF header: every count, length and tensor extent against the file size.

    Memory stays bounded by the kept limits above whatever the file declares. Raises LoadError."""
    try:
        size = path.stat().st_size
        with open(path, "rb", buffering=1 << 16) as handle:
            return _parse(_Reader(handle, size), path)
    except _Bad as error:
        raise LoadError(f"{path} is not a readable GGUF file: {error}") from None
    except OSError as error:
        raise LoadError(f"cannot read {path}: {error.strerror or error}") from None


def _parse(reader: _Reader, path: Path) -> GGUFHeader:
    if reader.size < 4 or reader.take(4, "the magic bytes") != b"GGUF":
        raise _Bad("it does not start with the GGUF magic bytes")
    version = reader.u32("the version")
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors = reader.u64("the tensor count")
    n_kv = reader.u64("the metadata count")
    if n_kv > reader.left // _MIN_KV_BYTES:
        raise _Bad(f"it declares {n_kv} metadata entries; the file has room for at most "
                   f"{reader.left // _MIN_KV_BYTES}")
    if n_tensors > reader.left // _MIN_TENSOR_INFO_BYTES:
        raise _Bad(f"it declares {n_tensors} tensors; the file has room for at most "
                   f"{reader.left // _MIN_TENSOR_INFO_BYTES}")
    metadata: dict[str, Any] = {}
    for index in range(n_kv):
        key = reader.string(f"metadata key {index}", MAX_KEY_BYTES)
        if key is None:
            raise _Bad(f"metadata key {index} is longer than {MAX_KEY_BYTES} bytes")
        value_type = reader.u32(f"the type of {key!r}")
        metadata[key] = _value(reader, value_type, repr(key), 0)
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise _Bad("its header has no general.architecture")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 16:
        raise _Bad(f"general.alignment {alignment!r} is not a power of two up to 65536")
    sizes = _quant_sizes()
    infos = []
    for index in range(n_tensors):
        name = reader.string(f"tensor name {index}", MAX_KEY_BYTES)
        if name is None:
            raise _Bad(f"tensor name {index} is longer than {MAX_KEY_BYTES} bytes")
        n_dims = reader.u32(f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= MAX_TENSOR_DIMS:
            raise _Bad(f"tensor {name!r} has rank {n_dims} (1..{MAX_TENSOR_DIMS})")
        shape = tuple(reader.u64(f"the shape of tensor {name!r}") for _ in range(n_dims))
        ggml_type = reader.u32(f"the type of tensor {name!r}")
        offset = reader.u64(f"the offset of tensor {name!r}")
        infos.append((name, shape, ggml_type, offset))
    data_offset = -(-reader.pos // alignment) * alignment
    tensors = []
    seen: set[str] = set()
    for name, shape, ggml_type, offset in infos:
        if name in seen:
            raise _Bad(f"tensor {name!r} appears twice")
        seen.add(name)
        if ggml_type not in sizes:
            raise _Bad(f"tensor {name!r} has unknown ggml type {ggml_type}")
        block, block_bytes = sizes[ggml_type]
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        if n_elements == 0 or shape[0] % block:
            raise _Bad(f"tensor {name!r} has shape {list(shape)}, invalid for its ggml type {ggml_type}")
        n_bytes = n_elements // block * block_bytes
        if offset % alignment:
            raise _Bad(f"tensor {name!r} starts at {offset}, not a multiple of the alignment {alignment}")
        end = data_offset + offset + n_bytes
        if end > reader.size:
            raise _Bad(f"tensor {name!r} ({n_bytes} bytes at {data_offset + offset}) ends past the end "
                       f"of the file ({reader.size} bytes)")
        tensors.append(TensorInfo(name, shape, ggml_type, offset, n_elements, n_bytes))
    return GGUFHeader(path=path, version=version, file_size=reader.size, metadata=metadata,
                      tensors=tensors, data_offset=data_offset)


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _positive_int(header: GGUFHeader, key: str, limit: int) -> int:
    value = header.arch_value(key)
    full = f"{header.architecture}.{key}"
    if value is None:
        raise _Bad(f"its header has no {full}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _Bad(f"{full} = {value!r} is not an integer in 1..{limit}")
    return value


def check_declared_model(header: GGUFHeader) -> None:
    """The tensors must describe the model the metadata declares: enough blocks, an embedding of
    the declared width, and (via transformers' config) no more parameters than the file holds."""
    if not header.tensors:
        raise _Bad("it holds no tensors")
    n_blocks = _positive_int(header, "block_count", MAX_BLOCK_COUNT)
    width = _positive_int(header, "embedding_length", MAX_WIDTH)
    if not isinstance(header.arch_value("attention.head_count"), tuple):  # per-layer counts are a tuple
        _positive_int(header, "attention.head_count", MAX_WIDTH)
    found = {int(m.group(1)) for t in header.tensors if (m := _BLOCK.match(t.name))}
    missing = sorted(set(range(n_blocks)) - found)
    if missing:
        raise _Bad(f"{header.architecture}.block_count is {n_blocks} but the file has no tensors for "
                   f"block {missing[0]}")
    extra = sorted(found - set(range(n_blocks)))
    if extra:
        raise _Bad(f"tensors for block {extra[0]} exceed {header.architecture}.block_count = {n_blocks}")
    embed = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise _Bad("it has no token_embd.weight tensor")
    if len(embed.shape) != 2 or embed.shape[0] != width:
        raise _Bad(f"token_embd.weight has shape {list(embed.shape)}; "
                   f"{header.architecture}.embedding_length is {width}")


def expected_parameters(header: GGUFHeader) -> int | None:
    """Parameters of the transformers model the header's config builds (on the meta device, so
    nothing is allocated), or None where transformers has no GGUF mapping for the architecture."""
    try:
        config = gguf_config(header)
    except LoadError:
        return None
    if config is None:
        return None
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def gguf_config(header: GGUFHeader):
    """A transformers config from the header's metadata alone (no tokenizer parse), or None where
    transformers has no GGUF mapping for the architecture."""
    import transformers
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    arch = header.architecture
    mapping = GGUF_CONFIG_MAPPING.get(arch) or GGUF_CONFIG_MAPPING.get(header.model_type)
    if mapping is None:
        return None
    values: dict[str, Any] = {}
    for gguf_key, config_key in mapping.items():
        value = header.arch_value(gguf_key)
        if config_key in (None, -1) or value is None or isinstance(value, ArrayInfo):
            continue
        values[config_key] = value
    if "vocab_size" not in values:
        tokens = header.metadata.get("tokenizer.ggml.tokens")
        embed = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
        if isinstance(tokens, (ArrayInfo, tuple)):
            values["vocab_size"] = tokens.count if isinstance(tokens, ArrayInfo) else len(tokens)
        elif embed is not None and len(embed.shape) == 2:
            values["vocab_size"] = embed.shape[1]
    values["tie_word_embeddings"] = all(t.name != "output.weight" for t in header.tensors)
    try:
        return transformers.AutoConfig.for_model(header.model_type, **values)
    except (ValueError, TypeError, KeyError) as error:
        raise LoadError(f"{header.path}: its metadata gives no valid {header.model_type} config: "
                        f"{str(error).splitlines()[0][:200]}") from None


def check_gguf(path: Path) -> GGUFHeader:
    """Refuse a GGUF whose header is malformed or does not describe the model it declares; one-line
    LoadError, bounded memory. Runs before any de-quantisation."""
    header = read_gguf_header(path)
    check_gguf_model(header)
    return header


def check_gguf_model(header: GGUFHeader) -> None:
    """The model checks of `check_gguf` on a header already read."""
    path = header.path
    try:
        check_declared_model(header)
    except _Bad as error:
        raise LoadError(f"{path} is not a readable GGUF file: {error}") from None
    expected = expected_parameters(header)
    # Tied embeddings, rope tables and similar extras differ by far less than this slack.
    if expected is not None and expected > header.n_elements * 1.05 + 4096:
        raise LoadError(
            f"{path} is not a readable GGUF file: its config declares a model of {expected:,} parameters "
            f"but the file holds {header.n_elements:,} values")


__all__ = ["ArrayInfo", "GGUFHeader", "TensorInfo", "check_gguf", "check_gguf_model", "expected_parameters",
           "gguf_config", "read_gguf_header"]
