"""Engine reads checked against independent computation on tiny random models of every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine import Cancelled, Engine, HeadAblation, Metric, PromptError, Views
from mechscope.engine.hooks import count_hooks
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI = Metric("logit_diff", target=" Mary", foil=" John")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(family) -> Engine:
    return Engine(tiny_model(family), tiny_tokenizer(), source=f"tiny-{family}")


def _ids(text: str = PROMPT) -> torch.Tensor:
    return torch.tensor([tiny_tokenizer()(text).input_ids])


def test_run_without_views_equals_plain_forward(engine, family):
    plain = tiny_model(family)  # default attention implementation, no mechscope anywhere
    with torch.no_grad():
        expected = plain(_ids()).logits[0].float()  # [pos, vocab]
    result = engine.run(PROMPT)
    np.testing.assert_allclose(result.logits, expected[-1].numpy(), atol=1e-5, rtol=0)
    probs = torch.softmax(expected[-1], -1)
    assert [t.id for t in result.top] == probs.topk(10).indices.tolist()
    # per-token log-probs of the prompt equal log_softmax of the plain logits
    result = engine.run(PROMPT, views=Views(logprobs=True))
    ids = _ids()[0]
    log_probs = torch.log_softmax(expected, -1)[:-1].gather(-1, ids[1:, None])[:, 0]
    np.testing.assert_allclose(result.token_logprobs[1:], log_probs.numpy(), atol=1e-5)
    assert np.isnan(result.token_logprobs[0])


def test_attention_patterns_equal_eager(engine, family):
    eager = tiny_model(family, attn_implementation="eager")
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(_ids(), output_attentions=True)
    heads = tuple(f"L{layer}.H{head}" for layer in range(3) for head in range(4))
    result = engine.run(PROMPT, views=Views(attention=heads, sinks=True))
    for layer in range(3):
        for head in range(4):
            expected = out.attentions[layer][0, head].numpy()
            np.testing.assert_allclose(result.attention[f"L{layer}.H{head}"], expected, atol=1e-5)
        # sink score: mean attention to token 0 over queries 1..
        np.testing.assert_allclose(result.sink_scores[layer],
                                   out.attentions[layer][0, :, 1:, 0].mean(-1).numpy(), atol=1e-5)
    # rows are distributions over keys, causal
    pattern = result.attention["L1.H2"]
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    assert np.allclose(np.triu(pattern, 1), 0.0)


def test_attribution_adds_up_to_the_metric(engine, family):
    result = engine.run(PROMPT, metric=IOI, views=Views(attribution=True))
    attribution = result.attribution
    assert attribution.heads.shape == (3, 4)
    assert abs(attribution.parts_sum() - attribution.total) < 1e-4
    if engine.adapter.final_softcap is None:
        assert abs(attribution.total - result.metric) < 1e-4
    else:  # attributions add up to the logit difference before soft-capping
        pre_cap = torch.tensor(result.logits)
        info = result.metric_info
        cap = engine.adapter.final_softcap
        raw = cap * torch.atanh(pre_cap / cap)
        assert abs(attribution.total - float(raw[info.target_id] - raw[info.foil_id])) < 1e-3
    # an ablated head's attribution is exactly zero and the parts still add up
    ablated = engine.run(PROMPT, [HeadAblation(1, 2)], metric=IOI, views=Views(attribution=True))
    assert ablated.attribution.heads[1, 2] == 0.0
    assert abs(ablated.attribution.parts_sum() - ablated.attribution.total) < 1e-4


def test_logit_lens_last_layer_equals_final_logits(engine):
    result = engine.run(PROMPT, metric=IOI, views=Views(logit_lens=True, lens_k=5))
    lens = result.logit_lens
    assert lens.top_ids.shape == (3, 5)
    assert lens.top_ids[-1].tolist() == [t.id for t in result.top[:5]]
    np.testing.assert_allclose(lens.top_probs[-1], [t.prob for t in result.top[:5]], atol=1e-5)
    target_rank = int((result.logits > result.logits[result.metric_info.target_id]).sum())
    assert lens.target_rank[-1] == target_rank


def test_activation_stats(engine):
    result = engine.run(PROMPT, views=Views(stats=True))
    stats = result.stats
    n_pos = len(result.token_ids)
    assert stats.resid_norm.shape == (3, n_pos)
    # the largest reported activation is the largest |value| over every layer output
    plain = engine.model
    with torch.no_grad():
        hidden = plain(_ids(), output_hidden_states=True).hidden_states[1:]
    layer, pos, dim, value = stats.top[0]
    biggest = max(float(h[0, :, :].abs().max()) for h in hidden[:-1])
    assert abs(abs(value) - max(biggest, abs(value))) < 1e-4
    np.testing.assert_allclose(stats.resid_norm[0], hidden[0][0].norm(dim=-1).numpy(), rtol=1e-5)


def test_no_hook_survives_run_exception_or_cancel(engine):
    model = engine.model
    before = count_hooks(model)
    engine.run(PROMPT, [HeadAblation(1, 2)], metric=IOI, views=Views.all(attention=("L0.H1",)))
    assert count_hooks(model) == before

    def fail_in_layer(module, args, kwargs):
        raise RuntimeError("boom")

    # an exception raised inside a layer during a run
    engine.clear_caches()
    handle = engine.adapter.layers[1].register_forward_pre_hook(fail_in_layer, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            engine.run(PROMPT + " x", [HeadAblation(0, 1)], views=Views(sinks=True))
    finally:
        handle.remove()
    assert count_hooks(model) == before

    calls = iter(range(100))
    with pytest.raises(Cancelled):
        engine.run(PROMPT + " y", [HeadAblation(0, 1)], views=Views(sinks=True),
                   should_stop=lambda: next(calls) >= 2)
    assert count_hooks(model) == before
    # the engine is still usable and gives the same answer as before
    again = engine.run(PROMPT)
    assert again.top[0].id == engine.run(PROMPT).top[0].id


def test_bad_prompts_are_clear_errors(engine):
    with pytest.raises(PromptError, match="empty"):
        engine.run("   ")
    with pytest.raises(PromptError, match="outside the prompt"):
        engine.run(PROMPT, metric=Metric("prob", target=" Mary", position=500))


def test_multi_token_target_reports_pieces(engine):
    result = engine.run(PROMPT, metric=Metric("prob", target=" Maryland"))
    info = result.metric_info
    assert len(info.target_ids) >= 2
    assert info.warnings and "only" in info.warnings[0]
    assert abs(result.metric - float(torch.softmax(torch.tensor(result.logits), -1)[info.target_ids[0]])) < 1e-6


def test_long_prompt_is_truncated_to_context(engine):
    long_prompt = " ".join(["Mary"] * 400)
    result = engine.run(long_prompt)
    assert result.truncated_from is not None and result.truncated_from > 256
    assert len(result.token_ids) == engine.info.max_context


def test_out_of_memory_is_reported_and_engine_stays_usable():
    from mechscope.engine import OutOfMemory

    engine = Engine(tiny_model("llama"), tiny_tokenizer())
    expected = engine.run(PROMPT).top[0].id

    def exhaust(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = engine.adapter.layers[1].register_forward_pre_hook(exhaust, with_kwargs=True)
    try:
        with pytest.raises(OutOfMemory, match="still usable"):
            engine.run(PROMPT, [HeadAblation(0, 1)])
    finally:
        handle.remove()
    assert count_hooks(engine.model) == 0
    assert engine.run(PROMPT).top[0].id == expected


def test_validate_needs_no_model_lock_and_no_forward():
    from mechscope.engine import ActivationPatch, InterventionError

    engine = Engine(tiny_model("llama"), tiny_tokenizer())
    other = PROMPT.replace("John gave", "Mary gave")
    with engine.lock:  # another thread would block here; validate must not
        import threading

        errors: list[Exception] = []

        def check():
            engine.validate([ActivationPatch("L1.H2", other)], PROMPT)
            try:
                engine.validate([HeadAblation(9, 0)], PROMPT)
            except InterventionError as exc:
                errors.append(exc)

        worker = threading.Thread(target=check)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive()
    assert errors and "layer 9" in str(errors[0])
    assert not engine.passes.source_cache and not engine.passes.clean_cache
