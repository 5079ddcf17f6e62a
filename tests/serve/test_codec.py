"""The wire codec rebuilds every engine result exactly and rejects what it could not have produced."""

from __future__ import annotations

import base64
import pickle

import numpy as np
import pytest

from mechscope.engine.interventions import HeadAblation, Metric, SteeringVector
from mechscope.engine.views import Views
from mechscope.serve import codec
from mechscope.workbench.requests import Outcome, RunRequest, SweepRequest
from tests.serve.conftest import CORRUPT, PROMPT, assert_same

METRIC = Metric("logit_diff", target=" Mary", foil=" John")


@pytest.fixture(scope="module")
def engine():
    from mechscope.engine.testing import tiny_engine

    return tiny_engine("llama")


def wire(value):
    return codec.decode(codec.loads(codec.dumps(codec.encode(value))))


def test_run_result_with_every_view_round_trips(engine):
    engine.add_vector("v", np.linspace(-1, 1, engine.info.d_model, dtype=np.float32))
    result = engine.run(PROMPT, [HeadAblation(layer=1, head=2), SteeringVector(layer=0, vector_id="v")],
                        views=Views.all(("L1.H2", "L0.H0")), metric=METRIC, top_k=5)
    for name in ("logit_lens", "attribution", "stats", "sink_scores", "token_logprobs", "compute"):
        assert getattr(result, name) is not None, name
    assert result.attention and np.isnan(result.token_logprobs[0])
    back = wire(result)
    assert_same(result, back)
    assert back.compute.seconds == result.compute.seconds
    assert isinstance(back.metric_info.target_ids, tuple)
    assert all(isinstance(t, tuple) for t in back.stats.top)


@pytest.mark.parametrize("kind", ["head", "resid", "atp"])
def test_sweep_results_round_trip(engine, kind):
    partials = []
    result = engine.sweep(kind, PROMPT, CORRUPT, METRIC, on_progress=partials.append)
    for piece in [*partials, result]:
        back = wire(piece)
        assert_same(piece, back)
        assert back.seconds == piece.seconds


def test_generated_tokens_vectors_and_scalars_round_trip(engine):
    tokens = engine.generate(PROMPT, max_new_tokens=4)
    assert_same(tokens, wire(tokens))
    vector = engine.build_steering_vector("s", 1, ["I love this"], ["I hate this"])
    assert_same(vector, wire(vector))
    for value in (np.float32(1.5), np.int64(-3), np.arange(6, dtype=np.uint8).reshape(2, 3),
                  np.array([np.nan, np.inf, -0.0], dtype=np.float64), np.zeros((0, 4), np.float16),
                  (1, "a", None), {"a": [1.0, float("nan")]}):
        assert_same(value, wire(value)) if not isinstance(value, dict) else None
    assert np.isnan(wire({"a": [1.0, float("nan")]})["a"][1])


def test_outcomes_round_trip(engine):
    request = SweepRequest("head", PROMPT, CORRUPT, METRIC)
    result = engine.sweep("head", PROMPT, CORRUPT, METRIC)
    for outcome in (Outcome(request, result=result, seconds=0.25), Outcome(request, error="bad"),
                    Outcome(request, cancelled=True, seconds=0.1)):
        back = codec.outcome_from_dict(request, codec.loads(codec.dumps(codec.outcome_to_dict(outcome))))
        assert back.request is request
        assert (back.error, back.cancelled, back.seconds) == (outcome.error, outcome.cancelled, outcome.seconds)
        assert_same(outcome.result, back.result)


def _nd(dtype="float32", shape=(2,), raw=b"\0" * 8):
    return {"$nd": {"dtype": dtype, "shape": list(shape), "b64": base64.b64encode(raw).decode()}}


@pytest.mark.parametrize("data", [
    _nd(dtype="object"), _nd(dtype="O"), _nd(raw=b"\0" * 7), _nd(shape=(-1,)), _nd(shape=(True,)),
    {"$nd": {"dtype": "float32", "shape": [1], "b64": "!!!"}},
    {"$nd": {"dtype": "float32", "shape": [1], "b64": "AAAAAA==", "extra": 1}},
    {"$dc": "Outcome", "request": None}, {"$dc": "TokenProb", "id": 1}, {"$dc": "os.system"},
    {"$tuple": 3}, {"$pickle": base64.b64encode(pickle.dumps(1)).decode()},
    {"$dc": "TokenProb", "id": 1, "text": "a", "prob": 0.5, "logit": 1.0, "evil": 2},
])
def test_decode_rejects_what_encode_cannot_produce(data):
    with pytest.raises(ValueError):
        codec.decode(data)


def test_decode_rejects_deep_nesting_and_encode_rejects_foreign_objects():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError):
        codec.decode(deep)
    with pytest.raises(TypeError):
        codec.encode(RunRequest(PROMPT))
    with pytest.raises(TypeError):
        codec.encode(np.array([object()]))
    with pytest.raises(ValueError):
        codec.loads(pickle.dumps({"a": 1}))


@pytest.mark.parametrize("chunks", [[b"ab", b"c\nde", b"f\n\ng", b"h"], [b"\n"], [b"x\n"], [b"a", b"b", b"c"],
                                    [b""], [b"abc\ndef\n"], [b"a" * 70000, b"b" * 70000 + b"\n"]])
def test_stream_lines_are_split_as_they_arrive(chunks):
    from mechscope.serve.client import _lines

    assert list(_lines(iter(chunks))) == [line for line in b"".join(chunks).split(b"\n") if line]
