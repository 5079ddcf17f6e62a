"""The nnsight backend gives the native engine's outcomes (within 1e-4), locally and serialised as for NDIF."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nnsight", reason="the nnsight backend needs the optional nnsight extra")

from mechscope.backends.nnsight_engine import NNsightEngine  # noqa: E402
from mechscope.engine.errors import InterventionError, MechscopeError  # noqa: E402
from mechscope.engine.interventions import (
    INTERVENTION_TYPES,
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadInputPatch,
    HeadScale,
    NeuronClamp,
    Place,
    SteeringVector,
)
from mechscope.engine.metric import Metric
from mechscope.engine.protocol import EngineProtocol  # noqa: E402
from mechscope.engine.testing import FAMILIES, tiny_engine, tiny_model, tiny_tokenizer  # noqa: E402
from mechscope.engine.views import Views  # noqa: E402
from tests.backends import server_like  # noqa: E402
from tests.engine.test_one_compiler import variants  # noqa: E402

TOL = 1e-4
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")
VIEWS = Views.all(attention=("L1.H2", "L0.H0"))

INTERVENTIONS = [
    HeadAblation(1, 2),
    HeadAblation(0, 1, "mean"),
    HeadAblation(2, 3, "resample", positions=(3, 5)),
    HeadScale(1, 0, 2.0),
    ComponentAblation(0, "attn", "mean"),
    ComponentAblation(1, "mlp", "zero", positions=(2,)),
    ComponentAblation(2, "attn", "resample"),
    ActivationPatch("L1.resid_pre", CORRUPT),
    ActivationPatch("L2.H1", CORRUPT),
    ActivationPatch("L0.resid_post", CORRUPT, positions=(4,)),
    ActivationPatch("L1.mlp", CORRUPT),
    SteeringVector(1, "v", 2.0),
    SteeringVector(0, "v", 1.0, "last"),
    AttentionKnockout(1, 2, 6, 3),
    NeuronClamp(1, 5, 3.0),
]


def _pair(family: str, remote: bool | str = False):
    native = tiny_engine(family)
    backend = NNsightEngine(tiny_model(family), tiny_tokenizer(), source=f"tiny-{family}", remote=remote)
    vector = np.random.default_rng(0).normal(size=native.adapter.d_model).astype(np.float32)
    native.add_vector("v", vector)
    backend.add_vector("v", vector)
    return native, backend


@pytest.fixture(scope="module", params=[False, "local", "server-like"],
                ids=["local", "remote-local", "server-like"])
def llama_pair(request):
    if request.param != "server-like":
        return _pair("llama", request.param)
    native, backend = _pair("llama", "local")
    server_like.install(backend)
    return native, backend


def _assert_same_prediction(a, b) -> None:
    assert np.abs(a.logits - b.logits).max() < TOL
    assert np.abs(a.baseline.logits - b.baseline.logits).max() < TOL
    assert abs(a.metric - b.metric) < TOL
    assert [t.id for t in a.top] == [t.id for t in b.top]
    assert (a.source_metric is None) == (b.source_metric is None)  # the run a patch copies from
    if a.source_metric is not None:
        assert abs(a.source_metric - b.source_metric) < TOL


def _assert_same_views(a, b) -> None:
    assert np.array_equal(a.logit_lens.top_ids, b.logit_lens.top_ids)
    assert np.abs(a.logit_lens.top_probs - b.logit_lens.top_probs).max() < TOL
    assert np.array_equal(a.logit_lens.target_rank, b.logit_lens.target_rank)
    assert np.abs(a.logit_lens.target_prob - b.logit_lens.target_prob).max() < TOL
    for name in ("heads", "attn_bias", "mlp", "resid_edits"):
        assert np.abs(getattr(a.attribution, name) - getattr(b.attribution, name)).max() < TOL, name
    for name in ("embed", "final_bias", "total"):
        assert abs(getattr(a.attribution, name) - getattr(b.attribution, name)) < TOL, name
    assert a.attribution.direction == b.attribution.direction
    assert set(a.attention) == set(b.attention)
    for address in a.attention:
        assert np.abs(a.attention[address] - b.attention[address]).max() < TOL
    assert np.abs(a.sink_scores - b.sink_scores).max() < TOL
    assert np.abs(a.stats.resid_norm - b.stats.resid_norm).max() < TOL
    assert abs(a.stats.median_abs - b.stats.median_abs) < TOL
    assert [t[:3] for t in a.stats.top] == [t[:3] for t in b.stats.top]
    assert np.nanmax(np.abs(a.token_logprobs - b.token_logprobs)) < TOL


@pytest.mark.parametrize("intervention", INTERVENTIONS, ids=lambda iv: iv.label)
def test_each_intervention_kind_matches_native(llama_pair, intervention):
    native, backend = llama_pair
    a = native.run(CLEAN, [intervention], VIEWS, METRIC, corrupted=CORRUPT)
    b = backend.run(CLEAN, [intervention], VIEWS, METRIC, corrupted=CORRUPT)
    _assert_same_prediction(a, b)
    _assert_same_views(a, b)
    assert b.interventions == a.interventions


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_matches_native_with_a_stack_and_every_view(family):
    native, backend = _pair(family)
    for stack in ([], INTERVENTIONS):
        a = native.run(CLEAN, stack, VIEWS, METRIC, corrupted=CORRUPT)
        b = backend.run(CLEAN, stack, VIEWS, METRIC, corrupted=CORRUPT)
        _assert_same_prediction(a, b)
        _assert_same_views(a, b)


@pytest.mark.parametrize("kind", ["head", "resid", "atp"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_sweeps_match_native(llama_pair, kind, direction):
    native, backend = llama_pair
    a = native.sweep(kind, CLEAN, CORRUPT, METRIC, direction)
    b = backend.sweep(kind, CLEAN, CORRUPT, METRIC, direction)
    assert b.values.shape == a.values.shape
    assert np.abs(a.values - b.values).max() < TOL
    assert abs(a.base_metric - b.base_metric) < TOL
    assert abs(a.source_metric - b.source_metric) < TOL
    assert (b.row_labels, b.col_labels, b.complete) == (a.row_labels, a.col_labels, True)


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "opt"])
def test_head_sweep_matches_native_on_other_families(family):
    native, backend = _pair(family)
    a = native.sweep("head", CLEAN, CORRUPT, METRIC)
    b = backend.sweep("head", CLEAN, CORRUPT, METRIC)
    assert np.abs(a.values - b.values).max() < TOL


def test_head_sweep_is_one_batched_trace(monkeypatch):
    native, backend = _pair("llama")
    calls = []
    original = backend._traces.sweep_trace

    def counting(lm, paths, ids, *args):
        calls.append(ids.shape[0])
        return original(lm, paths, ids, *args)

    monkeypatch.setattr(backend._traces, "sweep_trace", counting)
    backend.sweep("head", CLEAN, CORRUPT, METRIC)
    a = backend.adapter
    assert calls == [2 + a.n_layers * a.n_heads]  # base, source, one row per head


def test_sweep_splits_into_traces_that_fit_max_rows():
    native, backend = _pair("llama")
    backend.max_rows = 2 + 4  # one layer of four heads per trace
    a = native.sweep("head", CLEAN, CORRUPT, METRIC)
    progress = []
    b = backend.sweep("head", CLEAN, CORRUPT, METRIC, on_progress=progress.append)
    assert np.abs(a.values - b.values).max() < TOL
    assert [p.complete for p in progress] == [False, False, True]


@pytest.mark.parametrize("stack", [
    [ComponentAblation(1, "attn", "zero")],
    [ComponentAblation(2, "attn", "mean"), HeadAblation(2, 1)],
    [ActivationPatch("L1.attn", CORRUPT)],
    [ActivationPatch("L2.attn", CORRUPT, positions=(-1,)), HeadScale(2, 0, 3.0)],
    [ComponentAblation(0, "attn", "resample", positions=(3, 5))],  # not at the readout
    [ComponentAblation(1, "mlp", "zero")],
    [ActivationPatch("L2.mlp", CORRUPT), NeuronClamp(2, 3, 5.0)],
], ids=["zero-attn", "mean-attn+head", "patch-attn", "patch-attn-last+scale", "attn-elsewhere", "zero-mlp",
        "patch-mlp+clamp"])
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_attribution_under_whole_layer_edits_adds_up_to_the_metric(family, stack):
    """A replaced attention output gives its heads 0 and its write to the layer's non-head term, on
    both engines alike, and the parts add up to the metric (the total where soft-capping bends it)."""
    native, backend = _pair(family)
    views = Views(attribution=True)
    a = native.run(CLEAN, stack, views, METRIC, corrupted=CORRUPT)
    b = backend.run(CLEAN, stack, views, METRIC, corrupted=CORRUPT)
    for result in (a, b):
        assert abs(result.attribution.parts_sum() - result.attribution.total) < TOL
        if not native.adapter.final_softcap:
            assert abs(result.attribution.total - result.metric) < TOL
    for name in ("heads", "attn_bias", "mlp"):
        assert np.abs(getattr(a.attribution, name) - getattr(b.attribution, name)).max() < TOL, name
    whole = stack[0]
    layer = whole.layer if isinstance(whole, ComponentAblation) else int(whole.address[1])
    if "attn" in whole.label and (whole.positions is None or -1 in whole.positions):
        assert np.all(b.attribution.heads[layer] == 0.0)
    elif "attn" in whole.label:
        assert np.any(b.attribution.heads[layer] != 0.0)


# Kinds the backend refuses in one line: query / key / value edits act inside the attention function,
# which a trace does not reach.
REFUSED_KINDS = (HeadInputPatch,)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_registered_kind_matches_native(family):
    """Each kind of the registry, as the `+` chooser builds it and in every mode and with positions,
    gives the native engine's outcome on the nnsight backend."""
    native, backend = _pair(family)
    last = len(native.tokenize(CLEAN)[0]) - 1
    place = Place(layer=1, head=2, last=last, clean=CLEAN, corrupted=CORRUPT, vectors=("v",))
    stack = [iv for cls in INTERVENTION_TYPES for iv in variants(cls, place)]
    assert {type(iv) for iv in stack} == set(INTERVENTION_TYPES)
    for iv in stack:
        if type(iv) in REFUSED_KINDS:
            with pytest.raises(InterventionError) as refusal:
                backend.run(CLEAN, [iv], Views(), METRIC, corrupted=CORRUPT)
            assert str(refusal.value) == f"{iv.label}: {iv.kind} is not supported on the nnsight backend"
            continue
        a = native.run(CLEAN, [iv], Views(), METRIC, corrupted=CORRUPT)
        b = backend.run(CLEAN, [iv], Views(), METRIC, corrupted=CORRUPT)
        _assert_same_prediction(a, b)
        assert np.abs(a.logits - a.baseline.logits).max() > 0, iv.label  # it changed something


