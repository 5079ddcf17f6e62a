"""Sessions on a served engine: replay restores the server's vectors, an exported script attaches."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.serve.conftest import REPO, save_tiny, server_env, start_server, stop_server
from tests.sessions.helpers import record_ioi_session


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model folder, a server on it and the socket path."""
    root = tmp_path_factory.mktemp("remote-sessions")
    folder = save_tiny(root / "model")
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "rs")
    yield folder, runtime, runtime / "rs.sock"
    stop_server(proc)


def test_replay_on_a_remote_engine_matches_and_restores_its_vectors(served) -> None:
    from mechscope.engine import Engine
    from mechscope.serve import connect
    from mechscope.sessions import Session, replay

    folder, _, sock = served
    local = Engine.load(str(folder), device="cpu", dtype="float32")
    record_ioi_session(local, "ioi")
    remote = connect(sock, client_name="replayer")
    mine = np.arange(local.info.d_model, dtype=np.float32)
    remote.add_vector("mine", mine)
    steps = replay(Session.open("ioi"), remote)
    assert steps and all(s.matches for s in steps), [s.detail for s in steps if not s.matches]
    vectors = remote.vectors
    assert "happy" not in vectors  # the replay's vector is gone from the server again
    assert vectors["mine"].tobytes() == mine.tobytes()
    remote.remove_vector("mine")
    assert "mine" not in remote.vectors
    remote.remove_vector("never-added")  # nothing to forget: no error
    remote.close()


def test_exported_script_with_attach_connects_to_the_server(served, tmp_path) -> None:
    from mechscope import cli
    from mechscope.engine import Engine

    folder, runtime, sock = served
    record_ioi_session(Engine.load(str(folder), device="cpu", dtype="float32"), "exp")
    script = tmp_path / "exp.py"
    assert cli.main(["export", "exp", "--attach", str(sock), "-o", str(script)]) == 0
    text = script.read_text()
    assert f"ATTACH = {str(sock)!r}" in text
    env = server_env(runtime) | {"MECHSCOPE_DATA_DIR": os.environ["MECHSCOPE_DATA_DIR"]}
    # the recorded model path is made unusable: only the server can answer
    done = subprocess.run([sys.executable, str(script), "/nonexistent-model"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run:") >= 3
