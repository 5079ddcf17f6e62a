"""A session from a stranger is safe to open, replay and export; a malformed file is one line, exit 2."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mechscope.cli import main
from mechscope.sessions import Session, SessionError
from mechscope.sessions.paths import sessions_root
from tests.sessions.export_ast import foreign_names, template_names
from tests.sessions.helpers import record_ioi_session

REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTILE = '"""; import os; os.system("touch PWNED"); """'


@pytest.fixture(autouse=True)
def quiet_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MECHSCOPE_QUIET", "1")


@pytest.fixture
def ioi(folder_engine) -> Session:
    session = record_ioi_session(folder_engine, "ioi")
    session.close()
    return session


def _lines(session: Session) -> list[dict]:
    return [json.loads(line) for line in session.events_path.read_text().splitlines()]


def _write(session: Session, events: list[dict]) -> None:
    session.events_path.write_text("".join(json.dumps(e) + "\n" for e in events))


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert len(lines[0]) < 1000
    return lines[0]


def _export(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    script = tmp_path / f"{name}.py"
    assert main(["export", name, "-o", str(script)]) == 0
    capsys.readouterr()
    return script.read_text()


def test_export_of_hostile_strings_adds_no_code(ioi: Session, tiny_folder: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    reference = _export("ioi", tmp_path, capsys)
    allowed = template_names(reference)
    assert "from typing import Any" in reference  # the template's annotations name it
    assert "Usage: python ioi.py [MODEL]" in reference
    manifest_path = ioi.path / "session.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created"] = HOSTILE
    manifest["model"]["source"] = HOSTILE + "\nimport os"
    manifest_path.write_text(json.dumps(manifest))
    events = _lines(ioi)
    for event in events:
        if event["kind"] == "note":
            event["text"] = HOSTILE + "\n" + HOSTILE + "\r\x0c\u2028import os"
        if event["kind"] == "request" and event["request"]["kind"] == "run" \
                and not event["request"]["interventions"]:
            event["request"]["prompt"] = HOSTILE
            event["outcome"]["top_tokens"] = [HOSTILE] * len(event["outcome"]["top_tokens"])
        if event["kind"] == "reference_prompts":
            event["prompts"] = [*event["prompts"], "\\'); import os; ('"]
    _write(ioi, events)
    script = tmp_path / "hostile.py"
    assert main(["export", "ioi", "-o", str(script)]) == 0
    text = script.read_text()
    assert foreign_names(text, allowed) == set()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_folder)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" run: ") == 5


def test_an_exported_script_reports_a_bad_model_without_a_traceback(ioi: Session, tmp_path: Path,
                                                                   capsys) -> None:
    _export("ioi", tmp_path, capsys)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, str(tmp_path / "ioi.py"), str(tmp_path / "no-model")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")


def _kind(event: dict) -> str:
    """An event's kind, a request event's its request's (run, sweep...)."""
    return event["request"]["kind"] if event["kind"] == "request" else event["kind"]


