"""Outcomes through a real server equal the in-process engine's, exactly, for every kind of request.

The client side imports neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.metric import Metric
from mechscope.engine.views import Views
from mechscope.requests.kinds import (
    AddVectorRequest,
    BuildVectorRequest,
    GenerateRequest,
    ReferencePromptsRequest,
    RunRequest,
    SweepRequest,
    ValidateRequest,
)
from mechscope.requests.registry import execute
from tests.serve.conftest import (
    CORRUPT,
    PROMPT,
    REPO,
    assert_same,
    save_tiny,
    start_server,
    stop_server,
)

METRIC = Metric("logit_diff", target=" Mary", foil=" John")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, one_thread):
    """(in-process Engine, RemoteEngine) on the same tiny model folder, both fresh."""
    from mechscope.engine.core import Engine
    from mechscope.serve import connect

    root = tmp_path_factory.mktemp("serve-eq")
    folder = save_tiny(root / "model")
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "eq")
    remote = connect(runtime / "eq.sock", client_name="eq-test")
    yield Engine.load(str(folder), device="cpu", dtype="float32"), remote, runtime
    remote.close()
    stop_server(proc)


REQUESTS = [
    ReferencePromptsRequest(("The cat sat on the mat.", "One two three four five six.")),
    AddVectorRequest("love", np.linspace(-0.5, 0.5, 32, dtype=np.float32)),
    BuildVectorRequest("mood", 1, ("I love this movie",), ("I hate this film",)),
    RunRequest(PROMPT, metric=METRIC, views=Views.all(("L1.H2", "L2.H0"))),
    RunRequest(PROMPT, corrupted=CORRUPT, metric=METRIC, views=Views.all(("L0.H3",)), top_k=7,
               interventions=(HeadAblation(1, 2), HeadScale(2, 1, factor=2.0, positions=(3, 4)),
                              ComponentAblation(0, "mlp", mode="mean"),
                              ActivationPatch("L1.resid_pre", CORRUPT), AttentionKnockout(2, 0, 5, 2),
                              NeuronClamp(1, 7, value=3.0), SteeringVector(0, "mood", coeff=2.0),
                              HeadAblation(0, 1, mode="resample"))),
    RunRequest(PROMPT, metric=Metric("prob", target=" Mary"), views=Views(logprobs=True)),
    SweepRequest("head", PROMPT, CORRUPT, METRIC),
    SweepRequest("resid", PROMPT, CORRUPT, METRIC, direction="denoising"),
    SweepRequest("atp", PROMPT, CORRUPT, METRIC),
    GenerateRequest(PROMPT, max_new_tokens=5),
    GenerateRequest(PROMPT, interventions=(SteeringVector(1, "love", coeff=4.0),), max_new_tokens=4,
                    temperature=0.8, seed=3),
    ValidateRequest(PROMPT, interventions=(HeadAblation(0, 1),)),
    # user mistakes: the same one-line error
    ValidateRequest(PROMPT, interventions=(HeadAblation(9, 0),)),
    RunRequest(PROMPT, interventions=(SteeringVector(0, "missing"),)),
    RunRequest("", metric=METRIC),
    SweepRequest("head", PROMPT, "Too short", METRIC),
    BuildVectorRequest("bad", 7, ("a",), ("b",)),
    AddVectorRequest("wide", np.ones(5, dtype=np.float32)),
    ReferencePromptsRequest(("  ",)),
]


def test_every_request_kind_matches_in_process(pair):
    local, remote, _ = pair
    errors = 0
    for request in REQUESTS:
        partials_local: list = []
        partials_remote: list = []
        expected = execute(local, request, on_partial=partials_local.append)
        got = execute(remote, request, on_partial=partials_remote.append)
        # again, straight through the client (the second run may hit the engines' caches)
        expected_again, direct = execute(local, request), remote.execute(request)
        for reference, outcome in ((expected, got), (expected_again, direct)):
            assert outcome.request is request
            assert (outcome.error, outcome.cancelled) == (reference.error, reference.cancelled), request
            assert_same(reference.result, outcome.result, f"{request.kind}")
        assert_same(partials_local, partials_remote, f"{request.kind} partials")
        errors += expected.error is not None
    assert errors == 7
    assert_same(dict(local.vectors), dict(remote.vectors))
    assert list(local.reference_prompts) == list(remote.reference_prompts)


def test_engine_properties_and_tokens_match(pair):
    local, remote, _ = pair
    assert remote.info == local.info
    assert (remote.source, remote.weights_digest) == (local.source, local.weights_digest)
    assert remote.tokenize(PROMPT) == local.tokenize(PROMPT)
    assert [remote.decode_token(i) for i in range(0, 400, 37)] == [local.decode_token(i) for i in range(0, 400, 37)]
    result = remote.run(PROMPT, [HeadAblation(1, 1)], views=Views(sinks=True), metric=METRIC)
    assert_same(local.run(PROMPT, [HeadAblation(1, 1)], views=Views(sinks=True), metric=METRIC), result)
    streamed: list = []
    tokens = remote.generate(PROMPT, max_new_tokens=3, on_token=streamed.append)
    assert_same(tokens, streamed)


def test_an_attached_client_imports_neither_torch_nor_transformers(pair):
    _, _, runtime = pair
    code = (
        "import sys, json\n"
        "from mechscope.serve import connect\n"
        "from mechscope.engine.interventions import HeadAblation\n"
        "from mechscope.engine.metric import Metric\n"
        "from mechscope.engine.views import Views\n"
        f"engine = connect({str(runtime / 'eq.sock')!r})\n"
        f"engine.run({PROMPT!r}, [HeadAblation(1, 2)], views=Views.all(), metric=Metric('prob', target=' Mary'))\n"
        f"engine.sweep('head', {PROMPT!r}, {CORRUPT!r}, Metric(target=' Mary', foil=' John'))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'textual', 'rich') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_serve_connect_returns_a_protocol_client(pair):
    from mechscope.engine.protocol import EngineProtocol
    from mechscope.serve import connect

    _, _, runtime = pair
    with connect(str(runtime / "eq.sock")) as engine:
        assert isinstance(engine, EngineProtocol)
        assert engine.info.n_layers == 3


def test_inspect_attaches_to_a_server(pair):
    local, _, runtime = pair
    code = (
        "import sys\n"
        "from mechscope import cli\n"
        f"code = cli.main(['inspect', '--attach', {str(runtime / 'eq.sock')!r}])\n"
        "print('heavy', sorted(m for m in ('torch', 'transformers') if m in sys.modules), code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "heavy [] 0", out.stderr
    assert f"model {local.info.name} (" in out.stdout and "direct logit attribution" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mechscope", "inspect", "--attach", "nobody-here"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "MECHSCOPE_RUNTIME_DIR": str(runtime)})
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "unreachable" in out.stderr


def test_serve_benchmark_runs_on_a_tiny_model():
    out = subprocess.run([sys.executable, "benchmarks/serve.py", "--tiny", "--repeats", "2"],
                         capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    for figure in ("toggle via server", "toggle answer on the socket", "toggle via a 10 Mbit/s",
                   "attach -> first prediction", "head sweep first cell via server"):
        assert figure in out.stdout


def test_a_session_recorded_through_the_server_replays_locally_and_attached(pair, isolated_mechscope_dirs):
    from mechscope.sessions import Session, replay
    from tests.sessions.helpers import record_ioi_session

    local, remote, runtime = pair
    record_ioi_session(remote, "attached")
    session = Session.open("attached")
    for engine in (local, remote):
        steps = replay(session, engine)
        assert len(steps) == 7 and all(s.matches for s in steps), [s.detail for s in steps if not s.matches]
    out = subprocess.run([sys.executable, "-m", "mechscope", "replay", "attached", "--check", "--attach",
                          str(runtime / "eq.sock")], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
