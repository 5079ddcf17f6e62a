"""Every request kind through every path: in-process, and recorded in a session -> reopened ->
`mechscope replay --check` (a subprocess) -> exported script, and through a real `mechscope serve`
subprocess, with outcomes compared within 1e-5 on the tiny model; an engine that lacks what a kind
needs refuses it, naming the capability.

Kinds are enumerated from the request classes and the handler registry, so a kind added later
without an example here, a handler, a codec entry or a replay path fails.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mechscope.engine.interventions import FeatureSteer, HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.requests import (
    HANDLERS,
    REQUEST_TYPES,
    Summary,
    Tolerance,
    execute,
    handler_for,
    request_from_dict,
    request_to_dict,
)
from mechscope.requests import kinds as request_kinds
from mechscope.requests.kinds import (
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
    Request,
    RoleHeadsRequest,
    RunRequest,
    RunSetRequest,
    SetAttentionRequest,
    SweepRequest,
    SweepSetRequest,
    TemplateSetRequest,
    ValidateRequest,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
METRIC = Metric("logit_diff", " Mary", " John")
ROWS = PromptSet("two", (
    PromptRow(CLEAN, CORRUPT, " Mary", " John"),
    PromptRow("Alice and Bob walked to the park, and Bob handed a book to",
              "Alice and Bob walked to the park, and Alice handed a book to", " Alice", " Bob"),
))
# An in-context task over words that are one token in the tiny tokenizer (labels shuffled in corrupted).
ICL = PromptSet("icl", (
    PromptRow("Mary: John\nstore: drink\nAlice:", "Mary: drink\nstore: John\nAlice:", " Bob", " Alice"),
    PromptRow("dog: moon\nBob: Alice\nstore:", "dog: Alice\nBob: moon\nstore:", " drink", " store"),
))
CLOSE = Tolerance(1e-5, 1e-5, 0.0, "1e-5")


def _sae_folder() -> str:
    """A random SAE on L1.resid_post of the tiny model, saved in the SAELens layout for the feature kinds."""
    from mechscope.engine.features.cards import Context, FeatureIndex, save_index
    from mechscope.engine.features.formats import save_saelens
    from tests.features.saes import random_sae

    folder = Path(tempfile.mkdtemp(prefix="every-request-sae-")) / "sae"
    saved = save_saelens(random_sae("L1.resid_post", d_in=32, d_sae=64, seed=3), folder)
    # A fabricated index beside it, so the feature card carries contexts and a density.
    top = [[Context(1.5 - 0.1 * i, ["When", " Mary", " and"], 1) for i in range(f % 3)] for f in range(64)]
    save_index(FeatureIndex(tokens=1000, density=[f / 640 for f in range(64)], top=top), saved)
    return str(saved)


SAE_FOLDER = _sae_folder()

# One example request per kind, on the tiny model (d_model 32, 3 layers x 4 heads).
EXAMPLES: dict[str, Request] = {
    # a feature edit naming its SAE by folder replays and exports with nothing attached
    "run": RunRequest(CLEAN, CORRUPT, METRIC, (HeadAblation(1, 2), FeatureSteer("L1.resid_post", SAE_FOLDER, 3, 2.0)),
                      top_k=5),
    "validate": ValidateRequest(CLEAN, CORRUPT, (HeadAblation(0, 1),)),
    "sweep": SweepRequest("head", CLEAN, CORRUPT, METRIC, "noising", (HeadAblation(2, 0),)),
    "generate": GenerateRequest(CLEAN, None, (HeadAblation(0, 0),), max_new_tokens=6),
    "build_vector": BuildVectorRequest("happy", 1, ("I love this movie",), ("I hate this film",)),
    "add_vector": AddVectorRequest("ones", np.linspace(-1.0, 1.0, 32, dtype=np.float32)),
    "reference_prompts": ReferencePromptsRequest(("The cat sat on the mat", "One two three")),
    "run_set": RunSetRequest(ROWS, "logit_diff", (HeadAblation(1, 0),)),
    "sweep_set": SweepSetRequest(ROWS, "logit_diff", "noising", "prompts"),
    "estimate": EstimateRequest(ROWS, "atp", verify_top_k=2),
    "template_set": TemplateSetRequest("ioi", 4, 0),
    "detect_heads": DetectHeadsRequest(),
    "massive": MassiveRequest(ROWS, 3.0),
    "feature_activations": FeatureActivationsRequest(CLEAN, SAE_FOLDER, top_k=5),
    "feature_card": FeatureCardRequest(SAE_FOLDER, 7, k=4),
    "feature_attribution": FeatureAttributionRequest(CLEAN, SAE_FOLDER, None, METRIC, (HeadAblation(2, 1),),
                                                     top_n=8, verify=4),
    "function_vector": FunctionVectorRequest(ICL, 1, top_heads=3, coeff=2.0, name="fv-icl"),
    "set_attention": SetAttentionRequest(ROWS, 1, 2),
    "role_heads": RoleHeadsRequest(ROWS),
    "path_patch": PathPatchRequest("L0.H1", ("L1.H2.q", "L2.H0.k", "L1.mlp", "resid_final"), CLEAN, CORRUPT,
                                   METRIC),
    "path_sweep": PathSweepRequest("L2.H1.v", CLEAN, CORRUPT, METRIC, "denoising", (HeadAblation(2, 0),)),
}
KINDS = sorted(REQUEST_TYPES)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama (seed 0) saved as a model folder, loadable by path in subprocesses."""
    from tests.sessions.conftest import save_tiny_folder

    return save_tiny_folder(tmp_path_factory.mktemp("tiny-llama"), seed=0)


