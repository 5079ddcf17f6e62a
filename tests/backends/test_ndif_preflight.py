"""NDIF preflight: every refusal is a one-line NdifError raised before any work is sent (network mocked)."""

from __future__ import annotations

import pytest

nnsight = pytest.importorskip("nnsight", reason="the NDIF backend needs the optional nnsight extra")

from mechscope.backends import load_backend  # noqa: E402
from mechscope.backends.ndif import NdifError, Preflight, RequestSize  # noqa: E402
from mechscope.backends.nnsight_engine import NNsightEngine  # noqa: E402
from mechscope.engine.metric import Metric  # noqa: E402
from mechscope.engine.testing import tiny_model, tiny_tokenizer  # noqa: E402

REPO = "tiny/llama"
PROMPT = "When Mary and John went to the store"


def _status(state: str = "RUNNING", repo: str = REPO, level: str = "HOT") -> dict:
    return {"deployments": {repo: {"repo_id": repo, "deployment_level": level, "application_state": state,
                                   "model_key": f"nnsight.modeling.transformers.TransformersModel:{repo}"}}}


class FakeService:
    """NDIF's /env and /status answers, recording every request."""

    def __init__(self, version: str | None = None, status: dict | None = None, down: bool = False):
        self.version = nnsight.__version__ if version is None else version
        self.status = _status() if status is None else status
        self.down = down
        self.paths: list[str] = []

    def __call__(self, path: str, *args, **kwargs) -> dict:
        self.paths.append(path)
        if self.down:
            raise ConnectionError("no route to host")
        if path == "/env":
            return {"python_version": "3.11.9", "packages": {"nnsight": self.version, "torch": "2.13.0"}}
        if path == "/status":
            return self.status
        raise AssertionError(f"unexpected request {path}")


@pytest.fixture
def service(monkeypatch):
    fake = FakeService()
    monkeypatch.setattr(nnsight.ndif, "_get", fake)
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    return fake


@pytest.fixture
def remote_engine(monkeypatch, service):
    model = tiny_model("llama")
    model.config._name_or_path = REPO
    engine = NNsightEngine(model, tiny_tokenizer(), source=REPO, remote=True)

    def no_work(*args, **kwargs):
        raise AssertionError("work was sent despite a failing preflight")

    for name in ("run_trace", "acts_trace", "sweep_trace", "atp_trace"):
        monkeypatch.setattr(engine._traces, name, no_work)
    return engine


def _no_key(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_no_api_key(monkeypatch, remote_engine, service):
    _no_key(monkeypatch)
    with pytest.raises(NdifError) as error:
        remote_engine.run(PROMPT)
    assert "API key" in _one_line(error) and "NDIF_API_KEY" in str(error.value)
    assert service.paths == []  # refused before touching the network


def test_api_key_from_nnsight_config(monkeypatch, service):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "from-config")
    Preflight(REPO, 1000)(RequestSize(1, 8))
    assert service.paths == ["/env", "/status"]


def test_no_api_key_refuses_to_load_an_ndif_model(monkeypatch, service):
    _no_key(monkeypatch)
    with pytest.raises(NdifError) as error:
        load_backend("meta-llama/Llama-3.1-70B", backend="ndif")
    assert "API key" in _one_line(error)


def test_version_mismatch(remote_engine, service):
    service.version = "0.7.0"
    with pytest.raises(NdifError) as error:
        remote_engine.run(PROMPT)
    message = _one_line(error)
    assert "version mismatch" in message and "0.7.0" in message and nnsight.__version__ in message


def test_service_unreachable(remote_engine, service):
    service.down = True
    with pytest.raises(NdifError) as error:
        remote_engine.run(PROMPT)
    assert "unreachable" in _one_line(error)


def test_model_not_hosted(remote_engine, service):
    service.status = _status(repo="openai-community/gpt2")
    with pytest.raises(NdifError) as error:
        remote_engine.sweep("head", PROMPT, PROMPT, Metric("prob", " Mary"))
    message = _one_line(error)
    assert "not hosted" in message and "openai-community/gpt2" in message


