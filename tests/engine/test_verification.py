"""Estimate-then-verify: verified heads equal single-head patches; the auto choice contains the top heads."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.engine import Engine, HeadAblation
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.set_runs import sweep_set
from mechscope.engine.testing import tiny_model, tiny_tokenizer
from mechscope.engine.verification import candidates, estimate_and_verify, recall_at

PAIR = PromptRow("When Mary and John went to the store, John gave a drink to",
                 "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
TWO = PromptSet("two", (PAIR, PromptRow("Alice and Bob walked to the park, and Bob handed a book to",
                                        "Alice and Bob walked to the park, and Alice handed a book to",
                                        " Alice", " Bob")))


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma2"])
def engine(request):
    return Engine(tiny_model(request.param), tiny_tokenizer(), source=f"tiny-{request.param}")


def test_verified_values_equal_single_head_resample_patches(engine):
    a = engine.adapter
    result = estimate_and_verify(engine, TWO, verify=a.n_layers * a.n_heads, max_batch=5)
    assert len(result.exact) == a.n_layers * a.n_heads
    for (layer, head), value in result.exact.items():
        patched = engine.run_set(TWO, "logit_diff", (HeadAblation(layer, head, "resample"),))
        assert value == pytest.approx(float(np.mean(patched.values - patched.baseline)), abs=1e-5)


def test_verified_values_equal_the_set_sweep_denoising(engine):
    result = estimate_and_verify(engine, TWO, direction="denoising", verify=6, kind="prob")
    sweep = sweep_set(engine, TWO, kind="prob", direction="denoising").mean
    for (layer, head), value in result.exact.items():
        assert value == pytest.approx(sweep[layer, head], abs=1e-5)


def test_the_estimate_is_the_estimator_s_and_verify_zero_patches_nothing(engine):
    result = estimate_and_verify(engine, TWO, verify=0)
    assert result.exact == {}
    np.testing.assert_allclose(result.estimated, engine.estimate(TWO, "atp").mean, atol=1e-6)


def test_verify_k_takes_the_estimate_s_top_k_by_magnitude(engine):
    result = estimate_and_verify(engine, TWO, verify=3)
    order = np.argsort(-np.abs(result.estimated).ravel(), kind="stable")[:3]
    assert sorted(result.exact) == sorted(divmod(int(i), result.estimated.shape[1]) for i in order)
    values = result.values
    for (layer, head), value in result.exact.items():
        assert values[layer, head] == value


def test_negative_verify_is_refused(engine):
    with pytest.raises(ValueError, match="verify"):
        estimate_and_verify(engine, TWO, verify=-1)


def test_a_non_atp_estimate_is_verified_from_its_own_base_pass(engine):
    result = estimate_and_verify(engine, TWO, "eap-ig", steps=2, verify=4)
    sweep = sweep_set(engine, TWO).mean
    np.testing.assert_allclose(result.estimated, engine.estimate(TWO, "eap-ig", 2).mean, atol=1e-6)
    assert len(result.exact) == 4
    for (layer, head), value in result.exact.items():
        assert value == pytest.approx(sweep[layer, head], abs=1e-5)


def test_auto_verification_reports_exact_values_within_its_limit(engine):
    result = estimate_and_verify(engine, TWO)
    a = engine.adapter
    assert 0 < len(result.exact) <= a.n_layers * a.n_heads
    sweep = sweep_set(engine, TWO).mean
    for (layer, head), value in result.exact.items():
        assert value == pytest.approx(sweep[layer, head], abs=1e-5)
    assert result.uncertainty is not None and result.uncertainty.shape == result.estimated.shape


# ---------------------------------------------------------------------------- choosing (synthetic)


def test_first_candidates_are_the_estimate_s_top_and_the_largest_output_changes():
    estimated = np.array([[5.0, 0.1, -4.0], [0.0, 0.2, 3.0]])
    change = np.array([[1.0, 9.0, 1.0], [8.0, 0.1, 1.0]])
    heads, _ = candidates(estimated, change, {}, top=2)
    assert heads == [(0, 0), (0, 2), (0, 1), (1, 0)]


def test_a_head_is_verified_next_when_its_bound_reaches_the_top_found_so_far():
    estimated = np.array([[5.0, 0.0, -4.0, 0.0]])
    change = np.array([[1.0, 3.0, 1.0, 0.5]])
    # verified: (0,0) exact 5.5 and (0,2) exact -4.0; the largest error per unit change is 0.5 / 1.0
    exact = {(0, 0): 5.5, (0, 2): -4.0}
    heads, uncertainty = candidates(estimated, change, exact, top=2)
    np.testing.assert_allclose(uncertainty, [[0.5, 1.5, 0.5, 0.25]])
    assert heads == []  # bounds 1.5 and 0.25 stay below the second-largest exact magnitude, 4.0
    exact = {(0, 0): 5.5, (0, 2): -1.0}  # error 3.0 per unit: (0,1) may reach 1.0, (0,3) too
    heads, _ = candidates(estimated, change, exact, top=2)
    assert heads == [(0, 1), (0, 3)]


def test_candidates_stop_at_the_limit():
    estimated = np.arange(12.0).reshape(3, 4)
    change = np.ones((3, 4))
    heads, _ = candidates(estimated, change, {}, top=2, limit=3)
    assert len(heads) == 3
    heads, _ = candidates(estimated, change, {(2, 3): 11.0, (2, 2): 0.0, (2, 1): 9.0}, top=2, limit=3)
    assert heads == []


def test_recall_counts_the_exact_top_k_found_in_the_values_top_k():
    exact = np.array([[3.0, -2.0, 1.0], [0.5, 0.0, -0.1]])
    assert recall_at(exact, exact, k=3) == 1.0
    values = np.array([[3.0, 0.0, 1.0], [0.5, 0.0, -0.1]])  # misses -2.0: 0.5 takes its place
    assert recall_at(values, exact, k=3) == pytest.approx(2 / 3)
    assert recall_at(-exact, exact, k=2) == 1.0  # magnitudes, not signs
