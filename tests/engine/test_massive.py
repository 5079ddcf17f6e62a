"""Massive activations equal their definition computed from the model's hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine.massive import massive_activations
from mechscope.engine.testing import tiny_engine

PROMPTS = ["When Mary and John went to the store, John gave a drink to Mary.",
           "The capital of France is Paris.", "One two three four five six"]


def _expected(engine, ratio):
    a = engine.adapter
    found = [[] for _ in range(a.n_layers - 1)]
    for text in PROMPTS:
        with torch.no_grad():
            out = engine.model(input_ids=torch.tensor([engine.tokenize(text)[0]]), output_hidden_states=True)
        for layer in range(a.n_layers - 1):  # the last hidden state has the final norm applied
            h = out.hidden_states[layer + 1][0].abs().numpy()
            found[layer].append(set(np.nonzero(h.max(0) > ratio * np.median(h))[0].tolist()))
    return found


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_massive_dims_match_hidden_states(family):
    engine = tiny_engine(family)
    layers = massive_activations(engine, PROMPTS, ratio=4.0)
    for layer, per_prompt in enumerate(_expected(engine, 4.0)):
        assert layers[layer].dims == sorted(set().union(*per_prompt))
        assert layers[layer].counts == [sum(d in p for p in per_prompt) for d in layers[layer].dims]


def test_a_constant_massive_dimension_is_found_in_every_prompt():
    engine = tiny_engine("gpt2")
    with torch.no_grad():
        engine.model.transformer.h[0].mlp.c_proj.bias[5] = 500.0  # every position, every prompt
    layers = massive_activations(engine, PROMPTS, ratio=100.0)
    assert 5 in layers[0].dims
    assert layers[0].counts[layers[0].dims.index(5)] == len(PROMPTS)
    assert layers[0].spread[layers[0].dims.index(5)] < 0.1
    assert layers[0].dims == [5] and layers[0].constant
    peak = layers[0].peak[0]
    assert all(abs(v) > 400 for v in peak)
