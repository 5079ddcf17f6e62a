"""Sweeps (head, residual, AtP) against one-at-a-time runs and hand-written patching, on every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine import ActivationPatch, Cancelled, Engine, Metric, PromptError
from mechscope.engine.hooks import count_hooks
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer
from tests.engine.test_interventions import CORRUPT, OTHER, PROMPT, Plain, _seq, token_ids

IOI = Metric("logit_diff", target=" Mary", foil=" John")
TOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def plain(family) -> Plain:
    return Plain(family)


@pytest.fixture(scope="module")
def engine(family) -> Engine:
    return Engine(tiny_model(family), tiny_tokenizer(), source=f"tiny-{family}")


@pytest.fixture(scope="module")
def head_sweep(engine):
    return engine.sweep("head", PROMPT, CORRUPT, IOI)


def metric_of(logits: torch.Tensor, metric: Metric = IOI) -> float:
    """The metric at the last position of [pos, vocab] logits, computed here from the token ids."""
    tok = tiny_tokenizer()
    target = tok(metric.target, add_special_tokens=False).input_ids[0]
    last = logits[metric.position]
    if metric.kind == "logit_diff":
        return float(last[target] - last[tok(metric.foil, add_special_tokens=False).input_ids[0]])
    log_p = torch.log_softmax(last, -1)[target]
    return float(log_p.exp()) if metric.kind == "prob" else float(-log_p)


def one_at_a_time(engine: Engine, base: str, source: str, addresses, metric: Metric = IOI,
                  positions=None) -> np.ndarray:
    """metric(patched) - metric(base) from separate `run` calls, one patch each."""
    values = []
    for address in addresses:
        result = engine.run(base, [ActivationPatch(address, source, positions)], metric=metric)
        values.append(result.metric - result.baseline.metric)
    return np.array(values)


def test_head_sweep_equals_patches_run_one_at_a_time(engine, plain, head_sweep):
    n_layers, n_heads = engine.info.n_layers, engine.info.n_heads
    assert head_sweep.values.shape == (n_layers, n_heads) and head_sweep.complete
    addresses = [f"L{layer}.H{head}" for layer in range(n_layers) for head in range(n_heads)]
    expected = one_at_a_time(engine, PROMPT, CORRUPT, addresses).reshape(n_layers, n_heads)
    np.testing.assert_allclose(head_sweep.values, expected, atol=TOL, rtol=TOL)
    # and by hand on the plain model: the head's slice of the output projection's input, from CORRUPT
    source_z = plain.activations(CORRUPT)["z"]
    n_pos = token_ids(PROMPT).shape[1]
    base = metric_of(plain.logits(PROMPT))
    for layer in range(n_layers):
        for head in range(n_heads):
            cols = slice(head * plain.d_head, (head + 1) * plain.d_head)

            def patch(module, args, kwargs, layer=layer, cols=cols):
                z = _seq(args[0], n_pos).clone()
                z[0, :, cols] = source_z[layer][:, cols]
                return (z.view(args[0].shape),), kwargs

            patched = metric_of(plain.logits(PROMPT, [(plain.module(layer, "o_proj"), "pre", patch)]))
            assert abs(head_sweep.values[layer, head] - (patched - base)) < 1e-4
    assert abs(head_sweep.base_metric - base) < TOL
    assert abs(head_sweep.source_metric - metric_of(plain.logits(CORRUPT))) < TOL
    assert np.abs(head_sweep.values).max() > 1e-3  # the prompts differ: patching matters somewhere
    assert count_hooks(engine.model) == 0


def test_resid_sweep_equals_patches_run_one_at_a_time(engine, plain):
    result = engine.sweep("resid", PROMPT, CORRUPT, IOI)
    n_pos = token_ids(PROMPT).shape[1]
    assert result.values.shape == (engine.info.n_layers, n_pos)
    assert result.col_labels[9] == "9: John"
    for layer in range(engine.info.n_layers):
        patched = [engine.run(PROMPT, [ActivationPatch(f"L{layer}.resid_pre", CORRUPT, [p])], metric=IOI)
                   for p in range(n_pos)]
        expected = [run.metric - result.base_metric for run in patched]
        np.testing.assert_allclose(result.values[layer], expected, atol=TOL, rtol=TOL)
    # the prompts differ only at position 9: patching any other position of layer 0 changes nothing
    assert np.abs(np.delete(result.values[0], 9)).max() < TOL
    assert abs(result.values[0, 9]) > 1e-3
    # patching the whole residual at layer 0 is the corrupted run
    assert abs(result.values[0, 9] - (result.source_metric - result.base_metric)) < 1e-4
    assert abs(result.source_metric - metric_of(plain.logits(CORRUPT))) < TOL
    assert count_hooks(engine.model) == 0


@pytest.mark.parametrize("metric", [Metric("prob", target=" Mary"), Metric("loss", target=" John"),
                                    Metric("logit_diff", target=" Mary", foil=" John", position=9)])
def test_sweeps_with_other_metrics_and_denoising(engine, metric):
    n_layers, n_heads = engine.info.n_layers, engine.info.n_heads
    addresses = [f"L{layer}.H{head}" for layer in range(n_layers) for head in range(n_heads)]
    for direction, base, source in (("noising", PROMPT, CORRUPT), ("denoising", CORRUPT, PROMPT)):
        result = engine.sweep("head", PROMPT, CORRUPT, metric, direction=direction)
        expected = one_at_a_time(engine, base, source, addresses, metric).reshape(n_layers, n_heads)
        np.testing.assert_allclose(result.values, expected, atol=TOL, rtol=TOL)
        assert abs(result.base_metric - engine.run(base, metric=metric).metric) < TOL
        assert abs(result.source_metric - engine.run(source, metric=metric).metric) < TOL


def _hand_atp(plain: Plain, base: str, source: str, metric: Metric = IOI) -> np.ndarray:
    """sum over positions and a head's dims of (z_source - z_base) * d metric / d z_base, by autograd."""
    n_pos = token_ids(base).shape[1]
    leaves: dict[int, torch.Tensor] = {}

    def make_leaf(layer: int):
        def hook(module, args, kwargs):
            leaves[layer] = _seq(args[0], n_pos).detach().clone().requires_grad_(True)  # [1, pos, H*d_head]
            return (leaves[layer].view(args[0].shape),), kwargs
        return hook

    hooks = [(plain.module(layer, "o_proj"), "pre", make_leaf(layer)) for layer in range(plain.n_layers)]
    with plain.hooked(hooks), torch.enable_grad():
        logits = plain.model(token_ids(base), use_cache=False).logits[0].float()
        value = _metric_tensor(logits, metric)
        grads = torch.autograd.grad(value, [leaves[i] for i in range(plain.n_layers)])
    source_z = plain.activations(source)["z"]
    out = np.zeros((plain.n_layers, plain.n_heads))
    for layer, grad in enumerate(grads):
        delta = (source_z[layer] - leaves[layer][0].detach()) * grad[0]  # [pos, H*d_head]
        out[layer] = delta.view(n_pos, plain.n_heads, plain.d_head).sum((0, 2)).numpy()
    return out


