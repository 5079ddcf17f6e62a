"""A server's life: refusing unsafe directories, a SIGKILL and restart the client reconnects across,
a clean `mechscope stop`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mechscope.engine.errors import EngineUnreachable
from mechscope.engine.interventions import HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.views import Views
from tests.serve.conftest import (
    PROMPT,
    REPO,
    assert_same,
    save_tiny,
    server_env,
    start_server,
    stop_server,
)

METRIC = Metric("logit_diff", target=" Mary", foil=" John")


def test_refuses_a_directory_open_to_group_or_others(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o750)
    os.chmod(runtime, 0o750)
    out = subprocess.run([sys.executable, "-m", "mechscope", "serve", "--model", "nowhere", "--name", "x"],
                         env=server_env(runtime), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: the socket directory {runtime} is accessible to group or others (mode 0750); "
        f"run `chmod 700 {runtime}` or choose another"]
    assert not (runtime / "x.sock").exists()


def test_runtime_directory_is_created_private(tmp_path, monkeypatch):
    from mechscope.serve.runtime import place

    monkeypatch.setenv("MECHSCOPE_RUNTIME_DIR", str(tmp_path / "fresh" / "run"))
    where = place("alpha")
    assert where.socket == tmp_path / "fresh" / "run" / "alpha.sock"
    assert oct(os.stat(where.socket.parent).st_mode & 0o777) == oct(0o700)
    with pytest.raises(Exception, match="server name"):
        place("bad name!")


def test_sigkilled_server_restarted_is_reconnected_to(tmp_path):
    from mechscope.serve import connect

    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "phoenix")
    try:
        engine = connect(runtime / "phoenix.sock", client_name="survivor")
        before = engine.run(PROMPT, [HeadAblation(1, 2)], metric=METRIC, views=Views(sinks=True))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with pytest.raises(EngineUnreachable) as info:
            engine.run(PROMPT, metric=METRIC)
        assert "\n" not in str(info.value) and "phoenix" in str(info.value)
        with pytest.raises(EngineUnreachable):
            engine.tokenize(PROMPT)
        log = tmp_path / "restart.log"
        proc = start_server(folder, runtime, "--name", "phoenix", log=log)
        assert "removed the stale socket of a dead server" in log.read_text()
        # the same client object carries on: the next call reconnects
        after = engine.run(PROMPT, [HeadAblation(1, 2)], metric=METRIC, views=Views(sinks=True))
        assert_same(before, after)
        engine.reconnect()
        assert engine.info.n_layers == 3
    finally:
        stop_server(proc)


def test_stop_by_name_shuts_down_cleanly(tmp_path):
    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    sock = tmp_path / "run" / "custom.sock"
    proc = start_server(folder, runtime, "--socket", str(sock))
    try:
        out = subprocess.run([sys.executable, "-m", "mechscope", "stop", str(sock)], env=server_env(runtime),
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "stopped custom"
        assert proc.wait(30) == 0
        assert not sock.exists() and not (runtime / "custom.json").exists()
        out = subprocess.run([sys.executable, "-m", "mechscope", "stop", "custom"], env=server_env(runtime),
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
        assert "unreachable" in out.stderr
    finally:
        stop_server(proc)