def request_classes() -> list[type]:
    """Every request dataclass the vocabulary defines (a class whose `kind` is a class constant)."""
    return [cls for _, cls in inspect.getmembers(request_kinds, inspect.isclass)
            if cls.__module__ == request_kinds.__name__ and dataclasses.is_dataclass(cls)
            and isinstance(getattr(cls, "kind", None), str)
            and "kind" not in {f.name for f in dataclasses.fields(cls)}]


def test_every_request_class_is_a_kind_with_a_handler_and_an_example() -> None:
    classes = request_classes()
    assert {cls.kind for cls in classes} == set(REQUEST_TYPES)
    assert set(HANDLERS) == set(classes)
    assert set(EXAMPLES) == set(REQUEST_TYPES)


# -- paths a request can take to an engine ---------------------------------------------------------

def in_process(folder: Path, request: Request) -> Summary:
    """Execute on an engine in this process (loaded afresh, so no earlier request's state leaks in)."""
    from mechscope.engine import Engine

    outcome = execute(Engine.load(str(folder), device="cpu"), request)
    assert outcome.ok, outcome.error
    return handler_for(request).summarise(outcome.result)


class Served:
    """One `mechscope serve` subprocess on the tiny model folder, started by the first served request
    and stopped when this module's tests end."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.remote: Any = None
        self.runtime: Path | None = None

    def engine(self, folder: Path) -> Any:
        from mechscope.serve import connect
        from tests.serve.conftest import start_server

        if self.remote is None:
            runtime = self.runtime = Path(tempfile.mkdtemp(prefix="every-served-"))
            runtime.chmod(0o700)
            self.proc = start_server(folder, runtime, "--name", "every",
                                     env={"MECHSCOPE_CACHE_DIR": str(runtime / "cache")})
            self.remote = connect(runtime / "every.sock", client_name="every-request")
        return self.remote

    def stop(self) -> None:
        from tests.serve.conftest import stop_server

        if self.remote is not None:
            self.remote.close()
        if self.proc is not None:
            stop_server(self.proc)
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)


SERVER = Served()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_server() -> Iterator[None]:
    yield
    SERVER.stop()


def served(folder: Path, request: Request) -> Summary:
    """Execute through the server: the request crosses the wire whole and its outcome comes back."""
    outcome = execute(SERVER.engine(folder), request)
    assert outcome.ok, outcome.error
    assert outcome.request is request
    return handler_for(request).summarise(outcome.result)


PATHS: dict[str, Callable[[Path, Request], Summary]] = {"in_process": in_process, "served": served}


def assert_close(kind: str, expected: Summary, got: Summary) -> None:
    problems = handler_for(REQUEST_TYPES[kind]).compare(expected, got, CLOSE)
    assert problems == [], problems


# -- the recorded session, shared by every kind's checks -------------------------------------------

@dataclasses.dataclass
class Recorded:
    path: Path
    seqs: dict[str, int]  # kind -> seq of its request event
    expected: dict[str, Summary]  # kind -> the summary of the in-process outcome that was recorded
    replay_check: subprocess.CompletedProcess
    exported: dict[int, dict[str, Any]]  # seq -> the exported script's summary
    export_run: subprocess.CompletedProcess


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MECHSCOPE_QUIET": "1", "OMP_NUM_THREADS": "1",
            "MECHSCOPE_DATA_DIR": str(root / "data"), "MECHSCOPE_CACHE_DIR": str(root / "cache")}


@pytest.fixture(scope="module")
def recorded(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Every example executed in order on one engine and recorded; then the session is replayed with
    `mechscope replay --check` and exported, and the exported script is run (one subprocess each)."""
    from mechscope.engine import Engine
    from mechscope.sessions import Session
    from mechscope.sessions.export import export_script

    root = tmp_path_factory.mktemp("every-request")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHSCOPE_CACHE_DIR", str(root / "cache"))
        engine = Engine.load(str(tiny_folder), device="cpu")
        session = Session.create("every", engine=engine, root=root / "sessions")
        seqs, expected = {}, {}
        for kind in KINDS:
            if kind not in EXAMPLES:
                continue  # test_every_request_class_is_a_kind_with_a_handler_and_an_example fails
            outcome = execute(engine, EXAMPLES[kind])
            assert outcome.ok, (kind, outcome.error)
            seqs[kind] = session.record_outcome(outcome).seq
            expected[kind] = handler_for(outcome.request).summarise(outcome.result)
        session.close()
        env = _env(root)
        check = subprocess.run([sys.executable, "-m", "mechscope", "replay", str(session.path), "--check"],
                               capture_output=True, text=True, env=env, timeout=600)
        script = root / "every.py"
        script.write_text(export_script(Session.open(session.path), filename="every.py"))
        summaries = root / "summaries.json"
        run = subprocess.run([sys.executable, str(script), str(tiny_folder), "--summaries", str(summaries)],
                             capture_output=True, text=True, env=env, timeout=600, cwd=root)
        exported = {item["seq"]: item for item in json.loads(summaries.read_text())} if run.returncode == 0 else {}
    return Recorded(session.path, seqs, expected, check, exported, run)


