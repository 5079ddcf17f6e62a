"""`mechscope plan`: memory per device from the config alone, checked against the loaded model."""

from __future__ import annotations

import json

import pytest

from mechscope.cli import main
from mechscope.engine import Engine
from mechscope.engine.errors import LoadError
from mechscope.engine.gguf_check import read_gguf_header
from mechscope.engine.plan import plan
from tests.engine.test_loading import write_tiny_llama_gguf
from tests.engine.test_placement import _save


@pytest.fixture()
def folder(tmp_path):
    return _save(tmp_path / "tiny", "llama")


def test_single_device_weights_equal_the_loaded_model(folder):
    result = plan(str(folder), device="cpu", prompt_tokens=14)
    engine = Engine.load(str(folder), device="cpu")
    tensors = [*engine.model.parameters(), *engine.model.buffers()]
    real = sum(t.numel() * t.element_size() for t in tensors)
    assert [d.device for d in result.devices] == ["cpu"]
    cpu = result.devices[0]
    assert cpu.weights == real and cpu.layers == [0, 1, 2] and result.fits
    assert result.parameters == sum(p.numel() for p in engine.model.parameters())
    # the clean-pass estimate covers what the engine really caches for a prompt of that length
    engine.run("When Mary and John went to the store, John gave a drink to")
    clean = engine.passes.clean_cache.values()[0]
    cached = sum(call.hidden.numel() * call.hidden.element_size() for call in clean.calls)
    assert 8 * cached <= cpu.caches


def test_a_budget_offloads_and_matches_what_loading_does(folder, tmp_path):
    result = plan(str(folder), device_map="sequential", max_memory="cpu=180KB")
    assert result.placement == "cpu L0–1 · disk L2"
    loaded = Engine.load(str(folder), device="cpu", device_map="sequential", max_memory="cpu=180KB",
                         offload_folder=str(tmp_path / "offload"))
    assert loaded.info.placement == result.placement
    disk = next(d for d in result.devices if d.device == "disk")
    assert disk.weights > 0 and disk.budget is None and disk.caches == 0
    assert not next(d for d in result.devices if d.device == "cpu").fits  # caches exceed 180KB


def test_dtype_halves_the_weights(folder):
    full = plan(str(folder), device="cpu", dtype="float32").devices[0]
    half = plan(str(folder), device="cpu", dtype="bfloat16").devices[0]
    assert abs(half.weights * 2 - full.weights) <= 64  # the rotary table stays float32


def test_gguf_plan_reads_only_the_header(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(path)
    result = plan(str(path), device="cpu", dtype="float32")
    assert result.n_layers == 2 and result.parameters == read_gguf_header(path).n_elements
    assert not any((tmp_path / "cache").glob("models/*"))


def test_a_hand_written_map_is_checked(folder, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"model.nope": "cpu"}))
    with pytest.raises(LoadError, match="does not fit the model|not a module"):
        plan(str(folder), device_map=str(bad))


def test_cli_plan(folder, tmp_path, capsys):
    assert main(["plan", "--model", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "cpu L0–2" in out and "fits" in out
    assert main(["plan", "--model", str(folder), "--device-map", "sequential",
                 "--max-memory", "cpu=100KB"]) == 1
    assert "does not fit" in capsys.readouterr().out
    assert main(["plan", "--model", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["plan", "--model", str(folder), "--max-memory", "cpu:1GB"]) == 2
    assert "should look like" in capsys.readouterr().err


def test_cli_loads_with_a_device_map(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_QUIET", "1")
    assert main(["inspect", "--model", str(folder), "--device", "cpu", "--device-map", "sequential",
                 "--max-memory", "cpu=180KB", "--heads", "2"]) == 0
    assert "top-10 next tokens" in capsys.readouterr().out
