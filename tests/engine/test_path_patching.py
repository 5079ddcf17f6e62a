"""Path patching and the q / k / v head sweep against activation patching, single runs and a hand-written path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine.interventions import ActivationPatch, HeadAblation, HeadInputPatch
from mechscope.engine.metric import Metric
from mechscope.engine.paths import downstream_receivers
from mechscope.engine.testing import FAMILIES, tiny_engine

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_downstream_receiver_is_activation_patching_and_none_is_zero(family):
    engine = tiny_engine(family)
    for layer, head in ((0, 1), (1, 2)):
        sender = f"L{layer}.H{head}"
        everything = engine.path_patch(sender, downstream_receivers(engine.passes, layer), CLEAN, CORRUPT, METRIC)
        patched = engine.run(CLEAN, [ActivationPatch(sender, CORRUPT)], metric=METRIC).prediction.metric
        assert everything.patched_metric == pytest.approx(patched, abs=1e-5)
        assert abs(everything.effect) > 1e-4  # the sender matters, so the comparison says something
        nothing = engine.path_patch(sender, (), CLEAN, CORRUPT, METRIC)
        assert nothing.patched_metric == nothing.base_metric
        source = engine.run(CORRUPT, metric=METRIC).prediction.metric
        assert everything.source_metric == pytest.approx(source, abs=1e-5)
        assert everything.base_metric == pytest.approx(engine.run(CLEAN, metric=METRIC).prediction.metric,
                                                       abs=1e-5)


def test_denoising_and_interventions_also_match_activation_patching():
    engine = tiny_engine("llama")
    receivers = downstream_receivers(engine.passes, 0)
    denoised = engine.path_patch("L0.H3", receivers, CLEAN, CORRUPT, METRIC, direction="denoising")
    patched = engine.run(CORRUPT, [ActivationPatch("L0.H3", CLEAN)], metric=METRIC).prediction.metric
    assert denoised.patched_metric == pytest.approx(patched, abs=1e-5)
    ablation = HeadAblation(2, 1)
    edited = engine.path_patch("L0.H3", receivers, CLEAN, CORRUPT, METRIC, interventions=[ablation])
    both = engine.run(CLEAN, [ablation, ActivationPatch("L0.H3", CORRUPT)], metric=METRIC).prediction.metric
    assert edited.patched_metric == pytest.approx(both, abs=1e-5)
    assert edited.base_metric == pytest.approx(engine.run(CLEAN, [ablation], metric=METRIC).prediction.metric,
                                               abs=1e-5)


def test_a_two_layer_path_equals_a_hand_written_one():
    """Sender L0.H1, receiver L1.H2's query on a 2-layer Llama: the query is q_proj of
    input_layernorm(layer-1 input + Δ), Δ = the sender's output change through its columns of W_O."""
    engine = tiny_engine("llama", num_hidden_layers=2)
    model, tok = engine.model, engine.tokenizer
    layers = model.model.layers
    d_head = engine.adapter.d_head
    sender, receiver = 1, 2
    base_ids = torch.tensor([tok(CLEAN).input_ids])
    source_ids = torch.tensor([tok(CORRUPT).input_ids])
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            seen: dict[str, torch.Tensor] = {}

            def keep(name):
                def hook(module, args):
                    seen[name] = args[0].clone()
                return hook

            handles = [layers[0].self_attn.o_proj.register_forward_pre_hook(keep("z")),
                       layers[1].register_forward_pre_hook(keep("resid1"))]
            model(source_ids)
            z_source = seen["z"]
            model(base_ids)
            z_base, resid1 = seen["z"], seen["resid1"]
            for handle in handles:
                handle.remove()
            cols = slice(sender * d_head, (sender + 1) * d_head)
            w_o = layers[0].self_attn.o_proj.weight  # [d_model, heads*d_head]
            delta = (z_source[..., cols] - z_base[..., cols]) @ w_o[:, cols].T  # [1, pos, d_model]
            attn1 = layers[1].self_attn
            query = attn1.q_proj(layers[1].input_layernorm(resid1 + delta))  # [1, pos, heads*d_head]
            rows = slice(receiver * d_head, (receiver + 1) * d_head)

            def put_query(module, args, out):
                out = out.clone()
                out[..., rows] = query[..., rows]
                return out

            handle = attn1.q_proj.register_forward_hook(put_query)
            logits = model(base_ids).logits[0, -1]
            handle.remove()
    finally:
        model.set_attn_implementation("mechscope")
    expected = float(logits[tok(" Mary").input_ids[0]] - logits[tok(" John").input_ids[0]])
    got = engine.path_patch(f"L0.H{sender}", (f"L1.H{receiver}.q",), CLEAN, CORRUPT, METRIC)
    assert got.patched_metric == pytest.approx(expected, abs=1e-5)
    assert abs(got.effect) > 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_path_sweep_cells_equal_single_path_patches(family):
    engine = tiny_engine(family)
    for receiver in ("L2.H1.q", "L2.H3.k", "L1.H0.v"):
        swept = engine.path_sweep(receiver, CLEAN, CORRUPT, METRIC)
        layer = int(receiver[1])
        assert np.isnan(swept.values[layer:]).all()
        for sender_layer in range(layer):
            for head in range(engine.adapter.n_heads):
                single = engine.path_patch(f"L{sender_layer}.H{head}", (receiver,), CLEAN, CORRUPT, METRIC)
                assert swept.values[sender_layer, head] == pytest.approx(single.effect, abs=1e-5), \
                    (receiver, sender_layer, head)
        assert swept.base_metric == pytest.approx(single.base_metric, abs=1e-6)
        assert swept.source_metric == pytest.approx(single.source_metric, abs=1e-5)


