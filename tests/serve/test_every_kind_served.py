"""Every request kind through a real `mechscope serve` equals the in-process engine (<= 1e-5), with its
progress streamed; a kind the served engine cannot run is refused naming the capability."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mechscope.engine.interventions import (
    FeatureAblation,
    FeatureClamp,
    HeadAblation,
    HeadInputPatch,
    SteeringVector,
)
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptRow, PromptSet, template_set
from mechscope.engine.views import Views
from mechscope.requests.kinds import (
    REQUEST_TYPES,
    AddVectorRequest,
    BuildVectorRequest,
    DetectHeadsRequest,
    EstimateRequest,
    FeatureActivationsRequest,
    FeatureAttributionRequest,
    FeatureCardRequest,
    FunctionVectorRequest,
    GenerateRequest,
    MassiveRequest,
    PathPatchRequest,
    PathSweepRequest,
    ReferencePromptsRequest,
    RoleHeadsRequest,
    RunRequest,
    RunSetRequest,
    SetAttentionRequest,
    SweepRequest,
    SweepSetRequest,
    TemplateSetRequest,
    ValidateRequest,
)
from mechscope.requests.registry import execute
from tests.serve.conftest import CORRUPT, PROMPT, save_tiny, start_server, stop_server

METRIC = Metric("logit_diff", target=" Mary", foil=" John")
# An in-context task over words that are one token in the tiny tokenizer (labels shuffled in corrupted).
ICL = PromptSet("icl", (
    PromptRow("Mary: John\nstore: drink\nAlice:", "Mary: drink\nstore: John\nAlice:", " Bob", " Alice"),
    PromptRow("dog: moon\nBob: Alice\nstore:", "dog: Alice\nBob: moon\nstore:", " drink", " store"),
))


def _sae_folder() -> str:
    """A random SAE on L1.resid_post of the tiny model (d_model 32), in the SAELens layout."""
    from mechscope.engine.features.formats import save_saelens
    from tests.features.saes import random_sae

    return str(save_saelens(random_sae("L1.resid_post", seed=6), Path(tempfile.mkdtemp(prefix="served-sae-")) / "sae"))


SAE_FOLDER = _sae_folder()


def requests_by_kind(pset: PromptSet) -> dict[str, list]:
    """One or more requests per kind; a kind added later without an entry here fails the first test."""
    return {
        "reference_prompts": [ReferencePromptsRequest(("The cat sat on the mat.", "One two three four."))],
        "add_vector": [AddVectorRequest("love", np.linspace(-0.5, 0.5, 32, dtype=np.float32))],
        "build_vector": [BuildVectorRequest("mood", 1, ("I love this movie",), ("I hate this film",))],
        "validate": [ValidateRequest(PROMPT, interventions=(HeadAblation(0, 1),))],
        "run": [RunRequest(PROMPT, corrupted=CORRUPT, metric=METRIC, views=Views.all(("L1.H2",)),
                           interventions=(HeadAblation(1, 2, "resample"), SteeringVector(0, "mood"))),
                RunRequest(PROMPT, metric=METRIC, views=Views(sinks=True, attribution=True), top_k=3),
                RunRequest(PROMPT, metric=METRIC, interventions=(
                    FeatureAblation("L1.resid_post", SAE_FOLDER, 5, positions=(3, 7)),
                    FeatureClamp("L1.resid_post", SAE_FOLDER, 9, 1.5)))],
        "sweep": [SweepRequest("head", PROMPT, CORRUPT, METRIC),
                  SweepRequest("head", PROMPT, CORRUPT, METRIC, head_input="k"),
                  SweepRequest("resid", PROMPT, CORRUPT, METRIC, "denoising", (HeadAblation(0, 0),))],
        "generate": [GenerateRequest(PROMPT, max_new_tokens=4, temperature=0.7, seed=2)],
        "run_set": [RunSetRequest(pset, "logit_diff", (HeadAblation(1, 1, "mean"),)),
                    RunSetRequest(pset, "prob", prompt="corrupted")],
        "sweep_set": [SweepSetRequest(pset), SweepSetRequest(pset, "loss", "denoising", "mean")],
        "estimate": [EstimateRequest(pset, "atp", verify_top_k=3), EstimateRequest(pset, "eap-ig", steps=2)],
        "template_set": [TemplateSetRequest("ioi", 5, seed=1)],
        "detect_heads": [DetectHeadsRequest()],
        "massive": [MassiveRequest(pset, 2.0)],
        "function_vector": [FunctionVectorRequest(ICL, 2, top_heads=2, coeff=4.0, name="fv")],
        "set_attention": [SetAttentionRequest(pset, 2, 1)],
        "role_heads": [RoleHeadsRequest(pset)],
        "path_patch": [PathPatchRequest("L0.H2", ("L2.H1.q", "L1.mlp", "resid_final"), PROMPT, CORRUPT, METRIC),
                       PathPatchRequest("L1.H0", ("L2.H3.v",), PROMPT, CORRUPT, METRIC, "denoising",
                                        (HeadInputPatch(0, 1, "k", CORRUPT),))],
        "path_sweep": [PathSweepRequest("L2.H0.q", PROMPT, CORRUPT, METRIC)],
        "feature_activations": [FeatureActivationsRequest(PROMPT, SAE_FOLDER, top_k=4)],
        "feature_card": [FeatureCardRequest(SAE_FOLDER, 5, k=3)],
        "feature_attribution": [FeatureAttributionRequest(PROMPT, SAE_FOLDER, None, METRIC, top_n=6, verify=3),
                                FeatureAttributionRequest(PROMPT, SAE_FOLDER, None, Metric("prob", " Mary"),
                                                          (HeadAblation(1, 2, "resample"),), 4, 2, CORRUPT,
                                                          include_first=True)],
    }


STREAMING = {"sweep", "generate", "sweep_set", "path_sweep"}  # kinds whose partial results stream to the client


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_thread):
    """(in-process Engine, RemoteEngine) on one tiny model folder, each with its own detector cache."""
    from mechscope.engine.core import Engine
    from mechscope.serve import connect

    root = tmp_path_factory.mktemp("every-kind")
    folder = save_tiny(root / "model")
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "kinds", env={"MECHSCOPE_CACHE_DIR": str(root / "cache")})
    remote = connect(runtime / "kinds.sock", client_name="kinds")
    local = Engine.load(str(folder), device="cpu", dtype="float32")
    yield local, remote, requests_by_kind(template_set("ioi", local.tokenizer, 4, 0))
    remote.close()
    stop_server(proc)


def assert_close(a, b, path: str = "result") -> None:
    """Equal within 1e-5 (arrays and floats), exactly otherwise, ignoring wall-clock `seconds`."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), f"{path}: {a.dtype}{np.shape(a)}"
        if a.dtype.kind == "f":
            assert np.allclose(a, b, rtol=0, atol=1e-5, equal_nan=True), f"{path}: values differ"
        else:
            assert np.array_equal(a, b), f"{path}: values differ"
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if not f.name.endswith("seconds"):  # wall-clock times (seconds, estimate_seconds)
                assert_close(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_close(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-5, f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_every_request_kind_has_requests_here():
    from mechscope.engine.testing import tiny_tokenizer

    by_kind = requests_by_kind(template_set("ioi", tiny_tokenizer(), 4, 0))
    assert set(by_kind) == set(REQUEST_TYPES)
    for kind, requests in by_kind.items():
        assert all(type(r) is REQUEST_TYPES[kind] for r in requests), kind


def test_the_client_forwards_with_the_servers_capabilities(served):
    from mechscope.engine.capabilities import DESCRIPTIONS

    _, remote, _ = served
    assert remote.capabilities == frozenset(DESCRIPTIONS)  # the native engine's, plus "forward"


@pytest.mark.parametrize("kind", sorted(REQUEST_TYPES))
def test_every_kind_served_equals_in_process(served, kind):
    local, remote, by_kind = served
    for request in by_kind[kind]:
        streamed_local: list = []
        streamed_remote: list = []
        expected = execute(local, request, on_partial=streamed_local.append)
        got = execute(remote, request, on_partial=streamed_remote.append)
        assert got.request is request
        assert (got.error, got.cancelled) == (expected.error, expected.cancelled) == (None, False), request
        assert expected.result is not None or kind in {"validate", "reference_prompts"}
        assert_close(expected.result, got.result, kind)
        assert_close(streamed_local, streamed_remote, f"{kind} partials")
        if kind in STREAMING:
            assert streamed_remote, f"{kind}: nothing streamed"


def test_a_kind_the_served_engine_lacks_is_refused_naming_the_capability(tmp_path):
    pytest.importorskip("nnsight")
    from mechscope.engine.capabilities import MissingCapability
    from mechscope.engine.testing import tiny_tokenizer
    from mechscope.serve import connect

    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "traced", "--backend", "nnsight")
    pset = template_set("ioi", tiny_tokenizer(), 4, 0)
    try:
        with connect(runtime / "traced.sock", client_name="probe") as remote:
            assert "forward" in remote.capabilities
            outcome = execute(remote, RunSetRequest(pset))
            assert outcome.error is not None and "(capability 'prompt_sets')" in outcome.error
            assert "\n" not in outcome.error
            with pytest.raises(MissingCapability) as refused:
                remote.forward(SweepSetRequest(pset))
            assert refused.value.capability == "prompt_sets"
            ran = execute(remote, RunRequest(PROMPT, metric=METRIC))  # what it has still runs
            assert ran.ok and ran.result.metric is not None
    finally:
        stop_server(proc)
