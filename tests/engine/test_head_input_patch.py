"""Query / key / value patching of one head against hand-written projection hooks on every family."""

from __future__ import annotations

import pytest
import torch

from mechscope.engine.errors import InterventionError
from mechscope.engine.interventions import HeadInputPatch, Place
from mechscope.engine.metric import Metric
from mechscope.engine.testing import FAMILIES, tiny_engine

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")
LAYER, HEAD = 1, 3


def _projections(engine, layer: int):
    """(module, slicer) pairs: slicer(out, which, head) -> a view [batch, pos, d_head] of `out`, the
    projection's output holding that head's query / key / value before rotary embedding."""
    a = engine.adapter
    attn = a.layer_module(layer, "attn")
    d_head, n_heads, n_kv = a.d_head, a.n_heads, a.n_kv_heads
    family = engine.model.config.model_type

    def head_slice(out, offset, head):
        return out[..., offset + head * d_head: offset + (head + 1) * d_head]

    if family == "gpt2":
        width = n_heads * d_head
        return {w: (attn.c_attn, lambda out, h, i=i: head_slice(out, i * width, h)) for i, w in enumerate("qkv")}
    if family == "gpt_neox":
        def neox(out, h, i):
            return out.view(*out.shape[:-1], n_heads, 3 * d_head)[..., h, i * d_head:(i + 1) * d_head]

        return {w: (attn.query_key_value, lambda out, h, i=i: neox(out, h, i)) for i, w in enumerate("qkv")}
    if family == "phi3":
        offsets = {"q": 0, "k": n_heads * d_head, "v": (n_heads + n_kv) * d_head}
        return {w: (attn.qkv_proj, lambda out, h, o=offsets[w]: head_slice(out, o, h)) for w in "qkv"}
    return {w: (getattr(attn, f"{w}_proj"), lambda out, h: head_slice(out, 0, h)) for w in "qkv"}


def _hand_patched_metric(engine, which: str) -> float:
    """The metric on CLEAN with HEAD's projections `which` (a subset of "qkv") copied from CORRUPT,
    written with plain forward hooks on the projection modules (k / v: the KV head HEAD reads)."""
    a = engine.adapter
    group = a.n_heads // a.n_kv_heads
    projections = _projections(engine, LAYER)
    tok = engine.tokenizer
    stored: dict[str, torch.Tensor] = {}

    def head_of(w: str) -> int:
        return HEAD if w == "q" else HEAD // group

    def keep(w):
        def hook(module, args, out):
            stored[w] = projections[w][1](out, head_of(w)).clone()

        return hook

    def put(w):
        def hook(module, args, out):
            out = out.clone()
            projections[w][1](out, head_of(w))[...] = stored[w]
            return out

        return hook

    model = engine.model
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            handles = [projections[w][0].register_forward_hook(keep(w)) for w in which]
            model(torch.tensor([tok(CORRUPT).input_ids]))
            for h in handles:
                h.remove()
            handles = [projections[w][0].register_forward_hook(put(w)) for w in which]
            logits = model(torch.tensor([tok(CLEAN).input_ids])).logits[0, -1]
            for h in handles:
                h.remove()
    finally:
        model.set_attn_implementation("mechscope")
    target, foil = tok(" Mary").input_ids[0], tok(" John").input_ids[0]
    return float(logits[target] - logits[foil])


@pytest.mark.parametrize("family", FAMILIES)
def test_qkv_patches_equal_hand_written_projection_patches(family):
    engine = tiny_engine(family)
    for which in ("q", "k", "v", "qkv"):
        patches = [HeadInputPatch(LAYER, HEAD, w, CORRUPT) for w in which]
        got = engine.run(CLEAN, patches, metric=METRIC).prediction.metric
        assert got == pytest.approx(_hand_patched_metric(engine, which), abs=1e-4), which


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_from_the_same_prompt_changes_nothing(family):
    engine = tiny_engine(family)
    patches = [HeadInputPatch(LAYER, HEAD, w, CLEAN) for w in "qkv"]
    result = engine.run(CLEAN, patches, metric=METRIC)
    assert result.prediction.metric == pytest.approx(result.baseline.metric, abs=1e-5)


def test_patching_changes_the_metric_and_positions_select():
    engine = tiny_engine("llama")
    base = engine.run(CLEAN, metric=METRIC).prediction.metric
    full = engine.run(CLEAN, [HeadInputPatch(LAYER, HEAD, "v", CORRUPT)], metric=METRIC).prediction.metric
    assert abs(full - base) > 1e-4
    # the prompts first differ at "Mary"/"John" after ", ": patching positions before it changes nothing
    first = [a != b for a, b in zip(engine.tokenize(CLEAN)[0], engine.tokenize(CORRUPT)[0])].index(True)
    early = HeadInputPatch(LAYER, HEAD, "v", CORRUPT, positions=tuple(range(first)))
    assert engine.run(CLEAN, [early], metric=METRIC).prediction.metric == pytest.approx(base, abs=1e-5)


def test_gqa_label_names_the_shared_kv_head():
    place = Place(layer=5, head=4, clean=CLEAN, kv_group=3)
    patch = HeadInputPatch.example(place)
    assert patch.label == "patch L5.H4 query"
    key = HeadInputPatch(5, 4, "k", CORRUPT, group=3)
    assert key.label == "patch L5.H4 key (KV head 1, shared by H3-H5)"
    assert HeadInputPatch(5, 4, "v", CORRUPT).label == "patch L5.H4 value"


def test_a_group_that_is_not_the_models_is_refused():
    engine = tiny_engine("llama")  # 4 heads, 2 KV heads
    with pytest.raises(InterventionError, match="group 3 is not the model's 2"):
        engine.run(CLEAN, [HeadInputPatch(LAYER, HEAD, "k", CORRUPT, group=3)], metric=METRIC)
    engine.run(CLEAN, [HeadInputPatch(LAYER, HEAD, "k", CORRUPT, group=2)], metric=METRIC)


def test_a_source_of_another_length_needs_positions():
    engine = tiny_engine("llama")
    with pytest.raises(InterventionError, match="give explicit positions"):
        engine.run(CLEAN, [HeadInputPatch(LAYER, HEAD, "q", "Mary went")], metric=METRIC)