def test_model_deployed_but_not_running(remote_engine, service):
    service.status = _status(state="DEPLOYING")
    with pytest.raises(NdifError) as error:
        remote_engine.generate(PROMPT, max_new_tokens=2)
    assert "not running yet" in _one_line(error)


def test_request_over_the_time_limit(remote_engine, service):
    remote_engine.preflight.n_params = 405_000_000_000
    remote_engine.max_rows = 100_000
    with pytest.raises(NdifError) as error:
        remote_engine.sweep("resid", PROMPT * 60, PROMPT * 60, Metric("prob", " Mary"))
    message = _one_line(error)
    assert "job limit" in message and "405.0B" in message


def test_small_request_passes_and_service_is_checked_once(service):
    preflight = Preflight(REPO, 135_000_000)
    preflight(RequestSize(2, 16))
    preflight(RequestSize(290, 16))
    preflight(RequestSize(2, 16, backward=True))
    assert service.paths == ["/env", "/status"]


def test_time_estimate_counts_backward_and_rows():
    forward = RequestSize(10, 100).seconds(1_000_000_000)
    assert RequestSize(10, 100, backward=True).seconds(1_000_000_000) == pytest.approx(3 * forward)
    assert RequestSize(20, 100).seconds(1_000_000_000) == pytest.approx(2 * forward)


def test_remote_engine_says_what_it_cannot_do(remote_engine):
    caps = remote_engine.backend
    assert (caps.backend, caps.execution, caps.incremental_recompute) == ("ndif", "NDIF", False)
    assert remote_engine.info.device == "NDIF"
    assert "full recompute" in caps.status


def test_attribution_needs_weights_here(monkeypatch, service):
    import torch
    import transformers

    from mechscope.engine.errors import MechscopeError
    from mechscope.engine.testing import tiny_config
    from mechscope.engine.views import Views

    with torch.device("meta"):  # what load_backend(backend="ndif") holds: the architecture, no weights
        model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))
    # nnsight's own meta build needs the hub; no trace runs before the refusal, so any wrapper will do
    engine = NNsightEngine(model, tiny_tokenizer(), source=REPO, remote=True, lm=object())
    with pytest.raises(MechscopeError) as error:
        engine.run(PROMPT, views=Views(attribution=True))
    assert "weights" in _one_line(error)
    assert "no attribution" in engine.backend.status


def test_capabilities_record_the_backend(remote_engine):
    record = remote_engine.backend.to_dict()
    assert record == {"backend": "ndif", "execution": "NDIF", "incremental_recompute": False,
                      "nnsight": nnsight.__version__}


def test_backends_import_nnsight_only_when_used():
    import json
    import subprocess
    import sys

    code = ("import sys, json, mechscope.backends, mechscope.backends.nnsight_engine; "
            "print(json.dumps('nnsight' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


def test_missing_nnsight_is_a_one_line_load_error(monkeypatch):
    import mechscope.backends as backends
    from mechscope.engine.errors import LoadError

    monkeypatch.setattr(backends, "nnsight_available", lambda: False)
    for backend in ("nnsight", "ndif"):
        with pytest.raises(LoadError, match=r"pip install 'mechscope\[nnsight\]'"):
            backends.load_backend("demo", backend=backend)
    with pytest.raises(LoadError, match="unknown backend"):
        backends.load_backend("demo", backend="vllm")
    with pytest.raises(LoadError, match='use backend="ndif"'):
        backends.load_backend("demo", backend="nnsight", remote=True)


def test_check_ndif_compares_both_sides(capsys):
    from mechscope.backends import check_ndif

    engines = []

    def load(source, backend, **kwargs):
        engines.append(backend)
        return NNsightEngine(tiny_model("llama"), tiny_tokenizer(), source=source)

    assert check_ndif.main(["tiny/llama"], load=load) == 0
    assert engines == ["ndif", "nnsight"]
    assert "OK" in capsys.readouterr().out


def test_check_ndif_reports_a_refusal_in_one_line(monkeypatch, capsys):
    from mechscope.backends import check_ndif

    _no_key(monkeypatch)
    assert check_ndif.main(["tiny/llama", "--no-local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: NDIF needs an API key") and err.count("\n") == 1
