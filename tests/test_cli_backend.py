"""`--backend native|nnsight|ndif`: checked before loading, recorded in sessions, replayable across."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechscope import cli
from tests.sessions.helpers import record_ioi_session
from tests.test_cli_options import _refused

nnsight = pytest.importorskip("nnsight")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from mechscope.engine.testing import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-backend")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_backend_is_refused_where_it_cannot_apply(capsys, monkeypatch) -> None:
    assert "give it to `mechscope serve`" in _refused(["--backend", "nnsight", "--attach", "x"], capsys)
    assert "does not apply to `mechscope sessions`" in _refused(["--backend", "nnsight", "sessions"],
                                                                 capsys)
    assert "needs --model" in _refused(["inspect", "--backend", "ndif", "hi"], capsys)
    monkeypatch.setattr("mechscope.backends.nnsight_available", lambda: False)
    for argv in (["--backend", "nnsight", "inspect", "hi"], ["inspect", "--backend", "nnsight", "hi"],
                 ["serve", "--backend", "nnsight"]):
        assert "needs nnsight: pip install" in _refused(argv, capsys)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", "--backend", "tpu", "hi"])
    assert exit_info.value.code == 2


def test_inspect_runs_on_the_nnsight_backend(tiny_folder, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MECHSCOPE_QUIET", "1")
    assert cli.main(["--backend", "nnsight", "inspect", "--model", str(tiny_folder), "--device", "cpu",
                     "--dtype", "float32", "hi", "--top-k", "2"]) == 0
    assert f"model {tiny_folder.name} (" in capsys.readouterr().out


def test_sessions_record_the_backend_and_replay_across_backends(tiny_folder, capsys, monkeypatch) -> None:
    from mechscope.backends import load_backend
    from mechscope.engine import Engine
    from mechscope.sessions import Session

    monkeypatch.setenv("MECHSCOPE_QUIET", "1")
    native = Engine.load(str(tiny_folder), device="cpu", dtype="float32")
    record_ioi_session(native, "native-rec")
    assert Session.open("native-rec").manifest["model"]["backend"] == {"backend": "native"}
    assert cli.main(["sessions", "show", "native-rec"]) == 0
    assert 'backend {"backend": "native"}' in capsys.readouterr().err

    model = ["--model", str(tiny_folder), "--device", "cpu", "--dtype", "float32"]
    assert cli.main(["--backend", "nnsight", *model, "replay", "native-rec"]) == 0, capsys.readouterr()
    capsys.readouterr()

    traced = load_backend(str(tiny_folder), backend="nnsight", device="cpu", dtype="float32")
    session = Session.create("nnsight-rec", engine=traced)
    recorded = session.manifest["model"]["backend"]
    assert recorded == traced.backend.to_dict() and recorded["backend"] == "nnsight"
    session.close()
    reopened = Session.open("nnsight-rec")  # the reader accepts the entry
    assert reopened.manifest["model"]["backend"] == recorded
    assert cli.main(["sessions", "show", "nnsight-rec"]) == 0
    shown = capsys.readouterr().err.splitlines()[0]
    assert json.loads(shown.split(" · backend ", 1)[1]) == recorded


def test_every_local_engine_forgets_a_vector(tiny_folder) -> None:
    import numpy as np

    from mechscope.backends import load_backend
    from mechscope.engine import Engine

    for engine in (Engine.load(str(tiny_folder), device="cpu", dtype="float32"),
                   load_backend(str(tiny_folder), backend="nnsight", device="cpu", dtype="float32")):
        engine.add_vector("v", np.ones(engine.info.d_model, dtype=np.float32))
        engine.remove_vector("v")
        engine.remove_vector("v")  # forgetting twice is no error
        assert "v" not in engine.vectors