def _metric_tensor(logits: torch.Tensor, metric: Metric) -> torch.Tensor:
    tok = tiny_tokenizer()
    target = tok(metric.target, add_special_tokens=False).input_ids[0]
    foil = tok(metric.foil, add_special_tokens=False).input_ids[0]
    return logits[-1, target] - logits[-1, foil]


def test_atp_equals_the_hand_computed_gradient_formula(engine, plain, head_sweep):
    result = engine.sweep("atp", PROMPT, CORRUPT, IOI)
    assert result.kind == "atp" and result.complete
    np.testing.assert_allclose(result.values, _hand_atp(plain, PROMPT, CORRUPT), atol=1e-4, rtol=1e-4)
    denoising = engine.sweep("atp", PROMPT, CORRUPT, IOI, direction="denoising")
    np.testing.assert_allclose(denoising.values, _hand_atp(plain, CORRUPT, PROMPT), atol=1e-4, rtol=1e-4)
    assert result.base_metric == head_sweep.base_metric
    # first-order: for the last layer (no later nonlinearity between the head and the logits except the
    # final norm) AtP and true patching have the same sign wherever the effect is sizeable
    last = engine.info.n_layers - 1
    big = np.abs(head_sweep.values[last]) > 0.05
    assert np.all(np.sign(result.values[last][big]) == np.sign(head_sweep.values[last][big]))
    assert count_hooks(engine.model) == 0
    assert not any(p.requires_grad for p in engine.model.parameters())


def test_partial_results_stream_row_by_row(engine, head_sweep):
    partials = []
    final = engine.sweep("head", PROMPT, CORRUPT, IOI, on_progress=partials.append)
    n_layers = engine.info.n_layers
    assert len(partials) == n_layers
    for done, partial in enumerate(partials, start=1):
        assert not partial.complete
        np.testing.assert_array_equal(partial.values[:done], head_sweep.values[:done])
        assert np.isnan(partial.values[done:]).all()
    assert final.complete and not np.isnan(final.values).any()
    np.testing.assert_array_equal(final.values, head_sweep.values)
    atp_partials = []
    engine.sweep("atp", PROMPT, CORRUPT, IOI, on_progress=atp_partials.append)
    assert len(atp_partials) == 1 and atp_partials[0].complete


@pytest.mark.parametrize("kind", ["head", "resid"])
def test_a_cancelled_sweep_leaves_no_hook_and_the_engine_usable(engine, head_sweep, kind):
    before = engine.run(PROMPT, metric=IOI)
    partials = []
    with pytest.raises(Cancelled):
        engine.sweep(kind, PROMPT, CORRUPT, IOI, on_progress=partials.append,
                     should_stop=lambda: len(partials) >= 1)
    assert len(partials) == 1  # stopped during the second row
    assert count_hooks(engine.model) == 0
    calls = []
    with pytest.raises(Cancelled):  # stopped inside a row, between layers
        engine.sweep(kind, PROMPT, CORRUPT, IOI, should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert count_hooks(engine.model) == 0
    after = engine.run(PROMPT, metric=IOI)
    np.testing.assert_array_equal(after.logits, before.logits)
    if kind == "head":
        np.testing.assert_array_equal(engine.sweep("head", PROMPT, CORRUPT, IOI).values, head_sweep.values)


def test_sweep_input_errors(engine):
    with pytest.raises(PromptError, match="same number of tokens"):
        engine.sweep("head", PROMPT, OTHER, IOI)
    with pytest.raises(PromptError):
        engine.sweep("head", PROMPT, CORRUPT, Metric())
    with pytest.raises(ValueError):
        engine.sweep("neurons", PROMPT, CORRUPT, IOI)
    assert count_hooks(engine.model) == 0
