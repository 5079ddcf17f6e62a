"""The wire codec rebuilds every engine result exactly and rejects what it could not have produced."""

from __future__ import annotations

import base64
import pickle

import numpy as np
import pytest

from mechscope.engine.interventions import HeadAblation, SteeringVector
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.engine.views import Views
from mechscope.requests.kinds import Outcome, RunRequest, SweepRequest
from mechscope.serve import codec
from tests.serve.conftest import CORRUPT, PROMPT, assert_same

METRIC = Metric("logit_diff", target=" Mary", foil=" John")


@pytest.fixture(scope="module")
def engine():
    from mechscope.engine.testing import tiny_engine

    return tiny_engine("llama")


def wire(value, full_logits=True):
    frame, blobs = codec.unpack(codec.pack_value({}, "value", value, full_logits))
    return codec.decode(frame["value"], 0, blobs)


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
        encoder = codec.Encoder()
        data = codec.outcome_to_dict(outcome, encoder)
        frame, blobs = codec.unpack(codec.pack({"outcome": data}, encoder.blobs))
        back = codec.outcome_from_dict(request, frame["outcome"], blobs)
        assert back.request is request
        assert (back.error, back.cancelled, back.seconds) == (outcome.error, outcome.cancelled, outcome.seconds)
        assert_same(outcome.result, back.result)


def _nd(dtype="float32", shape=(2,), blob=0):
    return {"$nd": {"dtype": dtype, "shape": list(shape), "blob": blob}}


@pytest.mark.parametrize("data", [
    _nd(dtype="object"), _nd(dtype="O"), _nd(shape=(3,)), _nd(shape=(-1,)), _nd(shape=(True,)),
    _nd(blob=1), _nd(blob=-1), _nd(blob=True),
    {"$nd": {"dtype": "float32", "shape": [2], "blob": 0, "extra": 1}},
    {"$dc": "Outcome", "request": None}, {"$dc": "TokenProb", "id": 1}, {"$dc": "os.system"},
    {"$dc": "Engine"}, {"$dc": "RunRequest", "prompt": "x"},
    {"$tuple": 3}, {"$pickle": base64.b64encode(pickle.dumps(1)).decode()},
    {"$dc": "TokenProb", "id": 1, "text": "a", "prob": 0.5, "logit": 1.0, "evil": 2},
    {"$map": [[[1], 2]]}, {"$map": [[1]]}, {"$map": 3},
    {"$logits": {"vocab": 4, "ids": _nd("int32", (1,)), "values": _nd("float32", (1,), 1), "fill": 0.0}},
    {"$logits": {"vocab": 0, "ids": _nd("int32", (2,)), "values": _nd(), "fill": 0.0}},
])
def test_decode_rejects_what_encode_cannot_produce(data):
    with pytest.raises(ValueError):
        codec.decode(data, 0, [b"\0" * 8])


def test_decode_rejects_deep_nesting_and_encode_rejects_foreign_objects(engine):
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError):
        codec.decode(deep)
    with pytest.raises(TypeError):
        codec.encode(RunRequest(PROMPT))
    with pytest.raises(TypeError):
        codec.encode(engine)
    with pytest.raises(TypeError):
        codec.encode(np.array([object()]))
    with pytest.raises(ValueError):
        codec.loads(pickle.dumps({"a": 1}))


def test_frames_are_read_back_whatever_the_chunks(engine):
    result = engine.run(PROMPT, views=Views.all(("L1.H2",)), metric=METRIC)
    frames = [codec.pack({"type": "waiting", "n": 1}), codec.pack_value({"type": "outcome"}, "value", result),
              codec.pack({"type": "end"})]
    stream = b"".join(frames)
    for size in (1, 7, 4096, len(stream)):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        read = list(codec.FrameReader(chunks))
        assert [f["type"] for f, _ in read] == ["waiting", "outcome", "end"]
        assert_same(result, codec.decode(read[1][0]["value"], 0, read[1][1]))
    with pytest.raises(ValueError):
        list(codec.FrameReader([frames[1][:-3]]))  # cut inside the arrays
    with pytest.raises(ValueError):
        list(codec.FrameReader([b'{"$bytes": [-1]}\n']))


# An in-context task over words that are one token in the tiny tokenizer (labels shuffled in corrupted).
ICL = PromptSet("icl", (
    PromptRow("Mary: John\nstore: drink\nAlice:", "Mary: drink\nstore: John\nAlice:", " Bob", " Alice"),
    PromptRow("dog: moon\nBob: Alice\nstore:", "dog: Alice\nBob: moon\nstore:", " drink", " store"),
))


