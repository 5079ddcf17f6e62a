"""Hostile GGUF headers are refused with one line, in bounded memory, before any de-quantisation."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mechscope.engine.errors import LoadError
from mechscope.engine.gguf_check import check_gguf, expected_parameters, read_gguf_header
from tests.engine.test_loading import write_tiny_llama_gguf

MEMORY_LIMIT = 2 << 30  # RLIMIT_AS for the subprocess that loads each file
F32 = 0


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv_string(key: str, value: str) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value)


def _kv_u32(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<II", 4, value)


def _gguf(kvs: list[bytes], tensors: list[tuple[str, tuple[int, ...], int, int]] = (),
          data: bytes = b"", n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
    """A GGUF v3 file from raw key/value records and tensor infos (name, shape, type, offset)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs)
    for name, shape, kind, offset in tensors:
        body += _string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        body += struct.pack("<IQ", kind, offset)
    body += b"\0" * (-len(body) % 32)
    return body + data


def _llama_kvs(blocks: int = 1, width: int = 8, ffn: int = 16) -> list[bytes]:
    return [_kv_string("general.architecture", "llama"), _kv_u32("llama.block_count", blocks),
            _kv_u32("llama.embedding_length", width), _kv_u32("llama.attention.head_count", 2),
            _kv_u32("llama.feed_forward_length", ffn), _kv_u32("llama.vocab_size", 16)]


def _nested_arrays(depth: int) -> bytes:
    inner = struct.pack("<IQ", 0, 1) + b"\0"  # an array of one uint8
    for _ in range(depth):
        inner = struct.pack("<IQ", 9, 1) + inner
    return _string("x") + struct.pack("<I", 9) + inner


def _hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the error must contain)."""
    cases: dict[str, tuple[bytes, str]] = {
        # the 69-byte file: architecture llama, no tensors, no sizes
        "no_tensors_69_bytes": (
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _kv_string("general.architecture", "llama"),
            "holds no tensors"),
        "nested_5000": (_gguf([_nested_arrays(5000), _kv_string("general.architecture", "llama")]),
                        "nests arrays"),
        "huge_tensor_count": (_gguf([_kv_string("general.architecture", "llama")], n_tensors=2**62),
                              "4611686018427387904 tensors"),
        "huge_kv_count": (_gguf([_kv_string("general.architecture", "llama")], n_kv=2**40),
                          "1099511627776 metadata entries"),
        "huge_array": (_gguf([_kv_string("general.architecture", "llama"),
                              _string("t") + struct.pack("<IIQ", 9, 8, 2**60)]), "items"),
        "huge_string": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("general.architecture")
                        + struct.pack("<IQ", 8, 2**62), "bytes"),
        "bad_magic": (b"GGUX" + b"\0" * 60, "magic"),
        "bad_version": (b"GGUF" + struct.pack("<IQQ", 99, 0, 0), "version 99"),
        "offset_past_eof": (_gguf(_llama_kvs(), [("token_embd.weight", (8, 16), F32, 2**40),
                                                 ("blk.0.attn_norm.weight", (8,), F32, 0)],
                                  b"\0" * 64), "ends past the end of the file"),
        "unknown_tensor_type": (_gguf(_llama_kvs(), [("token_embd.weight", (8, 16), 9999, 0)]),
                                "unknown ggml type"),
        "rank_5": (_gguf(_llama_kvs(), [("token_embd.weight", (1, 1, 1, 1, 8), F32, 0)], b"\0" * 32),
                   "rank 5"),
        "missing_blocks": (_gguf(_llama_kvs(blocks=30), [("token_embd.weight", (8, 16), F32, 0),
                                                         ("blk.0.attn_norm.weight", (8,), F32, 512)],
                                 b"\0" * 544), "no tensors for block 1"),
        "no_sizes": (_gguf([_kv_string("general.architecture", "llama")],
                           [("token_embd.weight", (8, 16), F32, 0)], b"\0" * 512), "block_count"),
        # every size is plausible, but the config declares a 40M-parameter MLP the file does not hold
        "config_bigger_than_tensors": (
            _gguf(_llama_kvs(ffn=10**6), [("token_embd.weight", (8, 16), F32, 0),
                                          ("blk.0.attn_norm.weight", (8,), F32, 512)], b"\0" * 544),
            "parameters but the file holds"),
    }
    out = {}
    for name, (data, phrase) in cases.items():
        path = folder / f"{name}.gguf"
        path.write_bytes(data)
        out[name] = (path, phrase)
    real = folder / "real.gguf"
    write_tiny_llama_gguf(real)
    size = real.stat().st_size
    header_end = read_gguf_header(real).data_offset
    for name, cut, phrase in (("truncated_in_header", header_end // 2, "left"),
                              ("truncated_in_data", size - 100, "ends past the end of the file")):
        path = folder / f"{name}.gguf"
        path.write_bytes(real.read_bytes()[:cut])
        out[name] = (path, phrase)
    return out


_LOADER = """
import json, resource, sys, time

