"""Nothing acknowledged is lost: two real processes on one session, rm/rename while recording, a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mechscope.cli import main
from mechscope.sessions import Session, SessionError
from mechscope.sessions.paths import sessions_root

REPO_ROOT = Path(__file__).resolve().parents[2]

# A recorder process driven line by line: `open NAME`, `note TEXT`, `close`; answers `ok` or `refused: ...`.
WRITER = r"""
import sys
from mechscope.sessions import Session, SessionError
session = None
for line in sys.stdin:
    command, _, argument = line.rstrip("\n").partition(" ")
    try:
        if command == "open":
            session = Session.open(argument)
        elif command == "note":
            session.record_note(argument)
        elif command == "close":
            session.close()
        print("ok", flush=True)
    except SessionError as exc:
        print("refused: " + str(exc), flush=True)
"""


class Writer:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _log(name: str) -> list[dict]:
    return [json.loads(line) for line in (sessions_root() / name / "events.jsonl").read_text().splitlines()]


def test_a_writer_refused_earlier_never_writes_from_a_stale_state() -> None:
    seed = Session.create("shared")
    seed.record_note("seed")
    seed.close()
    a, b = Writer(), Writer()
    try:
        assert a.send("open shared") == "ok"
        assert b.send("open shared") == "ok"
        assert a.send("note a1") == "ok"
        refused = b.send("note b1")
        assert refused.startswith("refused: ") and f"pid {a.proc.pid}" in refused
        for number in range(2, 7):
            assert a.send(f"note a{number}") == "ok"
        assert a.send("close") == "ok"
        assert b.send("note b2") == "ok"
    finally:
        a.stop()
        b.stop()
    log = _log("shared")
    assert [event["text"] for event in log] == ["seed", "a1", "a2", "a3", "a4", "a5", "a6", "b2"]
    assert [event["seq"] for event in log] == list(range(1, 9))
    assert len(Session.open("shared")) == 8


def test_rm_and_rename_are_refused_while_another_process_records(
        capsys: pytest.CaptureFixture[str]) -> None:
    Session.create("busy").close()
    writer = Writer()
    try:
        assert writer.send("open busy") == "ok"
        assert writer.send("note first") == "ok"
        for argv in (["sessions", "rm", "busy", "--yes"], ["sessions", "rename", "busy", "busy-2"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "being recorded by another mechscope process" in err and f"pid {writer.proc.pid}" in err
        with pytest.raises(SessionError, match="being recorded"):
            Session.open("busy").delete()
        assert writer.send("note second") == "ok"
        assert writer.send("close") == "ok"
    finally:
        writer.stop()
    assert [event["text"] for event in _log("busy")] == ["first", "second"]
    assert main(["sessions", "rename", "busy", "busy-2"]) == 0
    assert main(["sessions", "rm", "busy-2", "--yes"]) == 0
    assert not (sessions_root() / "busy-2").exists()


def test_removing_a_session_needs_no_parse(capsys: pytest.CaptureFixture[str]) -> None:
    session = Session.create("wrecked")
    session.record_note("x")
    session.close()
    (session.path / "events.jsonl").write_bytes(b"{not json at all\n" * 3)
    (session.path / "session.json").write_bytes(b"\x00garbage")
    assert main(["sessions", "rm", "wrecked", "--yes"]) == 0
    assert not session.path.exists()


class FailingDisk:
    """os.write / os.fsync replacements: the next write to the log stops half-way with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, session: Session) -> None:
        self.session = session
        self.fail_write = self.fail_fsync = False
        self.real_write, self.real_fsync = os.write, os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd: int, data) -> int:
        if self.fail_write and fd == self.session._writer.fd:
            self.fail_write = False
            self.real_write(fd, bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real_write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fail_fsync and fd == self.session._writer.fd:
            self.fail_fsync = False
            raise OSError(errno.EIO, "Input/output error")
        return self.real_fsync(fd)


def test_a_failed_append_leaves_the_log_as_it_was(monkeypatch: pytest.MonkeyPatch, folder_engine,
                                                  tiny_folder: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MECHSCOPE_QUIET", "1")
    session = Session.create("full-disk", engine=folder_engine)
    disk = FailingDisk(monkeypatch, session)
    acknowledged = []

    def run(prompt: str) -> None:
        event = session.record_run(prompt, None, None, [], folder_engine.run(prompt))
        acknowledged.append(event.seq)

    run("The cat sat on the")
    disk.fail_write = True
    with pytest.raises(SessionError, match="No space left on device"):
        run("Lost to a full disk")
    for prompt in ("One two three", "When Mary and John", "The sky is"):
        run(prompt)
    disk.fail_fsync = True
    with pytest.raises(SessionError, match="Input/output error"):
        session.record_note("fsync failed: not acknowledged")
    session.record_note("after the fsync error")
    acknowledged.append(session.events[-1].seq)
    session.close()

    log = _log("full-disk")
    assert [event["seq"] for event in log] == acknowledged == list(range(1, 6))
    assert "Lost to a full disk" not in json.dumps(log)
    assert "not acknowledged" not in json.dumps(log)
    assert main(["replay", "full-disk", "--check", "--model", str(tiny_folder)]) == 0
    assert "4 steps: 4 ok, 0 drifted" in capsys.readouterr().out


def test_a_tensor_that_cannot_be_written_is_a_session_error_and_records_nothing() -> None:
    """The tensor is serialised first and written as plain bytes, so a failed write is the same one-line
    SessionError as a failed append (before, safetensors' own error escaped the recorder)."""
    session = Session.create("blocked-tensor")
    session.record_note("before")
    (session.path / "tensors" / ".vector-000002.safetensors.tmp").mkdir(parents=True)
    with pytest.raises(SessionError, match="cannot write"):
        session.save_vector("v", np.ones(4))
    session.record_note("after")
    session.close()
    assert [event["kind"] for event in _log("blocked-tensor")] == ["note", "note"]
