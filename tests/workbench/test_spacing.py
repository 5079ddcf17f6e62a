"""A target typed without its leading space is spotted against the model's own probabilities."""

from __future__ import annotations

import numpy as np

from mechscope.engine.testing import tiny_engine
from mechscope.workbench.spacing import first_ids, spacing_hints, with_spaces
from mechscope.workbench.state import Inputs


def test_the_spaced_token_is_offered_when_the_model_prefers_it():
    engine = tiny_engine("gpt2")
    ids = first_ids(engine.tokenize)
    inputs = Inputs("When Mary and John went out, John gave it to", "", "Mary", " John")
    typed_id, spaced_id = ids("Mary")
    assert typed_id != spaced_id
    assert spaced_id in engine.tokenize(" Mary")[0] and typed_id in engine.tokenize("Mary")[0]
    logits = np.zeros(engine.info.vocab_size, dtype=np.float32)
    logits[spaced_id] = 5.0  # the model predicts " Mary"
    [hint] = spacing_hints(inputs, logits, ids)
    probs = np.exp(logits) / np.exp(logits).sum()
    assert (hint.field, hint.spaced) == ("target", " Mary")
    assert abs(hint.spaced_prob - probs[spaced_id]) < 1e-9 and abs(hint.typed_prob - probs[typed_id]) < 1e-9
    assert "T uses ' Mary'" in hint.note
    assert with_spaces(inputs, [hint]).target == " Mary"
    logits[spaced_id], logits[typed_id] = 0.0, 5.0  # the unspaced word wins: nothing to say
    assert spacing_hints(inputs, logits, ids) == []
    assert spacing_hints(Inputs("gave it to ", "", "Mary", ""), logits * 0, ids) == []  # trailing space