def test_path_sweep_under_interventions_equals_single_path_patches():
    engine = tiny_engine("llama")
    on_top = [HeadAblation(2, 0)]
    swept = engine.path_sweep("L2.H2.q", CLEAN, CORRUPT, METRIC, interventions=on_top, direction="denoising")
    for head in range(engine.adapter.n_heads):
        single = engine.path_patch(f"L1.H{head}", ("L2.H2.q",), CLEAN, CORRUPT, METRIC, direction="denoising",
                                   interventions=on_top)
        assert swept.values[1, head] == pytest.approx(single.effect, abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_qkv_head_sweep_cells_equal_single_head_input_patches(family):
    engine = tiny_engine(family)
    a = engine.adapter
    for which in ("q", "k", "v"):
        swept = engine.sweep("head", CLEAN, CORRUPT, METRIC, head_input=which)
        for layer in range(a.n_layers):
            for head in range(a.n_heads):
                single = engine.run(CLEAN, [HeadInputPatch(layer, head, which, CORRUPT)], metric=METRIC)
                assert swept.values[layer, head] == pytest.approx(
                    single.prediction.metric - single.baseline.metric, abs=1e-5), (which, layer, head)


def test_qkv_head_sweep_under_interventions_equals_single_runs():
    # an edit after layer 1 leaves layer 1's sources as the unedited run's, which HeadInputPatch reads
    engine = tiny_engine("qwen2")
    on_top = [HeadAblation(2, 2)]
    swept = engine.sweep("head", CLEAN, CORRUPT, METRIC, interventions=on_top, head_input="k")
    base = engine.run(CLEAN, on_top, metric=METRIC).prediction.metric
    for head in range(engine.adapter.n_heads):
        single = engine.run(CLEAN, [*on_top, HeadInputPatch(1, head, "k", CORRUPT)], metric=METRIC)
        assert swept.values[1, head] == pytest.approx(single.prediction.metric - base, abs=1e-5)


@pytest.mark.parametrize("sender, receivers, message", [
    ("L1.H2", ("L1.H0.q",), "not after the sender's layer 1"),
    ("L1.H2", ("L0.mlp",), "not downstream of the sender"),
    ("L1.H9", ("L2.H0.q",), "outside the model"),
    ("L1.H2", ("L2.H7.k",), "head 7 is out of range"),
    ("L1.H2", ("L2.H1.x",), "bad receiver"),
    ("L1.attn", ("L2.H1.q",), "not a head"),
])
def test_bad_senders_and_receivers_are_one_line(sender, receivers, message):
    engine = tiny_engine("llama")
    with pytest.raises(ValueError, match=message):
        engine.path_patch(sender, receivers, CLEAN, CORRUPT, METRIC)


def test_the_parallel_mlp_of_the_senders_layer_is_not_downstream():
    engine = tiny_engine("gpt_neox")
    with pytest.raises(ValueError, match="not downstream"):
        engine.path_patch("L1.H0", ("L1.mlp",), CLEAN, CORRUPT, METRIC)
    assert "L1.mlp" not in downstream_receivers(engine.passes, 1)
    assert "L1.mlp" in downstream_receivers(tiny_engine("llama").passes, 1)


def test_path_sweep_in_batches_of_one_sender_layer_equals_one_batch(monkeypatch):
    from mechscope.engine import paths

    engine = tiny_engine("qwen2")
    whole = engine.path_sweep("L2.H2.k", CLEAN, CORRUPT, METRIC)
    monkeypatch.setattr(paths, "SENDER_ROWS", 1)
    partials: list = []
    layered = engine.path_sweep("L2.H2.k", CLEAN, CORRUPT, METRIC, on_progress=partials.append)
    np.testing.assert_allclose(layered.values, whole.values, atol=1e-5)
    assert len(partials) == 2 and np.isnan(partials[0].values[1]).all()
