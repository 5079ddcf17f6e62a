"""Models split by accelerate (CPU and disk offload, its hooks in the path) give the single-device outcomes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mechscope.engine import Engine, Metric, Views
from mechscope.engine.errors import LoadError
from mechscope.engine.hooks import count_hooks
from mechscope.engine.placement import (
    execution_device,
    parse_device_map,
    parse_max_memory,
    placement_summary,
    to_device,
)
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer
from tests.engine.test_interventions import CORRUPT, OTHER, PROMPT, REFERENCE_SET, random_stack

TOL = 1e-5
IOI = Metric("logit_diff", target=" Mary", foil=" John")
ALL_VIEWS = Views(attention=("L0.H1", "L2.H3"), sinks=True, logit_lens=True, attribution=True,
                  stats=True, logprobs=True)


def _save(folder: Path, family: str) -> Path:
    tiny_model(family).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _prepare(engine: Engine) -> Engine:
    engine.set_reference_prompts(list(REFERENCE_SET))
    rng = np.random.default_rng(7)
    for name in ("up", "down"):
        engine.add_vector(name, rng.normal(0, 0.5, engine.info.d_model))
    return engine


def _first_layer_on_cpu(engine: Engine) -> dict[str, str]:
    """A device map with the input embedding and layer 0 on the CPU and everything else on disk, so
    accelerate's offload hooks load every other module's weights at its forward."""
    layers_path, n_layers = engine.adapter.family.layers, engine.adapter.n_layers
    parts = layers_path.split(".")
    device_map = {}
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        for name, _ in engine.model.get_submodule(parent).named_children():
            full = f"{parent}.{name}" if parent else name
            if full != ".".join(parts[: depth + 1]):
                device_map[full] = "disk"
    embedding = engine.model.get_input_embeddings()
    embed_name = next(name for name, module in engine.model.named_modules() if module is embedding)
    device_map[embed_name] = "cpu"
    unembed = engine.model.get_output_embeddings()
    if unembed.weight is embedding.weight:  # tied: accelerate keeps one copy, where the embedding is
        device_map[next(n for n, m in engine.model.named_modules() if m is unembed)] = "cpu"
    for index in range(n_layers):
        device_map[f"{layers_path}.{index}"] = "cpu" if index == 0 else "disk"
    return device_map


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory) -> tuple[Engine, Engine]:
    """(single-device engine, engine whose first layer is on the CPU and the rest on disk)."""
    family = request.param
    folder = _save(tmp_path_factory.mktemp(f"tiny-{family}"), family)
    single = Engine.load(str(folder), device="cpu")
    device_map = _first_layer_on_cpu(single)
    map_file = folder.parent / f"{family}-map.json"
    map_file.write_text(json.dumps(device_map))
    split = Engine.load(str(folder), device="cpu", device_map=str(map_file),
                        offload_folder=str(folder.parent / f"{family}-offload"))
    return _prepare(single), _prepare(split)


def test_layers_are_really_offloaded(pair):
    single, split = pair
    assert split.info.placement == "cpu L0 · disk L1–2", split.info.placement
    assert single.info.placement == "cpu L0–2"
    assert split.device == torch.device("cpu")
    offloaded = [n for n, p in split.model.named_parameters() if p.device.type == "meta"]
    assert offloaded and any(hasattr(m, "_hf_hook") for m in split.model.modules())


def _assert_same(a, b, path: str = "result") -> None:
    """Every field of two results equal (floats within TOL), recursing through dataclasses."""
    if hasattr(a, "__dataclass_fields__"):
        for name in a.__dataclass_fields__:
            if name in ("compute", "seconds"):
                continue
            _assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL, err_msg=path)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{index}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=TOL, rel=TOL), path
    else:
        assert a == b, path


def test_random_stacks_and_every_view_equal_the_single_device_engine(pair):
    single, split = pair
    info = single.adapter
    rng = random.Random(f"placement-{single.info.family}")
    n_pos = len(single.tokenize(PROMPT)[0])
    for _ in range(6):
        stack = random_stack(rng, info.n_layers, info.n_heads, info.d_mlp, n_pos)
        expected = single.run(PROMPT, stack, views=ALL_VIEWS, metric=IOI, corrupted=CORRUPT)
        got = split.run(PROMPT, stack, views=ALL_VIEWS, metric=IOI, corrupted=CORRUPT)
        _assert_same(expected, got)
    assert count_hooks(split.model) == count_hooks(single.model) == 0


@pytest.mark.parametrize("kind", ["head", "resid", "atp"])
def test_sweeps_equal_the_single_device_engine(pair, kind):
    single, split = pair
    expected = single.sweep(kind, PROMPT, CORRUPT, IOI)
    got = split.sweep(kind, PROMPT, CORRUPT, IOI)
    _assert_same(expected, got)


def test_generation_equals_the_single_device_engine(pair):
    single, split = pair
    info = single.adapter
    rng = random.Random(f"generate-{single.info.family}")
    stack = random_stack(rng, info.n_layers, info.n_heads, info.d_mlp, len(single.tokenize(PROMPT)[0]))
    for temperature in (0.0, 0.8):
        expected = single.generate(PROMPT, stack, max_new_tokens=5, temperature=temperature, seed=3,
                                   corrupted=CORRUPT)
        got = split.generate(PROMPT, stack, max_new_tokens=5, temperature=temperature, seed=3,
                             corrupted=CORRUPT)
        assert [t.id for t in got] == [t.id for t in expected]
        np.testing.assert_allclose([t.prob for t in got], [t.prob for t in expected], atol=TOL)


@pytest.mark.parametrize(("strategy", "budget", "placement"), [
    ("auto", "140KB", "cpu L0 · disk L1–2"), ("sequential", "180KB", "cpu L0–1 · disk L2"),
    ("auto", "100KB", "disk L0–2")])
def test_strategy_with_a_memory_budget_offloads_to_disk(tmp_path, strategy, budget, placement):
    folder = _save(tmp_path / "tiny", "llama")
    single = Engine.load(str(folder), device="cpu")
    split = Engine.load(str(folder), device="cpu", device_map=strategy, max_memory={"cpu": budget},
                        offload_folder=str(tmp_path / "offload"))
    assert split.info.placement == placement
    views = Views(logit_lens=True, attribution=True, logprobs=True, sinks=True)
    _assert_same(single.run(PROMPT, views=views, metric=IOI), split.run(PROMPT, views=views, metric=IOI))
    _assert_same(single.sweep("head", PROMPT, CORRUPT, IOI), split.sweep("head", PROMPT, CORRUPT, IOI))


def test_session_records_the_placement_and_replays_on_another(pair):
    from mechscope.sessions import Session
    from mechscope.sessions.replaying import replay
    from tests.sessions.helpers import record_ioi_session

    single, split = pair
    session = record_ioi_session(split)
    manifest = json.loads((session.path / "session.json").read_text())
    assert manifest["model"]["placement"] == split.info.placement == "cpu L0 · disk L1–2"
    steps = replay(Session.open(session.path), single)
    assert steps and all(step.matches for step in steps), [s.detail for s in steps if not s.matches]


# ---------------------------------------------------------------- the pieces

def test_placement_summary_groups_runs_of_layers():
    model = tiny_model("llama")
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1,
                           "model.layers.2": "disk", "model.norm": 1, "lm_head": 1}
    assert placement_summary(model, "model.layers", 3) == "cuda:0 L0 · cuda:1 L1 · disk L2"
    model.hf_device_map = {"": "cpu"}
    assert placement_summary(model, "model.layers", 3) == "cpu L0–2"
    model.hf_device_map = {"model.layers": "disk", "model.embed_tokens": "cpu"}
    assert placement_summary(model, "model.layers", 3) == "disk L0–2"


def test_execution_device_and_to_device():
    model = tiny_model("gpt2")
    assert execution_device(model) == torch.device("cpu")
    tree = {"a": (torch.zeros(1), [torch.ones(1), 3]), "b": None}
    moved = to_device(tree, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == 3 and moved["b"] is None


def test_device_map_and_max_memory_arguments(tmp_path):
    assert parse_device_map(None) is None and parse_device_map("balanced") == "balanced"
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}))
    assert parse_device_map(str(path)) == {"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}
    assert parse_max_memory("0=20GiB, cpu=1GB") == {0: 20 * 2**30, "cpu": 10**9}
    assert parse_max_memory({"cuda:1": 5}) == {1: 5}
    for bad, phrase in [("fastest", "unknown device map"), (str(tmp_path / "missing.json"), "cannot read"),
                        ({"lm_head": "tpu"}, "is not a device")]:
        with pytest.raises(LoadError, match=phrase):
            parse_device_map(bad)
    path.write_text("[1, 2]")
    with pytest.raises(LoadError, match="must be a JSON object"):
        parse_device_map(str(path))
    for bad, phrase in [("0:20GiB", "should look like"), ("cpu=lots", "is not a size"), ({}, "map devices")]:
        with pytest.raises(LoadError, match=phrase):
            parse_max_memory(bad)


def test_bad_device_map_is_a_one_line_load_error(tmp_path):
    folder = _save(tmp_path / "tiny", "gpt2")  # GPT-2 ties its unembedding to the embedding
    engine = Engine.load(str(folder), device="cpu")
    good = _first_layer_on_cpu(engine)
    for device_map, phrase in [({"transformer.nope": "cpu"}, "not a module"),
                               ({k: v for k, v in good.items() if k != "lm_head"}, "does not fit"),
                               ({**good, "lm_head": "disk"}, "one tied weight")]:
        with pytest.raises(LoadError, match=phrase) as error:
            Engine.load(str(folder), device="cpu", device_map=device_map)
        assert "\n" not in str(error.value)


@pytest.mark.demo
def test_demo_offloaded_equals_the_single_device_demo(demo_engine, demo_model_folder, tmp_path):
    layers = demo_engine.adapter.family.layers
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "disk",
                  "lm_head": "cpu"}  # tied to the embedding
    for index in range(demo_engine.adapter.n_layers):
        device_map[f"{layers}.{index}"] = "cpu" if index < 15 else "disk"
    split = _prepare(Engine.load(str(demo_model_folder), device="cpu", device_map=device_map,
                                 offload_folder=str(tmp_path / "offload")))
    assert split.info.placement == "cpu L0–14 · disk L15–29"
    single = _prepare(demo_engine)
    prompt = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    views = Views(attention=("L9.H3",), sinks=True, logit_lens=True, attribution=True, stats=True,
                  logprobs=True)
    rng = random.Random("demo-placement")
    n_pos = len(single.tokenize(prompt)[0])
    for _ in range(3):
        stack = [iv for iv in random_stack(rng, 30, 9, 1536, n_pos)
                 if type(iv).__name__ != "ActivationPatch" or iv.source_prompt != OTHER]
        _assert_same(single.run(prompt, stack, views=views, metric=IOI, corrupted=corrupt),
                     split.run(prompt, stack, views=views, metric=IOI, corrupted=corrupt))
    _assert_same(single.sweep("head", prompt, corrupt, IOI), split.sweep("head", prompt, corrupt, IOI))
    expected = single.generate(prompt, max_new_tokens=4)
    assert [t.id for t in split.generate(prompt, max_new_tokens=4)] == [t.id for t in expected]
