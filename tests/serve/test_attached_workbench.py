"""The workbench attached to a real server: no torch on the client, whose job waits, a SIGKILLed server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.serve.conftest import (
    LONG_CORRUPT,
    LONG_PROMPT,
    REPO,
    save_tiny,
    server_env,
    start_server,
    stop_server,
)
from tests.tui.helpers import screen_text, settle

CLIENT_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    import mechscope.cli, mechscope.cli.workbench
    from mechscope.serve import connect
    from mechscope.tui.app import MechscopeApp

    async def main():
        app = MechscopeApp(lambda progress: connect(sys.argv[1], client_name="probe"),
                           session_name="probe", source="attached")
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(600):
                await pilot.pause(0.05)
                if app.bench.run is not None:
                    break
            top = app.bench.run.result.prediction.top[0].text if app.bench.run else None
            app.exit()
        heavy = sorted(m for m in ("torch", "transformers", "safetensors.torch") if m in sys.modules)
        print(json.dumps({"heavy": heavy, "top": top}))

    asyncio.run(main())
""")


def test_attached_workbench_never_imports_torch(tmp_path):
    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "light")
    try:
        env = server_env(runtime)
        env["MECHSCOPE_DATA_DIR"] = str(tmp_path / "data")
        done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, str(runtime / "light.sock")],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["top"] is not None  # a real prediction came back from the server
        assert report["heavy"] == []
    finally:
        stop_server(proc)


async def _until(pilot, condition, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, screen_text(pilot.app)[-1500:]
        await pilot.pause(0.05)


def _status(app) -> str:
    return screen_text(app)


@pytest.mark.asyncio
async def test_status_bar_names_the_job_we_wait_behind(tmp_path, monkeypatch):
    from mechscope.engine.metric import Metric
    from mechscope.requests.kinds import RunRequest
    from mechscope.serve import connect
    from mechscope.tui.app import MechscopeApp

    monkeypatch.setenv("MECHSCOPE_DATA_DIR", str(tmp_path / "data"))
    folder = save_tiny(tmp_path / "model", num_hidden_layers=12)  # a long resid sweep
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "busy")
    sock = runtime / "busy.sock"
    try:
        app = MechscopeApp(lambda progress: connect(sock, client_name="workbench"), record=False,
                           source="attached")
        async with app.run_test(size=(160, 40)) as pilot:
            await _until(pilot, lambda: app.bench.run is not None)
            other = connect(sock, client_name="alice")
            metric = Metric("logit_diff", target=" Mary", foil=" John")
            partials: list = []

            def sweep() -> None:
                other.sweep("resid", LONG_PROMPT, LONG_CORRUPT, metric, on_progress=partials.append)

            worker = threading.Thread(target=sweep)
            worker.start()
            await _until(pilot, lambda: bool(partials), 60)  # alice's sweep holds the model
            app.bench.invalidate()
            app.workbench.submit(RunRequest(app.bench.inputs.clean + " and", top_k=3))
            await _until(pilot, lambda: "alice's resid sweep running" in _status(app), 120)
            worker.join()
            other.close()
    finally:
        stop_server(proc)


@pytest.mark.asyncio
async def test_sigkilled_server_is_reconnected_and_the_session_resumes(tmp_path, monkeypatch):
    from mechscope.serve import connect
    from mechscope.tui.app import MechscopeApp
    from mechscope.tui.remote import UNREACHABLE

    monkeypatch.setenv("MECHSCOPE_DATA_DIR", str(tmp_path / "data"))
    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "phoenix")
    sock = runtime / "phoenix.sock"
    try:
        app = MechscopeApp(lambda progress: connect(sock, client_name="workbench"),
                           session_name="s1", source="attached")
        async with app.run_test(size=(160, 40)) as pilot:
            await _until(pilot, lambda: app.bench.run is not None)
            await pilot.press("j", "l", "space")  # ablate a head: a new run, recorded in s1
            await _until(pilot, lambda: len(app.bench.edits.stack.entries) == 1
                         and len(app.bench.run.request.interventions) == 1)
            before = app.bench.run.result.prediction.top[0].text

            proc.send_signal(signal.SIGKILL)
            proc.wait()
            await pilot.press("space")  # toggle it off: this run finds the server gone
            await _until(pilot, lambda: UNREACHABLE in _status(app), 60)
            proc = start_server(folder, runtime, "--name", "phoenix", log=tmp_path / "again.log")
            await _until(pilot, lambda: app.bench.error is None
                         and not app.bench.run.request.interventions, 120)
            await settle(pilot)
            assert app.bench.error is None  # the lost run reran on the restarted server
            await pilot.press("space")  # on again, then leave as a dropped SSH login would
            await _until(pilot, lambda: len(app.bench.run.request.interventions) == 1)
            await settle(pilot)
            app.exit()

        again = MechscopeApp(lambda progress: connect(sock, client_name="workbench"),
                             session_name="s1", source="attached")
        async with again.run_test(size=(160, 40)) as pilot:
            await _until(pilot, lambda: again.bench.run is not None)
            await settle(pilot)
            entries = again.bench.edits.stack.entries
            assert len(entries) == 1 and entries[0].intervention.enabled
            assert again.bench.run.result.prediction.top[0].text == before
            again.exit()
    finally:
        stop_server(proc)


@pytest.mark.asyncio
async def test_a_server_on_the_nnsight_backend_says_so_in_the_header(tmp_path):
    pytest.importorskip("nnsight")
    from mechscope.serve import connect
    from mechscope.tui.app import MechscopeApp

    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "traced", "--backend", "nnsight")
    sock = runtime / "traced.sock"
    try:
        engine = connect(sock, client_name="probe")
        assert engine.backend.status == "nnsight (local): full recompute on every change"
        assert engine.backend.to_dict()["backend"] == "nnsight"
        engine.close()
        app = MechscopeApp(lambda progress: connect(sock, client_name="workbench"), record=False,
                           source="attached")
        async with app.run_test(size=(200, 40)) as pilot:
            await _until(pilot, lambda: app.bench.run is not None)
            assert "nnsight (local): full recompute on every change" in _status(app)
            app.exit()
    finally:
        stop_server(proc)


def test_a_native_server_has_no_backend_note(tmp_path):
    from mechscope.serve import connect

    folder = save_tiny(tmp_path / "model")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "plain")
    try:
        engine = connect(runtime / "plain.sock", client_name="probe")
        assert engine.backend is None
        engine.close()
    finally:
        stop_server(proc)
