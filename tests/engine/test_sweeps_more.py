"""Attention / MLP output sweeps, sweeps on top of interventions, and the KL metric, on every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine import (
    ActivationPatch,
    AttentionKnockout,
    Engine,
    HeadAblation,
    Metric,
    PromptError,
    SteeringVector,
)
from mechscope.engine.hooks import count_hooks
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer
from tests.engine.test_interventions import CORRUPT, PROMPT, token_ids

IOI = Metric("logit_diff", target=" Mary", foil=" John")
KL = Metric("kl")
TOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request) -> Engine:
    engine = Engine(tiny_model(request.param), tiny_tokenizer(), source=f"tiny-{request.param}")
    engine.add_vector("up", np.random.default_rng(3).normal(0, 0.5, engine.info.d_model))
    return engine


def _kl(clean_logits: np.ndarray, logits: np.ndarray) -> float:
    """KL(clean || run) computed here in float64 from two logit vectors."""
    p = torch.log_softmax(torch.tensor(clean_logits, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1)
    return float((p.exp() * (p - q)).sum())


@pytest.mark.parametrize("kind", ["attn", "mlp"])
def test_component_sweeps_equal_patches_run_one_at_a_time(engine, kind):
    result = engine.sweep(kind, PROMPT, CORRUPT, IOI)
    n_pos = token_ids(PROMPT).shape[1]
    assert result.values.shape == (engine.info.n_layers, n_pos) and result.complete
    for layer in range(engine.info.n_layers):
        expected = [engine.run(PROMPT, [ActivationPatch(f"L{layer}.{kind}", CORRUPT, [p])], metric=IOI).metric
                    - result.base_metric for p in range(n_pos)]
        np.testing.assert_allclose(result.values[layer], expected, atol=TOL, rtol=TOL)
    assert np.abs(result.values).max() > 1e-4
    # the prompts first differ at position 9: patching earlier positions changes nothing
    assert np.abs(result.values[:, :9]).max() == 0.0
    denoise = engine.sweep(kind, PROMPT, CORRUPT, IOI, direction="denoising")
    layer = engine.info.n_layers - 1
    expected = engine.run(CORRUPT, [ActivationPatch(f"L{layer}.{kind}", PROMPT, [12])], metric=IOI).metric
    assert abs(denoise.values[layer, 12] - (expected - denoise.base_metric)) < 1e-4
    assert count_hooks(engine.model) == 0


@pytest.mark.parametrize("kind", ["head", "resid", "attn"])
def test_a_sweep_on_top_of_interventions(engine, kind):
    """Edits at the last layer leave the source activations of lower layers as they were, so each
    cell equals a run of the stack plus the one patch."""
    last = engine.info.n_layers - 1
    stack = [HeadAblation(last, 1), AttentionKnockout(last, 0, 13, 2), SteeringVector(last, "up", 0.5)]
    result = engine.sweep(kind, PROMPT, CORRUPT, IOI, interventions=stack)
    base = engine.run(PROMPT, stack, metric=IOI)
    assert abs(result.base_metric - base.metric) < TOL
    assert abs(result.source_metric - engine.run(CORRUPT, stack, metric=IOI).metric) < TOL
    plain = engine.sweep(kind, PROMPT, CORRUPT, IOI)
    assert not np.allclose(result.values, plain.values)
    n_pos = token_ids(PROMPT).shape[1]
    for layer in range(last):  # below the edits
        if kind == "head":
            cells = [(h, [ActivationPatch(f"L{layer}.H{h}", CORRUPT)]) for h in range(engine.info.n_heads)]
        else:
            site = "resid_pre" if kind == "resid" else "attn"
            cells = [(p, [ActivationPatch(f"L{layer}.{site}", CORRUPT, [p])]) for p in range(n_pos)]
        for col, patch in cells:
            expected = engine.run(PROMPT, stack + patch, metric=IOI).metric - base.metric
            assert abs(result.values[layer, col] - expected) < 1e-4, (layer, col)
    assert count_hooks(engine.model) == 0


def test_atp_on_top_of_interventions(engine):
    stack = [HeadAblation(1, 2)]
    atp = engine.sweep("atp", PROMPT, CORRUPT, IOI, interventions=stack)
    assert abs(atp.base_metric - engine.run(PROMPT, stack, metric=IOI).metric) < 1e-4
    # the ablated head outputs zero in both runs: patching it changes nothing
    assert atp.values[1, 2] == 0.0
    assert engine.sweep("atp", PROMPT, CORRUPT, IOI).values[1, 2] != 0.0
    assert np.all(np.isfinite(atp.values))


def test_kl_metric_of_a_run(engine):
    clean = engine.run(PROMPT, metric=KL)
    assert clean.metric == pytest.approx(0.0, abs=1e-6)
    edited = engine.run(PROMPT, [HeadAblation(1, 2), SteeringVector(0, "up", 2.0)], metric=KL)
    assert edited.metric == pytest.approx(_kl(clean.logits, edited.logits), abs=1e-5)
    assert edited.metric > 0
    at_nine = engine.run(PROMPT, [HeadAblation(0, 1)], metric=Metric("kl", position=9))
    assert at_nine.metric_info.position == 9 and at_nine.metric >= 0
    # a kl metric with a target keeps the target's rank in the logit lens
    from mechscope.engine import Views

    with_target = engine.run(PROMPT, [HeadAblation(0, 1)], metric=Metric("kl", target=" Mary"),
                             views=Views(logit_lens=True, attribution=not engine.adapter.post_ln))
    assert with_target.logit_lens.target_rank is not None


def test_kl_sweep_equals_runs(engine):
    result = engine.sweep("head", PROMPT, CORRUPT, KL)
    assert result.base_metric == pytest.approx(0.0, abs=1e-6)
    for layer in range(engine.info.n_layers):
        for head in range(engine.info.n_heads):
            run = engine.run(PROMPT, [ActivationPatch(f"L{layer}.H{head}", CORRUPT)], metric=KL)
            assert abs(result.values[layer, head] - run.metric) < 1e-5
    # denoising: divergence of the corrupted run (patched) from the clean prompt's run
    denoise = engine.sweep("resid", PROMPT, CORRUPT, KL, direction="denoising")
    clean, corrupt = engine.run(PROMPT), engine.run(CORRUPT)
    assert denoise.base_metric == pytest.approx(_kl(clean.logits, corrupt.logits), abs=1e-5)
    assert denoise.source_metric == pytest.approx(0.0, abs=1e-5)


def test_metric_kinds_are_checked():
    with pytest.raises(ValueError, match="kl"):
        Metric("entropy")
    assert Metric.from_dict(Metric("kl", position=3).to_dict()) == Metric("kl", position=3)
    engine = Engine(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(PromptError):
        engine.sweep("head", PROMPT, CORRUPT, Metric("prob"))


def test_a_sweep_request_carries_its_interventions():
    from mechscope.requests.kinds import SweepRequest, request_from_dict, request_to_dict
    from mechscope.requests.registry import execute

    engine = Engine(tiny_model("llama"), tiny_tokenizer())
    stack = (HeadAblation(2, 1),)
    request = SweepRequest("attn", PROMPT, CORRUPT, IOI, interventions=stack)
    assert request_from_dict(request_to_dict(request)) == request
    outcome = execute(engine, request)
    assert outcome.error is None and outcome.request is request
    expected = engine.sweep("attn", PROMPT, CORRUPT, IOI, interventions=stack)
    np.testing.assert_array_equal(outcome.result.values, expected.values)
    assert abs(outcome.result.base_metric - engine.run(PROMPT, stack, metric=IOI).metric) < TOL
