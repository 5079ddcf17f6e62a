"""Each head detector's score equals its definition computed by hand from attention patterns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechscope.engine.attention import ATTN_IMPLEMENTATION
from mechscope.engine.detectors import (
    PROBE_TEXTS,
    REPEAT_LENGTH,
    cache_path,
    compute_scores,
    head_scores,
    repeat_probes,
)
from mechscope.engine.testing import FAMILIES, tiny_engine


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    return tiny_engine(request.param)


def _hf_patterns(engine, ids):
    """Transformers' own eager attention weights, one [head, q, k] per layer."""
    engine.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = engine.model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        engine.model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return [a[0].float() for a in out.attentions]


def _by_hand(engine):
    a = engine.adapter
    shape = (a.n_layers, a.n_heads)
    prev, sink, copy = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    count = 0
    for text in PROBE_TEXTS:
        ids = engine.tokenize(text)[0]
        n = len(ids)
        patterns = _hf_patterns(engine, ids)
        z, final = {}, {}
        hooks = [a.o_proj(layer).register_forward_pre_hook(
            lambda m, args, layer=layer, z=z: z.__setitem__(layer, args[0][0])) for layer in range(a.n_layers)]
        hooks.append(a.final_norm.register_forward_pre_hook(lambda m, args, final=final: final.__setitem__("x", args[0][0])))
        try:
            with torch.no_grad():
                engine.model(input_ids=torch.tensor([ids]), use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        unembed = a.unembed.weight
        def normed(x):
            out = a.final_norm(x)
            for module in a.post_final:
                out = module(out)
            return out

        jacobians = [torch.autograd.functional.jacobian(normed, final["x"][t]) for t in range(n)]  # [d_out, d_model]
        for layer in range(a.n_layers):
            for head in range(a.n_heads):
                p = patterns[layer][head]
                for t in range(1, n):
                    prev[layer, head] += float(p[t, t - 1])
                    sink[layer, head] += float(p[t, 0])
                    only = torch.zeros_like(z[layer][t]).view(a.n_heads, a.d_head)
                    only[head] = z[layer][t].view(a.n_heads, a.d_head)[head]
                    o = a.o_proj(layer)(only.view(-1)[None])[0] - a.o_proj(layer)(torch.zeros_like(only.view(-1))[None])[0]
                    logit = unembed @ (jacobians[t] @ o)  # [vocab]
                    rel = logit - logit.mean()
                    copy[layer, head] -= float(sum(p[t, k] * rel[ids[k]] for k in range(1, t + 1)))
        count += n - 1
    dup, ind = np.zeros(shape), np.zeros(shape)
    seen = 0
    for ids in repeat_probes(engine):
        patterns = _hf_patterns(engine, ids)
        start = len(ids) - REPEAT_LENGTH
        for layer in range(a.n_layers):
            for t in range(start, len(ids)):
                dup[layer] += patterns[layer][:, t, t - REPEAT_LENGTH].numpy()
                ind[layer] += patterns[layer][:, t, t - REPEAT_LENGTH + 1].numpy()
        seen += REPEAT_LENGTH
    return {"previous_token": prev / count, "first_token_sink": sink / count, "copy_suppression": copy / count,
            "duplicate_token": dup / seen, "induction": ind / seen}


def test_each_detector_equals_its_definition(engine):
    scores = compute_scores(engine).scores
    for name, expected in _by_hand(engine).items():
        np.testing.assert_allclose(scores[name], expected, atol=2e-5, err_msg=name)


def test_repeat_probes_are_two_copies(engine):
    for ids in repeat_probes(engine):
        assert ids[-REPEAT_LENGTH:] == ids[-2 * REPEAT_LENGTH:-REPEAT_LENGTH]


def test_scores_are_cached_by_weights_digest(monkeypatch):
    engine = tiny_engine("gpt2")
    assert not head_scores(engine).cached  # no digest: never cached
    engine.weights_digest = "abc123"
    first = head_scores(engine)
    assert not first.cached and cache_path("abc123").is_file()
    second = head_scores(engine)
    assert second.cached
    for name, grid in first.scores.items():
        np.testing.assert_allclose(second.scores[name], grid)
    cache_path("abc123").write_text("{broken")
    assert not head_scores(engine).cached
    assert json.loads(cache_path("abc123").read_text())  # rewritten
