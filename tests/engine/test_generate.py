"""Generation against Hugging Face greedy `generate` and a greedy loop with hand-written hooks, per family."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mechscope.engine import (
    ActivationPatch,
    AttentionKnockout,
    Cancelled,
    ComponentAblation,
    Engine,
    HeadAblation,
    HeadScale,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.hooks import count_hooks
from mechscope.engine.testing import FAMILIES, tiny_model, tiny_tokenizer
from tests.engine.test_interventions import CORRUPT, PROMPT, REFERENCE_SET, Plain, token_ids

N_NEW = 8


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def plain(family) -> Plain:
    return Plain(family)


@pytest.fixture(scope="module")
def engine(family) -> Engine:
    engine = Engine(tiny_model(family), tiny_tokenizer(), source=f"tiny-{family}")
    engine.set_reference_prompts(list(REFERENCE_SET))
    engine.add_vector("up", np.random.default_rng(7).normal(0, 0.5, engine.info.d_model))
    return engine


def _until_eos(ids: list[int]) -> list[int]:
    eos = tiny_tokenizer().eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_greedy_generation_equals_hugging_face_generate(engine, family):
    model = tiny_model(family)  # its own attention implementation, its own KV cache
    prompt_ids = token_ids(PROMPT)
    with torch.no_grad():
        out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=N_NEW,
                             do_sample=False, pad_token_id=0)
    expected = _until_eos(out[0, prompt_ids.shape[1]:].tolist())
    streamed = []
    tokens = engine.generate(PROMPT, max_new_tokens=N_NEW, on_token=streamed.append)
    assert [t.id for t in tokens] == expected
    assert streamed == tokens
    # each token's probability and text, from a plain forward of the sequence so far
    sequence = prompt_ids
    for token in tokens:
        with torch.no_grad():
            probs = torch.softmax(model(sequence).logits[0, -1].float(), -1)
        assert abs(token.prob - float(probs[token.id])) < 1e-5
        assert token.text == tiny_tokenizer().decode([token.id])
        sequence = torch.cat([sequence, torch.tensor([[token.id]])], dim=1)
    assert count_hooks(engine.model) == 0


def test_seeded_sampling_is_reproducible(engine, plain):
    first = engine.generate(PROMPT, max_new_tokens=N_NEW, temperature=1.5, seed=11)
    again = engine.generate(PROMPT, max_new_tokens=N_NEW, temperature=1.5, seed=11)
    assert first == again
    others = [engine.generate(PROMPT, max_new_tokens=N_NEW, temperature=1.5, seed=s) for s in (12, 13)]
    assert any([t.id for t in o] != [t.id for t in first] for o in others)
    # the reported probability is the model's (unscaled) probability of the sampled token
    sequence = token_ids(PROMPT)
    for token in first:
        probs = torch.softmax(plain.logits(sequence)[-1], -1)
        assert abs(token.prob - float(probs[token.id])) < 1e-5
        sequence = torch.cat([sequence, torch.tensor([[token.id]])], dim=1)


def _reference_greedy(plain: Plain, engine: Engine, interventions, corrupted=None) -> list[tuple[int, float]]:
    """Greedy decoding on the plain model, hand-written hooks re-applied to the whole sequence each step;
    (token id, probability) per step."""
    sequence = token_ids(PROMPT)
    out = []
    for _ in range(N_NEW):
        logits = plain.intervention_logits(sequence, interventions, corrupted, engine.vectors, REFERENCE_SET)
        token = int(logits[-1].argmax())
        out.append((token, float(torch.softmax(logits[-1], -1)[token])))
        if token == tiny_tokenizer().eos_token_id:
            break
        sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    return out


def assert_same_tokens(tokens, expected: list[tuple[int, float]]) -> None:
    assert [t.id for t in tokens] == [token for token, _ in expected]
    np.testing.assert_allclose([t.prob for t in tokens], [prob for _, prob in expected], atol=1e-5)


def test_interventions_change_generation_exactly_as_by_hand(engine, plain):
    clean = engine.generate(PROMPT, max_new_tokens=N_NEW)
    stacks = [
        [SteeringVector(1, "up", 6.0, "all")],
        [SteeringVector(2, "up", -5.0, "last"), HeadScale(1, 3, 4.0)],
        [HeadAblation(0, 1), HeadAblation(2, 2, "mean"), ComponentAblation(1, "mlp"),
         NeuronClamp(2, 3, 8.0), AttentionKnockout(1, 0, 13, 0)],
    ]
    changed = 0
    for stack in stacks:
        streamed = []
        tokens = engine.generate(PROMPT, stack, max_new_tokens=N_NEW, on_token=streamed.append)
        assert_same_tokens(tokens, _reference_greedy(plain, engine, stack))
        assert streamed == tokens
        # some tiny random models (gemma) keep the same argmax; the probabilities still move
        moved = [t.id for t in tokens] != [t.id for t in clean] or abs(tokens[0].prob - clean[0].prob) > 1e-3
        changed += moved
        assert count_hooks(engine.model) == 0
    assert changed == len(stacks)


def test_patches_during_generation_apply_to_the_prompt_positions(engine, plain):
    n_prompt = token_ids(PROMPT).shape[1]
    stack = [ActivationPatch("L1.resid_pre", CORRUPT), HeadAblation(2, 1, "resample")]
    tokens = engine.generate(PROMPT, stack, max_new_tokens=N_NEW, corrupted=CORRUPT)
    by_hand = [dataclasses.replace(iv, positions=tuple(range(n_prompt))) for iv in stack]
    assert_same_tokens(tokens, _reference_greedy(plain, engine, by_hand, CORRUPT))
    assert count_hooks(engine.model) == 0


def test_cancelled_generation_leaves_no_hook(engine):
    before = engine.generate(PROMPT, [HeadAblation(1, 1)], max_new_tokens=4)
    streamed = []
    with pytest.raises(Cancelled):
        engine.generate(PROMPT, [HeadAblation(1, 1)], max_new_tokens=N_NEW, on_token=streamed.append,
                        should_stop=lambda: len(streamed) >= 2)
    assert streamed == before[:2]
    assert count_hooks(engine.model) == 0
    assert engine.generate(PROMPT, [HeadAblation(1, 1)], max_new_tokens=4) == before
    assert engine.generate(PROMPT, max_new_tokens=0) == []