def _damage(session: Session, how: str) -> int:
    """Damage one event of a recorded session as a stranger could; returns the line to be named."""
    events = _lines(session)
    index = {"run": 0, "vector": 0, "sweep": 0, "note": 0}
    kind = {"inf clamp": "run", "surrogate": "note", "megabyte": "note", "deep": "note",
            "sweep rank 1": "sweep", "sweep rank 3": "sweep", "vector rank 0": "vector",
            "sweep dtype": "sweep", "huge header": "sweep", "huge top_k": "run",
            "float position": "sweep", "null sweep kind": "sweep"}[how]
    line = next(i for i, e in enumerate(events) if _kind(e) == kind) + index[kind]
    event = events[line]
    request = event.get("request", {})
    array = event["arrays"]["values"] if kind == "sweep" else event  # where the tensor file is named
    raw = None
    if how == "inf clamp":
        request["interventions"] = [{"kind": "neuron_clamp", "layer": 0, "neuron": 1, "value": 1.0}]
        raw = json.dumps(event).replace('"value": 1.0', '"value": 1e999')
    elif how == "surrogate":
        raw = json.dumps(event).replace(json.dumps(event["text"]), '"bad \\ud800 text"')
    elif how == "megabyte":
        event["text"] = ["x" * 2_000_000]
    elif how == "deep":
        raw = json.dumps(event).replace(json.dumps(event["text"]), "[" * 100_000 + "]" * 100_000)
    elif how == "huge top_k":
        request["top_k"] = 10**12
    elif how == "float position":
        request["metric"]["position"] = 0.5
    elif how == "null sweep kind":
        request["sweep_kind"] = None
    elif how.startswith(("sweep rank", "vector rank")):
        shape = {"sweep rank 1": [6], "sweep rank 3": [1, 2, 3], "vector rank 0": []}[how]
        key = "values" if kind == "sweep" else "vector"
        data = np.arange(int(np.prod(shape)), dtype=np.float32).tobytes()
        header = json.dumps({key: {"dtype": "F32", "shape": shape, "data_offsets": [0, len(data)]}})
        (session.path / array["file"]).write_bytes(struct.pack("<Q", len(header)) + header.encode() + data)
        array["shape"] = shape
    elif how == "sweep dtype":
        path = session.path / array["file"]
        data = path.read_bytes()
        size = struct.unpack("<Q", data[:8])[0]
        header = data[8:8 + size].replace(b'"F32"', b'"I32"')
        path.write_bytes(data[:8] + header + data[8 + size:])
    elif how == "huge header":
        path = session.path / array["file"]
        path.write_bytes(struct.pack("<Q", 2**62) + path.read_bytes()[8:])
    lines = [json.dumps(e) for e in events]
    if raw is not None:
        lines[line] = raw
    session.events_path.write_text("\n".join(lines) + "\n")
    return line + 1