def _summary(item: dict[str, Any]) -> Summary:
    return Summary(item["outcome"], {name: np.asarray(values, dtype=np.float32)
                                     for name, values in item["arrays"].items()})


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_path_gives_the_recorded_outcome(kind: str, path: str, recorded: Recorded,
                                               tiny_folder: Path) -> None:
    request = EXAMPLES[kind]
    assert request_from_dict(json.loads(json.dumps(request_to_dict(request)))).kind == kind
    assert_close(kind, recorded.expected[kind], PATHS[path](tiny_folder, request))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_recorded_replayed_and_exported(kind: str, recorded: Recorded,
                                                      tiny_folder: Path) -> None:
    from mechscope.engine import Engine
    from mechscope.sessions import Session
    from mechscope.sessions.replaying import replay_step

    session = Session.open(recorded.path)
    event = next(e for e in session.events if e.seq == recorded.seqs[kind])
    assert event.kind == "request"
    request, summary = session.outcome(event)
    assert request_to_dict(request) == request_to_dict(EXAMPLES[kind])  # the record is the request
    assert_close(kind, recorded.expected[kind], summary)  # reopened as it was recorded

    engine = Engine.load(str(tiny_folder), device="cpu")
    step = replay_step(session, engine, event, CLOSE)
    assert step.matches, step.detail
    assert_close(kind, recorded.expected[kind], step.recomputed_summary)

    assert recorded.replay_check.returncode == 0, recorded.replay_check.stdout + recorded.replay_check.stderr
    row = next(line for line in recorded.replay_check.stdout.splitlines()
               if line.split()[:2] == [str(event.seq), kind])
    assert row.rstrip().endswith(" ok")

    assert recorded.export_run.returncode == 0, recorded.export_run.stderr
    exported = recorded.exported[event.seq]
    assert exported["kind"] == kind
    assert_close(kind, recorded.expected[kind], _summary(exported))


@pytest.mark.parametrize("kind", KINDS)
def test_an_engine_without_what_a_kind_needs_refuses_it(kind: str) -> None:
    class Bare:
        capabilities: frozenset[str] = frozenset()

    outcome = execute(Bare(), EXAMPLES[kind])
    need = handler_for(REQUEST_TYPES[kind]).needs[0]
    assert outcome.error is not None and outcome.error.startswith("Bare cannot ")
    assert outcome.error.endswith(f"(capability '{need}')")


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_stopped_before_it_starts_never_reaches_the_engine(kind: str) -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine was asked for {name!r}")

    outcome = execute(Untouchable(), EXAMPLES[kind], should_stop=lambda: True)
    assert outcome.cancelled and outcome.result is None and outcome.error is None


@pytest.mark.parametrize("kind, edit, message", [
    ("sweep", lambda d: d["metric"].update(position=0.5), "sweep.metric.position must be an integer, got float"),
    ("sweep", lambda d: d.update(sweep_kind=None), "sweep.sweep_kind must be one of"),
    ("sweep", lambda d: d.update(clean=7), "sweep.clean must be a string, got int"),
    ("run_set", lambda d: d.update(prompt="x"), "run_set.prompt must be one of"),
    ("estimate", lambda d: d.update(method="x/y"), "estimate.method must be one of"),
])
def test_a_field_of_the_wrong_type_is_refused_by_every_reader_naming_it(kind: str, edit, message: str) -> None:
    """A session line, a served message and an exported script all rebuild requests here: a float
    position used to reach the engine and fail mid-replay with an IndexError."""
    data = json.loads(json.dumps(request_to_dict(EXAMPLES[kind])))
    edit(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        request_from_dict(data)