def test_sweeps_over_an_edited_model_say_they_need_the_native_engine():
    _, backend = _pair("llama")
    with pytest.raises(MechscopeError, match="native engine"):
        backend.sweep("head", CLEAN, CORRUPT, METRIC, interventions=[HeadAblation(0, 1)])


def test_generation_matches_native(llama_pair):
    native, backend = llama_pair
    stack = INTERVENTIONS[:4] + [SteeringVector(1, "v", 2.0)]
    a = native.generate(CLEAN, stack, max_new_tokens=5, corrupted=CORRUPT)
    b = backend.generate(CLEAN, stack, max_new_tokens=5, corrupted=CORRUPT)
    assert [t.id for t in a] == [t.id for t in b]
    assert max(abs(x.prob - y.prob) for x, y in zip(a, b)) < TOL


def test_steering_vectors_built_the_same_way(llama_pair):
    native, backend = llama_pair
    a = native.build_steering_vector("s", 2, ["I love this movie"], ["I hate this film"])
    b = backend.build_steering_vector("s", 2, ["I love this movie"], ["I hate this film"])
    assert np.abs(a - b).max() < TOL


@pytest.mark.parametrize("bad", [
    HeadAblation(7, 0),
    HeadAblation(0, 9),
    HeadAblation(0, 1, "resample"),
    AttentionKnockout(0, 0, 2, 5),
    NeuronClamp(0, 999),
    SteeringVector(0, "missing"),
    ActivationPatch("L0.attn", "short"),
])
def test_invalid_interventions_get_the_native_message(bad):
    native, backend = _pair("llama")
    with pytest.raises(InterventionError) as expected:
        native.validate([bad], CLEAN)
    with pytest.raises(InterventionError) as got:
        backend.validate([bad], CLEAN)
    assert str(got.value) == str(expected.value)
    with pytest.raises(InterventionError):
        backend.run(CLEAN, [bad])


