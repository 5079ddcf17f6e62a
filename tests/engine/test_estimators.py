"""Each attribution estimator equals its definition computed by hand on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from mechscope.engine import Engine, Metric
from mechscope.engine.attention import ATTN_IMPLEMENTATION, AttentionControl
from mechscope.engine.estimators import atp, atp_star, eap_ig, graddrop
from mechscope.engine.hooks import Hook, installed
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.testing import FAMILIES, tiny_engine, tiny_model, tiny_tokenizer

PAIR = PromptRow("When Mary and John went to the store, John gave a drink to",
                 "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
TWO = PromptSet("two", (PAIR, PromptRow("Alice and Bob walked to the park, and Bob handed a book to",
                                        "Alice and Bob walked to the park, and Alice handed a book to",
                                        " Alice", " Bob")))
ONE = PromptSet("one", (PAIR,))


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    # float64 weights: the hand computations agree to ~1e-9
    return Engine(tiny_model(request.param).double(), tiny_tokenizer(), source=f"tiny-{request.param}")


def _ids(engine, text):
    return torch.tensor([engine.tokenize(text)[0]])


def _metric(engine, logits):  # [1, pos, vocab] -> scalar
    t = engine.tokenizer(PAIR.target, add_special_tokens=False).input_ids[0]
    f = engine.tokenizer(PAIR.foil, add_special_tokens=False).input_ids[0]
    return logits[0, -1, t] - logits[0, -1, f]


def _z(engine, ids, embeds=None, extra=()):
    """Head outputs of one pass as grad leaves, and the metric."""
    a = engine.adapter
    leaves = [None] * a.n_layers

    def make(layer):
        def hook(module, args, kwargs):
            leaves[layer] = args[0].detach().requires_grad_(True)
            return (leaves[layer], *args[1:]), kwargs
        return hook

    hooks = [Hook("pre", a.o_proj(layer), make(layer)) for layer in range(a.n_layers)] + list(extra)
    with installed(hooks), torch.enable_grad():
        kwargs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids}
        value = _metric(engine, engine.model(**kwargs, use_cache=False).logits)
    return leaves, value


def _heads(engine, delta, grad):
    a = engine.adapter
    return (delta * grad).view(-1, a.n_heads, a.d_head).sum(dim=(0, 2)).detach().numpy()


def test_atp_equals_the_engine_attribution_sweep(engine):
    single = engine.sweep("atp", PAIR.clean, PAIR.corrupted, Metric("logit_diff", PAIR.target, PAIR.foil))
    np.testing.assert_allclose(atp(engine, ONE).per_row[0], single.values, atol=1e-5)
    # a padded batch gives each row its own value (float32: the engine's attention takes the softmax
    # in float32, where a float64 mask's minimum becomes -inf on fully padded rows)
    small = tiny_engine(engine.source.removeprefix("tiny-"))
    np.testing.assert_allclose(atp(small, TWO).per_row[0], atp(small, ONE).per_row[0], atol=1e-6)


def test_eap_ig_with_one_step_is_atp(engine):
    small = tiny_engine(engine.source.removeprefix("tiny-"))
    ig = eap_ig(small, TWO, steps=1).per_row
    assert np.isfinite(ig).all()
    np.testing.assert_array_equal(ig, atp(small, TWO).per_row)


def test_eap_ig_equals_gradients_averaged_along_the_embedding_path(engine):
    steps = 3
    embed = engine.model.get_input_embeddings()
    clean, corrupt = _ids(engine, PAIR.clean), _ids(engine, PAIR.corrupted)
    e_clean, e_corrupt = embed(clean).detach(), embed(corrupt).detach()
    z_clean, _ = _z(engine, clean)
    z_corrupt, _ = _z(engine, corrupt)
    grads = []
    for k in range(steps):
        leaves, value = _z(engine, None, e_clean + (k / steps) * (e_corrupt - e_clean))
        grads.append(torch.autograd.grad(value, leaves))
    expected = np.stack([_heads(engine, z_corrupt[layer].detach() - z_clean[layer].detach(),
                                sum(g[layer] for g in grads) / steps)
                         for layer in range(engine.adapter.n_layers)])
    np.testing.assert_allclose(eap_ig(engine, ONE, steps=steps).per_row[0], expected, atol=1e-8)


def test_graddrop_equals_mean_abs_atp_with_each_layer_dropped(engine):
    a = engine.adapter
    clean, corrupt = _ids(engine, PAIR.clean), _ids(engine, PAIR.corrupted)
    z_corrupt, _ = _z(engine, corrupt)
    per_drop = []
    for dropped in range(a.n_layers):
        kept = {}

        def keep(module, args, kwargs, kept=kept):
            kept["in"] = args[0]

        def drop(module, args, output, kept=kept):
            out = output[0] if isinstance(output, tuple) else output
            new = kept["in"] + (out - kept["in"]).detach()
            return (new, *output[1:]) if isinstance(output, tuple) else new

        extra = [Hook("pre", a.layers[dropped], keep), Hook("fwd", a.layers[dropped], drop)]
        leaves, value = _z(engine, clean, extra=extra)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        per_drop.append(np.stack([
            _heads(engine, z_corrupt[layer].detach() - leaves[layer].detach(),
                   grads[layer] if grads[layer] is not None else torch.zeros_like(leaves[layer]))
            for layer in range(a.n_layers)]))
    per_drop = np.abs(np.stack(per_drop))  # [dropped, layer, head]
    expected = np.stack([np.delete(per_drop[:, layer], layer, axis=0).mean(0) for layer in range(a.n_layers)])
    # float32 gradients through two hook paths agree to rounding (about 5e-7 relative on gemma2)
    np.testing.assert_allclose(graddrop(engine, ONE).per_row[0], expected, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- AtP* by hand

_FROZEN = "test_frozen_patterns"


def _frozen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention whose probabilities are replaced by `module._test_pattern` when set."""
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scores = query @ key.transpose(2, 3) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1)
    module._test_seen = weights.detach()
    if getattr(module, "_test_pattern", None) is not None:
        weights = module._test_pattern
    return (weights @ value).transpose(1, 2).contiguous(), weights


