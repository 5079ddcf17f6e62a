"""Estimate-then-verify: verified heads equal single-head patches; the auto choice contains the top heads."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.engine import Engine, HeadAblation
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.set_runs import sweep_set
from mechscope.engine.testing import tiny_model, tiny_tokenizer
from mechscope.engine.verification import choose_heads, estimate_and_verify, recall_at, uncertainty

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
