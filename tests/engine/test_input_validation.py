"""Odd or hostile input to the engine becomes one-line MechscopeErrors naming what is wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechscope.engine import (
    ActivationPatch,
    Engine,
    HeadAblation,
    HeadScale,
    Intervention,
    InterventionError,
    Metric,
    NeuronClamp,
    PromptError,
    SteeringVector,
)
from mechscope.engine.hooks import count_hooks
from mechscope.engine.testing import FAMILIES, tiny_engine, tiny_model, tiny_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"
SURROGATE = "a\ud800b"


@pytest.fixture(scope="module")
def engine():
    engine = tiny_engine("llama")
    engine.add_vector("up", np.ones(engine.info.d_model, dtype=np.float32))
    return engine


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_a_lone_surrogate_is_a_prompt_error_everywhere(engine):
    for call in (lambda: engine.run(SURROGATE), lambda: engine.tokenize(SURROGATE),
                 lambda: engine.generate(SURROGATE, max_new_tokens=1),
                 lambda: engine.sweep("head", SURROGATE, PROMPT, Metric("prob", target=" Mary")),
                 lambda: engine.run(PROMPT, metric=Metric("prob", target=" \udfffMary")),
                 lambda: engine.set_reference_prompts([SURROGATE])):
        with pytest.raises(PromptError) as info:
            call()
        assert "U+D800" in _one_line(info) or "U+DFFF" in _one_line(info)
    # as a patch's source prompt the error names the patch
    with pytest.raises(InterventionError, match="patch L1.H0") as info:
        engine.run(PROMPT, [ActivationPatch("L1.H0", SURROGATE, positions=[0])])
    _one_line(info)
    assert count_hooks(engine.model) == 0
    assert engine.run(PROMPT).top  # still usable


@pytest.mark.parametrize("family", FAMILIES)
def test_generating_from_a_prompt_that_fills_the_context_says_so(family):
    engine = tiny_engine(family)
    full = " ".join(["Mary"] * (engine.info.max_context + 10))
    assert len(engine.run(full).token_ids) == engine.info.max_context
    with pytest.raises(PromptError, match="fills the model's context") as info:
        engine.generate(full, max_new_tokens=3)
    _one_line(info)
    assert engine.generate(full, max_new_tokens=0) == []
    assert count_hooks(engine.model) == 0


BAD_NUMBERS = [math.nan, math.inf, -math.inf, 1e40, -1e39, "nan"]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("make", [
    lambda v: HeadScale(1, 2, v),
    lambda v: SteeringVector(1, "up", v),
    lambda v: NeuronClamp(1, 3, v),
], ids=["head_scale", "steering", "clamp"])
def test_non_finite_numbers_are_refused_when_the_intervention_is_built(make, value):
    with pytest.raises(InterventionError) as info:
        make(value)
    message = _one_line(info)
    assert message.split(":")[0].split()[0] in ("scale", "steer", "clamp")
    assert isinstance(info.value, ValueError)  # dialogs and session loading catch ValueError
    good = make(2.0).to_dict()
    key = next(k for k in ("factor", "coeff", "value") if k in good)
    with pytest.raises(ValueError, match="finite"):
        Intervention.from_dict({**good, key: value})


def test_numbers_that_overflow_the_models_dtype_are_refused_at_compile_time():
    half = Engine(tiny_model("llama").half(), tiny_tokenizer())
    half.add_vector("big", np.full(half.info.d_model, 100.0, dtype=np.float32))
    for bad in (HeadScale(1, 2, 1e5), NeuronClamp(1, 3, -7e4), SteeringVector(1, "big", 1e3)):
        with pytest.raises(InterventionError, match="overflows") as info:
            half.validate([bad], PROMPT)
        assert bad.label in _one_line(info)
    half.validate([HeadScale(1, 2, 6e4), SteeringVector(1, "big", 600.0)], PROMPT)
    # float32 takes them
    full = tiny_engine("llama")
    full.validate([HeadScale(1, 2, 1e5), NeuronClamp(1, 3, -7e4)], PROMPT)


def test_good_values_still_run(engine):
    result = engine.run(PROMPT, [HeadScale(1, 2, 1e3), NeuronClamp(1, 3, -50.0), SteeringVector(1, "up", 1e3),
                                 HeadAblation(0, 1)])
    assert np.all(np.isfinite(result.logits))