def _patterns_with_added(engine, ids, layer, delta):
    """Every head's pattern at `layer` when `delta` is added to the layer's residual input (the
    engine's own attention, recording patterns)."""
    a = engine.adapter
    control = AttentionControl(record_heads=tuple(range(a.n_heads)))

    def add(module, args, kwargs):
        return (args[0] + delta, *args[1:]), kwargs

    hooks = [Hook("pre", a.layers[layer], add), Hook("attn", a.layer_module(layer, "attn"), control=control)]
    with installed(hooks), torch.no_grad():
        engine.model(input_ids=ids, use_cache=False)
    return torch.stack([control.patterns[h] for h in range(a.n_heads)], dim=1)  # [1, head, q, k]


def test_atp_star_equals_its_definition_by_hand(engine):
    a = engine.adapter
    estimate, linear, qk = atp_star(engine, ONE, return_parts=True)
    clean, corrupt = _ids(engine, PAIR.clean), _ids(engine, PAIR.corrupted)
    z_clean = [z.detach() for z in _z(engine, clean)[0]]
    z_corrupt = [z.detach() for z in _z(engine, corrupt)[0]]
    modules = [a.layer_module(layer, "attn") for layer in range(a.n_layers)]
    AttentionInterface.register(_FROZEN, _frozen_attention)
    AttentionMaskInterface.register(_FROZEN, eager_mask)
    engine.model.set_attn_implementation(_FROZEN)
    try:
        with torch.no_grad():
            engine.model(input_ids=clean, use_cache=False)
        clean_a = [m._test_seen for m in modules]

        def frozen_slope(layer=None, head=None, pattern_layer=None, pattern_delta=None):
            """d metric / dt at t = 0 with every pattern held at the clean run's, and either head
            (layer, head)'s output moved by t * (z_corrupt - z_clean) or pattern_layer's patterns by
            t * pattern_delta (autograd through a scalar t: no finite-difference noise)."""
            t = torch.zeros((), dtype=torch.float64, requires_grad=True)
            for i, m in enumerate(modules):
                m._test_pattern = clean_a[i] + (t * pattern_delta if i == pattern_layer else 0)
            hooks = []
            if layer is not None:
                def move(module, args, kwargs):
                    z = args[0].view(1, -1, a.n_heads, a.d_head).clone()
                    step = (z_corrupt[layer] - z_clean[layer]).view_as(z)
                    z[:, :, head] = z[:, :, head] + t * step[:, :, head]
                    return (z.view(args[0].shape), *args[1:]), kwargs
                hooks = [Hook("pre", a.o_proj(layer), move)]
            with installed(hooks), torch.enable_grad():
                value = _metric(engine, engine.model(input_ids=clean, use_cache=False).logits)
                return float(torch.autograd.grad(value, t)[0])

        for layer in range(a.n_layers):
            for head in range(a.n_heads):
                assert linear[0, layer, head] == pytest.approx(frozen_slope(layer, head), abs=1e-6)
                if layer == a.n_layers - 1:
                    assert qk[0, layer, head] == 0
                    continue
                # the residual change of patching this head, through the output projection (and post-norm)
                z = z_clean[layer].view(1, -1, a.n_heads, a.d_head).clone()
                z[:, :, head] = z_corrupt[layer].view_as(z)[:, :, head]
                post = a.attn_post_norm(layer) or (lambda x: x)
                delta = post(a.o_proj(layer)(z.view(z_clean[layer].shape))) - post(a.o_proj(layer)(z_clean[layer]))
                total = 0.0
                for later in range(layer + 1, a.n_layers):
                    engine.model.set_attn_implementation(ATTN_IMPLEMENTATION)
                    moved = _patterns_with_added(engine, clean, later, delta.detach())
                    engine.model.set_attn_implementation(_FROZEN)
                    total += frozen_slope(pattern_layer=later, pattern_delta=(moved - clean_a[later]).detach())
                assert qk[0, layer, head] == pytest.approx(total, abs=1e-6)
    finally:
        for m in modules:
            m._test_pattern = None
        engine.model.set_attn_implementation(ATTN_IMPLEMENTATION)
    np.testing.assert_allclose(estimate.per_row[0], linear[0] + qk[0], atol=1e-6)