HOW = ["inf clamp", "surrogate", "megabyte", "deep", "sweep rank 1", "sweep rank 3", "vector rank 0",
       "sweep dtype", "huge header", "huge top_k", "float position", "null sweep kind"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("command", ["show", "replay", "export", "export-sweep"])
def test_malformed_events_exit_2_with_file_and_line(ioi: Session, tiny_folder: Path, how: str,
                                                    command: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    line = _damage(ioi, how)
    argv = {"show": ["sessions", "show", "ioi"],
            "replay": ["replay", "ioi", "--check", "--model", str(tiny_folder)],
            "export": ["export", "ioi", "-o", str(tmp_path / "out.py")],
            "export-sweep": ["export-sweep", "ioi", "-o", str(tmp_path / "out.py")]}[command]
    assert main(argv) == 2
    message = _error_line(capsys)
    assert message.startswith(f"error: {ioi.events_path}:{line}: "), message
    assert not (tmp_path / "out.py").exists()


@pytest.mark.parametrize(("how", "message"), [
    ("float position", "sweep.metric.position must be an integer, got float"),
    ("null sweep kind", "sweep.sweep_kind must be one of head, attn, mlp, resid, atp, got None"),
])
def test_a_request_field_of_the_wrong_type_is_refused_on_open(ioi: Session, how: str, message: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """request_from_dict passes plain fields through: replay failed mid-run (IndexError on a float
    position) and export-sweep on a sweep kind that is not a word."""
    line = _damage(ioi, how)
    assert main(["sessions", "show", "ioi"]) == 2
    assert _error_line(capsys) == f"error: {ioi.events_path}:{line}: {message}"


def test_a_lone_surrogate_is_refused_when_recording() -> None:
    session = Session.create("surrogate")
    with pytest.raises(SessionError, match="lone surrogate"):
        session.record_note("bad \ud800 text")
    session.record_note("fine")
    assert [e.payload["text"] for e in Session.open("surrogate").events] == ["fine"]


def cli_with_peak_memory(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`mechscope ARGS` in a fresh process limited to 2 GiB of address space; its last stderr line is
    `peak <KiB>`, the process's peak resident memory."""
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from mechscope.cli import main\n"
            f"code = main({args!r})\n"
            "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
            "print('peak', peak, file=sys.stderr)\n"
            "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_listing_damaged_sessions_marks_them_in_bounded_memory(ioi: Session) -> None:
    """Sixty sessions damaged in every way the fuzz found, two intact: all listed, in a subprocess under 2 GiB."""
    good = Session.create("good")
    good.record_note("intact")
    good.close()
    root = sessions_root()
    payloads = {
        "deep": b"[" * 200_000 + b"\n", "huge-line": b'{"seq": 1, "x": "' + b"x" * 30_000_000 + b'"}\n',
        "no-newline": b"x" * 20_000_000, "bad-utf8": b"\xff\xfe" * 1000 + b"\n",
        "huge-seq": b'{"seq": ' + b"9" * 4000 + b', "time": 1, "kind": "note", "text": "x"}\n',
    }
    for number in range(60):
        folder = root / f"damaged-{number:02d}"
        folder.mkdir()
        name, payload = list(payloads.items())[number % len(payloads)]
        (folder / "session.json").write_bytes((root / "good" / "session.json").read_bytes()
                                              if number % 3 else b'{"schema_version": ' + b"[" * 50_000)
        (folder / "events.jsonl").write_bytes(payload)
    os.mkfifo(root / "damaged-00" / "fifo")
    (root / "damaged-01" / "events.jsonl").unlink()
    os.mkfifo(root / "damaged-01" / "events.jsonl")
    (root / "damaged-02" / "events.jsonl").unlink()
    os.symlink("/dev/zero", root / "damaged-02" / "events.jsonl")
    os.symlink("/dev/zero", root / "damaged-03" / "session.json.tmp")
    (root / "damaged-04" / "session.json").unlink()
    os.symlink("/dev/zero", root / "damaged-04" / "session.json")
    proc = cli_with_peak_memory(["sessions"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.splitlines()[1:]
    assert len(rows) == 62
    assert all(" unusable: " in row for row in rows if row.startswith("damaged-"))
    assert not any(" unusable: " in row for row in rows if row.startswith(("good ", "ioi ")))
    assert max(len(row) for row in rows) < 600
    peak_kib = int(proc.stderr.split("peak ")[1].split()[0])
    print(f"listing 62 sessions (60 damaged): peak RSS {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 1 << 20


def test_session_files_are_user_only(folder_engine) -> None:
    from tests.sessions.helpers import CLEAN, CORRUPT

    session = record_ioi_session(folder_engine, "private")
    session.close()
    assert stat.S_IMODE(session.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((session.path / "tensors").stat().st_mode) == 0o700
    files = [p for p in session.path.rglob("*") if p.is_file()]
    assert len(files) >= 4 and CLEAN and CORRUPT
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o600)}


def test_a_read_only_data_dir_stops_recording_and_damages_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    session = Session.create("ro")
    session.record_note("saved before")
    session.close()
    before = {p.name: p.read_bytes() for p in session.path.iterdir() if p.is_file()}
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    reopened = Session.open("ro")
    with pytest.raises(SessionError, match="Read-only file system.*recording stopped"):
        reopened.record_note("not saved")
    with pytest.raises(SessionError, match="cannot"):
        Session.create("ro-2")
    monkeypatch.setattr(os, "open", real_open)
    after = {p.name: p.read_bytes() for p in session.path.iterdir() if p.is_file()}
    assert after == before
    assert [e["text"] for e in Session.open("ro").events] == ["saved before"]


def test_a_log_of_empty_lines_is_refused_at_the_first_in_bounded_memory(ioi: Session) -> None:
    """The log was split into lines all at once: 60 MiB of newlines made 60 million byte strings (a
    gigabyte, ten seconds) before the first empty line was refused."""
    with open(ioi.events_path, "ab") as handle:
        handle.write(b"\n" * (60 << 20))
    proc = cli_with_peak_memory(["sessions", "show", "ioi"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    error, peak = proc.stderr.splitlines()
    assert error == f"error: {ioi.events_path}:{len(ioi) + 1}: empty line"
    peak_kib = int(peak.split()[1])
    print(f"refusing a log of 60 MiB of empty lines: peak RSS {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 400 << 10