def test_status_says_no_incremental_recompute():
    _, backend = _pair("llama")
    assert isinstance(backend, EngineProtocol)
    assert backend.backend.incremental_recompute is False
    assert "full recompute" in backend.backend.status
    result = backend.run(CLEAN, [HeadAblation(2, 1)])
    assert result.compute.mode == "full"


@pytest.fixture(scope="module")
def demo_backends(shared_cache_dir, demo_model_folder):
    from mechscope.backends import load_backend

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHSCOPE_CACHE_DIR", str(shared_cache_dir))
        return load_backend("demo", device="cpu"), load_backend("demo", device="cpu", remote="local")


@pytest.mark.demo
def test_demo_matches_native(demo_engine, demo_backends):
    stack = [HeadAblation(9, 3), HeadScale(10, 1, 0.5), ComponentAblation(4, "mlp", "resample"),
             ActivationPatch("L12.resid_pre", CORRUPT, positions=(-1,)), AttentionKnockout(5, 2, -1, 0),
             NeuronClamp(8, 100, 2.0)]
    views = Views.all(attention=("L9.H3",))
    expected = demo_engine.run(CLEAN, stack, views, METRIC, corrupted=CORRUPT)
    sweep = demo_engine.sweep("head", CLEAN, CORRUPT, METRIC)
    for backend in demo_backends:
        got = backend.run(CLEAN, stack, views, METRIC, corrupted=CORRUPT)
        _assert_same_prediction(expected, got)
        _assert_same_views(expected, got)
        assert np.abs(backend.sweep("head", CLEAN, CORRUPT, METRIC).values - sweep.values).max() < TOL


