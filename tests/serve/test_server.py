"""One server, several clients: queueing, cancel isolation, clients that die, hostile frames, permissions."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from mechscope.engine.errors import Cancelled, MechscopeError
from mechscope.engine.interventions import HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.views import Views
from mechscope.serve.client import describe_wait
from mechscope.serve.wire import PROTOCOL_VERSION
from tests.serve.conftest import (
    LONG_CORRUPT,
    LONG_PROMPT,
    PROMPT,
    REPO,
    save_tiny,
    server_env,
    start_server,
    stop_server,
)

METRIC = Metric("logit_diff", target=" Mary", foil=" John")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on a 12-layer tiny model: a resid sweep over LONG_PROMPT takes a while."""
    root = tmp_path_factory.mktemp("serve")
    folder = save_tiny(root / "model", num_hidden_layers=12)
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    proc = start_server(folder, runtime, "--name", "shared")
    yield proc, runtime, folder
    stop_server(proc)


def connect(runtime, name):
    from mechscope.serve import connect as _connect

    return _connect(runtime / "shared.sock", client_name=name)


def wait_for(predicate, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_socket_is_0600_and_directory_0700(server):
    _, runtime, _ = server
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
    sock = runtime / "shared.sock"
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600


def test_second_serve_on_the_same_name_is_refused(server):
    _, runtime, folder = server
    out = subprocess.run([sys.executable, "-m", "mechscope", "serve", "--model", str(folder), "--name", "shared"],
                         env=server_env(runtime), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "already running" in lines[0] and "mechscope stop shared" in lines[0]
    assert (runtime / "shared.sock").exists()


def test_list_shows_the_server(server):
    _, runtime, _ = server
    with connect(runtime, "lister"):
        out = subprocess.run([sys.executable, "-m", "mechscope", "serve", "--list"], env=server_env(runtime),
                             capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    header, row = out.stdout.strip().splitlines()
    assert header.split() == ["NAME", "MODEL", "DEVICE", "MEMORY", "CLIENTS", "JOB"]
    assert row.split()[:3] == ["shared", "model", "cpu"] and "GiB" in row


def listed_clients(runtime) -> int:
    """The CLIENTS column of `mechscope serve --list` for the one server running."""
    out = subprocess.run([sys.executable, "-m", "mechscope", "serve", "--list"], env=server_env(runtime),
                         capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return int(out.stdout.strip().splitlines()[1].split()[5])  # MEMORY is "0.12 GiB"


def test_list_counts_attached_clients_and_a_killed_one_drops_at_once(server):
    _, runtime, _ = server
    dave = connect(runtime, "dave")
    wait_for(lambda: "dave" in dave.status()["clients"])
    before = listed_clients(runtime)
    code = ("import sys, time\n"
            "from mechscope.serve import connect\n"
            "engine = connect(sys.argv[1], client_name='doomed')\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    doomed = subprocess.Popen([sys.executable, "-c", code, str(runtime / "shared.sock")], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env=server_env(runtime))
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "ready"
        wait_for(lambda: "doomed" in dave.status()["clients"])
        assert listed_clients(runtime) == before + 1
    finally:
        doomed.kill()  # SIGKILL: no goodbye, only the kernel closing its connections
        doomed.wait()
    wait_for(lambda: "doomed" not in dave.status()["clients"], seconds=10)
    assert listed_clients(runtime) == before
    dave.close()
    wait_for(lambda: listed_clients(runtime) == before - 1, seconds=30)


def test_two_clients_queue_and_a_cancel_reaches_only_its_own_job(server):
    _, runtime, _ = server
    alice, bob = connect(runtime, "alice"), connect(runtime, "bob")
    partials: list = []
    results: dict = {}

    def alice_sweep():
        results["alice"] = alice.sweep("resid", LONG_PROMPT, LONG_CORRUPT, METRIC, on_progress=partials.append)

    worker = threading.Thread(target=alice_sweep)
    worker.start()
    wait_for(lambda: partials)
    # bob names alice's job: his cancel cannot reach it
    assert bob.cancel("t1") is False
    seen: list[str] = []
    bob.on_wait = lambda frame: seen.append(describe_wait(frame))
    stop_after_wait = lambda: bool(seen)  # noqa: E731 - bob gives up once he has seen he waits
    with pytest.raises(Cancelled):
        bob.sweep("head", PROMPT, PROMPT.replace("John gave", "Mary gave"), METRIC, should_stop=stop_after_wait)
    assert seen and seen[0].startswith("alice's resid sweep running")
    assert "alice" not in results  # a queued job's cancel answers at once, not after alice's sweep
    worker.join(120)
    assert results["alice"].complete
    recent = {(j["client"], j["kind"]): j["state"] for j in bob.status()["recent"]}
    assert recent[("alice", "resid sweep")] == "done"
    assert recent[("bob", "head sweep")] == "cancelled"
    # both clients are still served
    assert alice.run(PROMPT, metric=METRIC).metric == bob.run(PROMPT, metric=METRIC).metric
    alice.close()
    bob.close()


def test_a_headless_command_says_whose_job_it_waits_behind(server):
    _, runtime, _ = server
    alice = connect(runtime, "alice")
    partials: list = []
    worker = threading.Thread(target=lambda: alice.sweep("resid", LONG_PROMPT, LONG_CORRUPT, METRIC,
                                                         on_progress=partials.append))
    worker.start()
    wait_for(lambda: partials)
    out = subprocess.run([sys.executable, "-m", "mechscope", "inspect", "--attach", "shared", PROMPT],
                         env=server_env(runtime), capture_output=True, text=True, cwd=REPO, timeout=300)
    worker.join(120)
    alice.close()
    assert out.returncode == 0, out.stderr
    waits = [line for line in out.stderr.splitlines() if line.startswith("waiting on shared: ")]
    # one line for the job it waited behind, not one per heartbeat
    assert len(waits) == 1 and "alice's resid sweep running" in waits[0], out.stderr
    assert "top-" in out.stdout


def test_own_cancel_stops_a_running_sweep(server):
    _, runtime, _ = server
    carol = connect(runtime, "carol")
    partials: list = []
    with pytest.raises(Cancelled):
        carol.sweep("resid", LONG_PROMPT, LONG_CORRUPT, METRIC, on_progress=partials.append,
                    should_stop=lambda: bool(partials))
    assert partials and not partials[-1].complete
    assert carol.status()["recent"][-1]["state"] == "cancelled"
    carol.close()


def test_a_client_killed_mid_sweep_has_its_job_cancelled_and_the_server_keeps_serving(server):
    _, runtime, _ = server
    code = (
        "import sys\n"
        "from mechscope.serve import connect\n"
        "from mechscope.engine.metric import Metric\n"
        f"engine = connect({str(runtime / 'shared.sock')!r}, client_name='victim')\n"
        "def progress(partial):\n"
        "    print('partial', flush=True)\n"
        f"engine.sweep('resid', {LONG_PROMPT!r}, {LONG_CORRUPT!r}, Metric(target=' Mary', foil=' John'),"
        " on_progress=progress)\n"
        "print('finished', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "partial"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    watcher = connect(runtime, "watcher")
    victim = wait_for(lambda: next((j for j in watcher.status()["recent"] if j["client"] == "victim"), None))
    assert victim["state"] == "cancelled"
    assert watcher.run(PROMPT, [HeadAblation(1, 1)], metric=METRIC, views=Views(sinks=True)).sink_scores.shape == (12, 4)
    watcher.close()


def _raw(runtime, data: bytes, read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(runtime / "shared.sock"))
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _post(path: str, body: bytes, length: int | None = None, extra: str = "") -> bytes:
    length = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\nconnection: close\r\n{extra}\r\n").encode() + body


def hostile_frames(rng: random.Random) -> list[tuple[bytes, bool]]:
    """(bytes to send, whether a 4xx answer is expected) — 500 of them."""
    import pickle

    good = {"request": {"kind": "run", "prompt": PROMPT}, "job": "x"}
    pickled = pickle.dumps(good)
    bodies = [
        pickled, b"\x80\x04\x95" + os.urandom(40), b"{", b"[]", b"null", b'"run"', b"{}",
        json.dumps({"request": {"kind": "nope"}}).encode(),
        json.dumps({"request": {"kind": "run"}}).encode(),
        json.dumps({"request": {"kind": "run", "prompt": 3}}).encode(),
        json.dumps({"request": {"kind": "run", "prompt": PROMPT, "views": "all"}}).encode(),
        json.dumps({"request": {"kind": "run", "prompt": PROMPT, "interventions": [{"kind": "pickle"}]}}).encode(),
        json.dumps({"request": {"kind": "add_vector", "name": "v", "vector": {"$nd": {"dtype": "object"}}}}).encode(),
        json.dumps({"request": {"kind": "add_vector", "name": "v", "vector": ["1", None]}}).encode(),
        json.dumps({**good, "job": ["x"]}).encode(),
        json.dumps({**good, "extra": 1}).encode(),
        json.dumps({"request": {"kind": "run", "prompt": PROMPT, "metric": {"kind": "evil"}}}).encode(),
        b"[" * 100000 + b"]" * 100000,
        "{\"request\": \"\ud800\"}".encode("utf-8", "surrogatepass"),
    ]
    frames: list[tuple[bytes, bool]] = []
    paths = ["/v1/execute", "/v1/tokenize", "/v1/decode", "/v1/cancel"]
    while len(frames) < 500:
        choice = rng.randrange(6)
        if choice <= 2:
            frames.append((_post(rng.choice(paths), rng.choice(bodies)), True))
        elif choice == 3:  # random bytes as a body
            frames.append((_post(rng.choice(paths), os.urandom(rng.randrange(1, 300))), True))
        elif choice == 4:  # truncated: promises more than it sends, then hangs up
            body = rng.choice(bodies)
            frames.append((_post(rng.choice(paths), body[: len(body) // 2], length=len(body) + 10), False))
        else:  # oversized by its declared length, or garbage instead of HTTP
            frames.append(rng.choice([(_post("/v1/execute", b"{}", length=64 * 2**20), True),
                                      (os.urandom(rng.randrange(1, 200)) + b"\r\n\r\n", False),
                                      (b"GET /v1/hello HTTP/1.1\r\nhost: x\r\nmechscope-protocol: 99\r\n"
                                       b"connection: close\r\n\r\n", True),
                                      (b"GET /v1/nowhere HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", True)]))
    return frames


def test_500_hostile_frames_each_get_an_error_and_the_server_stays_up(server):
    proc, runtime, _ = server
    answered = 0
    for data, expect_error in hostile_frames(random.Random(0)):
        reply = _raw(runtime, data, read=expect_error)
        if expect_error:
            status = int(reply.split(b" ", 2)[1])
            body = reply.split(b"\r\n\r\n", 1)[1]
            if status == 200:  # well-formed JSON the engine refuses: the outcome carries the error
                last = [line for line in body.split(b"\r\n") if line.startswith(b"{")][-1]
                assert b"outcome" in last, (data[:200], body[-600:])
                assert json.loads(last)["outcome"]["error"], (data[:200], body[-600:])
            else:
                assert 400 <= status < 500, (data[:120], reply[:300])
                assert b"error" in body or status == 404
            answered += 1
    assert answered > 300
    # a real oversized body without a declared length (chunked): cut off at the limit
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(runtime / "shared.sock"))
        sock.sendall(b"POST /v1/execute HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (2**20, b"1" * 2**20)
        try:
            for _ in range(40):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = sock.recv(65536)
    assert b" 413 " in reply.split(b"\r\n", 1)[0]
    assert proc.poll() is None
    with connect(runtime, "after") as engine:
        assert engine.run(PROMPT, metric=METRIC).metric is not None


def test_another_protocol_version_gets_one_line(server, monkeypatch):
    from mechscope.serve import client

    _, runtime, _ = server
    monkeypatch.setattr(client, "PROTOCOL_VERSION", 99)
    with pytest.raises(MechscopeError) as info:
        client.connect(runtime / "shared.sock")
    message = str(info.value)
    assert "\n" not in message and f"protocol {PROTOCOL_VERSION}" in message and "99" in message