def peak_kib():
    # VmHWM: this process's own peak (ru_maxrss keeps the forking pytest process's peak)
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmHWM")).split()[1])

resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2)
from mechscope.engine.errors import MechscopeError
from mechscope.engine.loading import load_model
for path in sys.argv[2:]:
    started = time.perf_counter()
    try:
        load_model(path, device="cpu")
        outcome = {"loaded": True}
    except MechscopeError as error:
        outcome = {"type": type(error).__name__, "message": str(error)}
    except BaseException as error:  # what this test exists to rule out
        outcome = {"type": type(error).__name__, "message": str(error)[:500]}
    outcome.update(path=path, seconds=time.perf_counter() - started,
                   peak_mib=peak_kib() / 1024)
    print(json.dumps(outcome), flush=True)
"""


@pytest.fixture(scope="module")
def hostile_outcomes(tmp_path_factory) -> dict[str, tuple[dict, str]]:
    """Load every hostile file (and one good one) in one memory-limited subprocess."""
    folder = tmp_path_factory.mktemp("hostile-gguf")
    files = _hostile_files(folder)
    good = folder / "good.gguf"
    write_tiny_llama_gguf(good)
    env = {**os.environ, "MECHSCOPE_CACHE_DIR": str(folder / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    completed = subprocess.run(
        [sys.executable, "-c", _LOADER, str(MEMORY_LIMIT), *[str(p) for p, _ in files.values()], str(good)],
        capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    outcomes = {Path(o["path"]).stem: o for o in map(json.loads, completed.stdout.splitlines())}
    assert outcomes["good"].get("loaded"), outcomes["good"]
    return {name: (outcomes[name], phrase) for name, (_, phrase) in files.items()}


@pytest.mark.parametrize("name", [
    "no_tensors_69_bytes", "nested_5000", "huge_tensor_count", "huge_kv_count", "huge_array",
    "huge_string", "bad_magic", "bad_version", "offset_past_eof", "unknown_tensor_type", "rank_5",
    "missing_blocks", "no_sizes", "config_bigger_than_tensors", "truncated_in_header",
    "truncated_in_data"])
def test_hostile_gguf_is_refused_in_one_line_under_a_memory_limit(hostile_outcomes, name):
    outcome, phrase = hostile_outcomes[name]
    assert outcome.get("type") == "LoadError", outcome
    message = outcome["message"]
    assert "\n" not in message and "is not a readable GGUF file" in message, message
    assert phrase in message, message
    assert outcome["peak_mib"] < MEMORY_LIMIT / 2**20


def test_sizes_of_a_valid_file_are_read_without_its_data(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(path)
    header = check_gguf(path)
    assert header.architecture == "llama" and header.version == 3
    assert header.arch_value("block_count") == 2
    embed = next(t for t in header.tensors if t.name == "token_embd.weight")
    assert embed.shape == (32, 400) and embed.n_bytes == 32 * 400 * 4
    assert header.data_offset + max(t.offset + t.n_bytes for t in header.tensors) <= path.stat().st_size
    # the config the metadata declares has exactly the file's parameters (lm_head untied)
    assert expected_parameters(header) == header.n_elements


def test_gguf_header_is_checked_before_transformers_reads_it(tmp_path, monkeypatch):
    import transformers

    path = tmp_path / "g69.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _kv_string("general.architecture", "llama"))

    def refuse(*args, **kwargs):
        raise AssertionError("transformers was asked to read a header that should be refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    from mechscope.engine.loading import load_model

    with pytest.raises(LoadError, match="holds no tensors"):
        load_model(str(path))


def test_array_of_scalars_is_kept_only_when_small(tmp_path):
    small = _string("per_layer") + struct.pack("<IIQ", 9, 4, 3) + struct.pack("<3I", 1, 2, 3)
    big = _string("table") + struct.pack("<IIQ", 9, 0, 100_000) + b"\0" * 100_000
    path = tmp_path / "arrays.gguf"
    path.write_bytes(_gguf([_kv_string("general.architecture", "llama"), small, big]))
    header = read_gguf_header(path)
    assert header.metadata["per_layer"] == (1, 2, 3)
    assert header.metadata["table"].count == 100_000


@pytest.mark.demo
def test_demo_gguf_passes_the_checks_and_still_converts(shared_cache_dir, tmp_path, monkeypatch):
    from mechscope.engine import loading, model_cache

    monkeypatch.setenv("MECHSCOPE_CACHE_DIR", str(shared_cache_dir))
    gguf_path = model_cache.demo_gguf_file()
    header = check_gguf(gguf_path)
    assert header.arch_value("block_count") == 30 and len(header.tensors) == 272
    assert expected_parameters(header) == header.n_elements == 134_515_008
    manifest = model_cache.convert_gguf(gguf_path, tmp_path / "demo", "demo")
    assert manifest["weights_digest"] == model_cache.converted_manifest(model_cache.demo_model_dir())["weights_digest"]
    loaded = loading.load_model(str(tmp_path / "demo"), device="cpu")
    assert loaded.model.config.num_hidden_layers == 30