def test_nnsight_declares_the_single_prompt_work_it_offers():
    """What it declares it has methods for; prompt-set work (which needs the native engine) it declares not."""
    methods = {"run": "run", "sweep": "sweep", "generate": "generate", "vectors": "build_steering_vector",
               "reference_prompts": "set_reference_prompts", "tokenizer": "tokenize"}
    assert NNsightEngine.capabilities == frozenset(methods)
    for capability, method in methods.items():
        assert callable(getattr(NNsightEngine, method)), capability
    for method in ("run_set", "sweep_set", "estimate", "detect_heads", "massive_activations"):
        assert not hasattr(NNsightEngine, method)


def test_attention_input_requests_are_refused_naming_the_capability(llama_pair):
    from mechscope.requests import execute
    from mechscope.requests.kinds import PathPatchRequest, PathSweepRequest, SweepRequest

    _, backend = llama_pair
    refusal = "NNsightEngine cannot patch attention queries, keys and values (capability 'attention_inputs')"
    for request in (SweepRequest("head", CLEAN, CORRUPT, METRIC, head_input="q"),
                    PathPatchRequest("L0.H1", ("L1.H2.q",), CLEAN, CORRUPT, METRIC),
                    PathSweepRequest("L1.H2.q", CLEAN, CORRUPT, METRIC)):
        assert execute(backend, request).error == refusal
    assert execute(backend, SweepRequest("head", CLEAN, CORRUPT, METRIC)).ok