def test_every_wire_type_round_trips_exactly(engine, isolated_mechscope_dirs, tmp_path):
    from mechscope.engine.features.formats import save_saelens
    from mechscope.engine.features.results import SaeQuality
    from mechscope.engine.prompt_sets import template_set
    from mechscope.engine.results import VerifiedEstimate
    from tests.features.saes import random_sae

    pset = template_set("ioi", engine.tokenizer, 4, 0)
    values = [engine.run_set(pset, "logit_diff", [HeadAblation(1, 1)]), engine.sweep_set(pset),
              engine.estimate(pset, "atp"), engine.detect_heads(), engine.massive_activations(pset, 2.0),
              pset, VerifiedEstimate("atp", np.ones((3, 4)), {(1, 2): 0.5, (0, 0): float("nan")}, 1.5),
              engine.run(PROMPT, views=Views.all(("L0.H1",)), metric=METRIC), engine.info,
              engine.sweep("attn", PROMPT, CORRUPT, METRIC), engine.generate(PROMPT, max_new_tokens=2),
              engine.feature_activations(PROMPT, str(save_saelens(random_sae("L1.resid_post"), tmp_path / "sae"))),
              SaeQuality(tokens=64, fve=0.75, l0=4.0, dead_fraction=0.5, ce_clean=2.0, ce_sae=2.5, ce_zero=6.0,
                         ce_recovered=0.875, kl=0.25, corpus="text"),
              engine.feature_card(str(tmp_path / "sae"), 3, k=4),
              engine.feature_attribution(PROMPT, str(tmp_path / "sae"), None, METRIC, top_n=5, verify=2),
              engine.path_patch("L0.H1", ("L1.H2.q", "resid_final"), PROMPT, CORRUPT, METRIC),
              engine.set_attention(pset, 1, 2), engine.function_vector(ICL, 1, n_heads=2, coeff=2.0)]
    seen: set[str] = set()

    def names(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                names(v)
        elif hasattr(value, "__dataclass_fields__"):
            seen.add(type(value).__name__)
            for name in value.__dataclass_fields__:
                names(getattr(value, name))
        elif isinstance(value, dict):
            for v in value.values():
                names(v)

    for value in values:
        assert_same(value, wire(value))
        names(value)
    assert seen == set(codec.WIRE_TYPES), "a wire type without a round trip here"


def test_a_prediction_travels_compact_unless_logits_are_asked_for(engine, monkeypatch):
    monkeypatch.setattr(codec, "KEPT_LOGITS", 20)
    result = engine.run(PROMPT, [HeadAblation(1, 2)], views=Views(sinks=True), metric=METRIC, top_k=5)
    assert result.prediction.logits_kept is None
    assert_same(result, wire(result, full_logits=True))
    back = wire(result, full_logits=False)
    for before, after in ((result.prediction, back.prediction), (result.baseline, back.baseline)):
        assert after.logits_kept is not None and 20 <= after.logits_kept <= 32
        named = [t.id for t in (*result.top, *result.baseline.top)] + [result.metric_info.target_id,
                                                                        result.metric_info.foil_id]
        assert np.array_equal(after.logits[named], before.logits[named])  # what the screen looks up
        assert after.logits.shape == before.logits.shape and after.metric == before.metric
        assert after.top == before.top
        exact = np.argsort(-before.logits)[:20]
        assert np.array_equal(after.logits[exact], before.logits[exact])
        probs = [np.exp(x.astype(np.float64) - x.max()) for x in (before.logits, after.logits)]
        probs = [p / p.sum() for p in probs]
        assert np.allclose(probs[1][exact], probs[0][exact], rtol=1e-5, atol=0)
        assert probs[1].sum() == pytest.approx(1.0)
    assert_same(result.attention, back.attention)
    assert_same(result.sink_scores, back.sink_scores)
    assert codec.wants_full_logits(RunRequest(PROMPT, views=Views.all())) is True
    assert codec.wants_full_logits(RunRequest(PROMPT)) is False
    assert codec.wants_full_logits(SweepRequest("head", PROMPT, CORRUPT, METRIC)) is True


@pytest.mark.parametrize("size", [10, 1000, 49152, 50257])
def test_top_ids_are_the_largest_values(size):
    from mechscope.serve.codec import top_ids

    rng = np.random.default_rng(size)
    for trial in range(20):
        values = (rng.standard_normal(size) * (trial + 1)).astype(np.float32)
        if trial % 2:
            values[rng.integers(0, size, size // 20 + 1)] = values.max() + 1  # a block of ties on top
        k = min(256, size)
        got = top_ids(values, k)
        assert len(set(got.tolist())) == k
        np.testing.assert_array_equal(np.sort(values[got]), np.sort(values)[-k:])
    assert top_ids(np.zeros(5, np.float32), 0).size == 0
