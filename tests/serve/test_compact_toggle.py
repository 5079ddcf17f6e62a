"""A toggle's answer over the socket is small: predictions travel compact unless a request asks for
every logit, and what the workbench reads from them (Δ probabilities, pins, spacing) stays exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mechscope.engine.results import RunResult
from mechscope.requests.kinds import Outcome
from mechscope.serve import codec
from mechscope.serve.jobs import outcome_frame
from mechscope.workbench.controller import Workbench
from mechscope.workbench.pin import pin_deltas, softmax
from mechscope.workbench.state import Inputs

IOI = Inputs("When Mary and John went to the store, John gave a drink to",
             "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
LIMIT = 32 * 1024


def served(outcome: Outcome) -> RunResult:
    """The result as a client decodes the frame the server sends for `outcome`."""
    frame, blobs = codec.unpack(outcome_frame(outcome))
    return codec.outcome_from_dict(outcome.request, frame["outcome"], blobs).result


@pytest.fixture(scope="module")
def demo_shaped(demo_model_folder):
    """A random-weight model with the demo's widths and vocabulary (3 layers), the demo's tokenizer."""
    import transformers

    from mechscope.engine.core import Engine
    from mechscope.engine.testing import tiny_model

    model = tiny_model("llama", vocab_size=49152, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                       head_dim=64, intermediate_size=1536, num_hidden_layers=3, max_position_embeddings=2048)
    return Engine(model, transformers.AutoTokenizer.from_pretrained(demo_model_folder), source="demo-shaped")


@pytest.mark.demo
def test_a_served_toggle_of_the_demos_shape_stays_under_32_kib(demo_shaped):
    bench = Workbench(IOI)
    bench.select(1, 4)
    first = bench.next_run()
    toggle = bench.edits.ablate("zero")
    assert first is not None and toggle is not None and toggle.views.attention == ("L1.H4",)
    for request in (first, toggle):
        result = demo_shaped.run(request.prompt, request.interventions, views=request.views,
                                 metric=request.metric, corrupted=request.corrupted, top_k=request.top_k)
        frame = outcome_frame(Outcome(request, result=result))
        assert len(frame) <= LIMIT, f"{len(frame)} bytes"
        asked = dataclasses.replace(request, views=dataclasses.replace(request.views, logits=True))
        full = outcome_frame(Outcome(asked, result=result))
        assert len(full) > 2 * demo_shaped.info.vocab_size * 4  # asked for: every logit, raw float32


@pytest.mark.demo
def test_what_the_workbench_reads_from_compact_predictions_is_exact(demo_shaped):
    bench = Workbench(IOI)
    bench.select(2, 3)
    base_request = bench.next_run()
    toggle = bench.edits.ablate("zero")
    results = []
    for request in (base_request, toggle):
        result = demo_shaped.run(request.prompt, request.interventions, views=request.views,
                                 metric=request.metric, corrupted=request.corrupted, top_k=request.top_k)
        results.append((result, served(Outcome(request, result=result))))
    (pinned, pinned_served), (now, now_served) = results
    assert now_served.prediction.logits_kept is not None
    assert now_served.metric == now.metric and now_served.top == now.top
    # the predictions pane: each top token's probability without interventions
    ids = [t.id for t in now.top]
    assert np.allclose(softmax(now_served.baseline.logits)[ids], softmax(now.baseline.logits)[ids],
                       rtol=1e-5, atol=1e-9)
    # a pinned run's probabilities of the current top tokens
    exact, got = pin_deltas(now, pinned), pin_deltas(now_served, pinned_served)
    assert got.metric == exact.metric
    assert np.allclose(got.probs, exact.probs, rtol=0, atol=1e-6)
