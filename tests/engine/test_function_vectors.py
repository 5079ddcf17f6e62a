"""Function vectors against hand-written patched forwards on the tiny models of every family, and the
in-context templates (shuffled-label corrupted prompts, single-token targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.engine.function_vectors import function_vector
from mechscope.engine.prompt_sets import (
    ICL_TASKS,
    PromptSetError,
    icl_set,
    template_set,
    zero_shot_prompt,
)
from mechscope.engine.testing import FAMILIES, tiny_engine, tiny_tokenizer

# Words that are one token after a space in the tiny tokenizer, paired as a made-up task.
PAIRS = [("Mary", "John"), ("store", "drink"), ("Alice", "Bob"), ("dog", "moon"), ("Paris", "sad"),
         ("John", "Mary"), ("drink", "store"), ("Bob", "Alice")]


def _last_z(engine, text: str, layer: int) -> torch.Tensor:
    kept = {}

    def hook(module, args):
        kept["z"] = args[0][0, -1].detach().clone()  # [head*d_head]

    handle = engine.adapter.o_proj(layer).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            engine.model(input_ids=torch.tensor([engine.tokenize(text)[0]]))
    finally:
        handle.remove()
    return kept["z"]


def _patched_prob(engine, text: str, target: int, layer: int, head: int, value: torch.Tensor) -> float:
    d_head = engine.adapter.d_head

    def hook(module, args):
        z = args[0].clone()
        z[0, -1, head * d_head:(head + 1) * d_head] = value
        return (z, *args[1:])

    handle = engine.adapter.o_proj(layer).register_forward_pre_hook(hook) if value is not None else None
    try:
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([engine.tokenize(text)[0]])).logits[0, -1].float()
    finally:
        if handle is not None:
            handle.remove()
    return float(torch.softmax(logits, -1)[target])


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    return tiny_engine(request.param)


@pytest.fixture(scope="module")
def pset(engine):
    return icl_set(engine.tokenizer, "antonyms", n=3, shots=3, pairs=PAIRS)


def test_aie_equals_hand_written_patches_and_fv_the_hand_summed_outputs(engine, pset):
    a = engine.adapter
    result = function_vector(engine, pset, layer=1, n_heads=3, max_batch=5)
    targets = [engine.tokenizer(row.target, add_special_tokens=False).input_ids[0] for row in pset.rows]
    means = [torch.stack([_last_z(engine, row.clean, layer) for row in pset.rows]).float().mean(0)
             for layer in range(a.n_layers)]
    base = [_patched_prob(engine, row.corrupted, t, 0, 0, None) for row, t in zip(pset.rows, targets)]
    np.testing.assert_allclose(result.base_prob, base, atol=1e-6)
    for layer in range(a.n_layers):
        for head in range(a.n_heads):
            value = means[layer][head * a.d_head:(head + 1) * a.d_head]
            patched = [_patched_prob(engine, row.corrupted, t, layer, head, value)
                       for row, t in zip(pset.rows, targets)]
            assert result.aie[layer, head] == pytest.approx(np.mean(np.subtract(patched, base)), abs=1e-6)
    order = np.argsort(-result.aie.ravel())[:3]
    assert result.heads == tuple((int(i // a.n_heads), int(i % a.n_heads)) for i in order)
    expected = torch.zeros(a.d_model)
    for layer, head in result.heads:
        weight = a.o_weight(layer).float()  # [d_model, head*d_head]
        cols = slice(head * a.d_head, (head + 1) * a.d_head)
        expected += weight[:, cols] @ means[layer][cols]
    np.testing.assert_allclose(result.vector, expected.numpy(), atol=1e-5)


def test_accuracy_without_equals_a_plain_zero_shot_run_and_coeff_zero_changes_nothing(engine, pset):
    result = function_vector(engine, pset, layer=2, n_heads=2, coeff=0.0)
    for r, row in enumerate(pset.rows):
        prompt = zero_shot_prompt(row.clean)
        target = engine.tokenizer(row.target, add_special_tokens=False).input_ids[0]
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([engine.tokenize(prompt)[0]])).logits[0, -1].float()
        assert result.correct_without[r] == float(int(logits.argmax()) == target)
        assert result.prob_without[r] == pytest.approx(float(torch.softmax(logits, -1)[target]), abs=1e-6)
    np.testing.assert_array_equal(result.correct_with, result.correct_without)
    np.testing.assert_allclose(result.prob_with, result.prob_without, atol=1e-7)
    assert result.accuracy_with == result.accuracy_without


def test_the_vector_steers_the_zero_shot_prompts_as_a_steering_vector_intervention(engine, pset):
    from mechscope.engine import Metric
    from mechscope.engine.interventions import SteeringVector

    result = engine.function_vector(pset, 1, 2, 3.0, "fv-test")
    np.testing.assert_array_equal(engine.vectors["fv-test"], result.vector)
    row = pset.rows[0]
    run = engine.run(zero_shot_prompt(row.clean), [SteeringVector(1, "fv-test", 3.0, positions="last")],
                     metric=Metric("prob", row.target))
    assert run.prediction.metric == pytest.approx(result.prob_with[0], abs=1e-5)


def test_icl_rows_shuffle_the_shots_answers_and_keep_the_query():
    tokenizer = tiny_tokenizer()
    pset = icl_set(tokenizer, "antonyms", n=6, shots=4, seed=3, pairs=PAIRS)
    answers = dict(PAIRS)
    for row in pset.rows:
        clean, corrupted = row.clean.split("\n"), row.corrupted.split("\n")
        assert clean[-1] == corrupted[-1] == zero_shot_prompt(row.clean)
        query = clean[-1].removesuffix(":")
        assert row.target == " " + answers[query] and row.foil == " " + query
        shots = [line.split(": ") for line in clean[:-1]]
        moved = [line.split(": ") for line in corrupted[:-1]]
        assert [x for x, _ in shots] == [x for x, _ in moved]
        assert all(answers[x] == y for x, y in shots)
        assert sorted(y for _, y in shots) == sorted(y for _, y in moved)
        assert all(y != z for (_, y), (_, z) in zip(shots, moved))  # every label moved
        assert len(tokenizer(row.target, add_special_tokens=False).input_ids) == 1
    zero = icl_set(tokenizer, "antonyms", n=2, shots=0, pairs=PAIRS)
    assert all("\n" not in row.clean and row.corrupted == "" for row in zero.rows)


def test_shipped_word_lists_need_a_tokenizer_with_enough_single_token_words():
    with pytest.raises(PromptSetError, match="single-token words"):
        template_set("uppercase", tiny_tokenizer(), 4)


@pytest.mark.demo
@pytest.mark.parametrize("task", ICL_TASKS)
def test_templates_on_the_demo_tokenizer(demo_engine, task):
    tokenizer = demo_engine.tokenizer
    pset = template_set(task, tokenizer, 20, seed=1, shots=5)
    assert len(pset) == 20 and pset.source.startswith(f"template:{task}")
    for row in pset.rows:
        assert len(tokenizer(row.target, add_special_tokens=False).input_ids) == 1
        assert row.clean != row.corrupted and row.clean.split("\n")[-1] == row.corrupted.split("\n")[-1]
        assert len(demo_engine.tokenize(row.clean)[0]) == len(demo_engine.tokenize(row.corrupted)[0])


@pytest.mark.demo
def test_demo_antonyms_function_vector(demo_engine):
    """No accuracy threshold: the numbers are printed (the report quotes them). The vector added at
    L12 raises the answer's probability in the zero-shot prompts."""
    pset = template_set("antonyms", demo_engine.tokenizer, 20, seed=0, shots=10)
    result = demo_engine.function_vector(pset, 12, 10, 3.0, "fv-antonyms")
    print(f"\nantonyms-20 (10 shots): base prob in shuffled prompts {result.base_prob.mean():.4f}; top heads "
          f"{[f'L{layer}.H{head} {result.aie[layer, head]:+.4f}' for layer, head in result.heads]}")
    print(f"zero-shot accuracy without {result.accuracy_without:.0%} (p {result.prob_without.mean():.4f}), "
          f"with the vector x3 at L12 {result.accuracy_with:.0%} (p {result.prob_with.mean():.4f}); "
          f"|v| {np.linalg.norm(result.vector):.1f}, {result.seconds:.0f}s")
    assert result.aie.shape == (30, 9) and len(result.heads) == 10
    assert "fv-antonyms" in demo_engine.vectors
    assert result.prob_with.mean() > result.prob_without.mean()
