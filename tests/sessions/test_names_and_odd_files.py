"""One session-name rule everywhere; rm never leaves the sessions dir; odd files never hang a reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechscope.cli import main
from mechscope.sessions import Session, SessionError
from mechscope.sessions.paths import sessions_root
from tests.sessions.helpers import CLEAN, record_ioi_session

REPO_ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", ["x\n", "a" * 300, "a/b", "..", ".hidden", "tab\tname", "é"])
def test_one_name_rule_at_every_entry_point(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SessionError, match="bad session name"):
        Session.create(name)
    if "/" not in name and name != "..":
        with pytest.raises(SessionError, match="bad session name"):
            Session.open(name)
        assert main(["sessions", "show", name]) == 2
        assert "bad session name" in _one_line(capsys)
    Session.create("ok-name").close()
    assert main(["sessions", "rename", "ok-name", name]) == 2
    assert "bad session name" in _one_line(capsys)
    assert main(["sessions", "rm", name, "--yes"]) == 2
    _one_line(capsys)
    assert main(["--session", name]) == 2
    assert "bad session name" in _one_line(capsys)
    assert [s.name for s in Session.list()] == ["ok-name"]


def test_rm_refuses_paths_and_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "session.json").write_text("{}")
    (victim / "precious.txt").write_text("keep me")
    sessions_root().mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "victim")
    for target in ("../victim", str(victim), "./"):
        assert main(["sessions", "rm", target, "--yes"]) == 2
        _one_line(capsys)
    os.symlink(victim, sessions_root() / "linked")
    assert main(["sessions", "rm", "linked", "--yes"]) == 2
    assert "symbolic link" in _one_line(capsys)
    assert main(["sessions", "rename", "linked", "other"]) == 2
    _one_line(capsys)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (sessions_root() / "linked").is_symlink()


def _run_cli(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from mechscope.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MECHSCOPE_QUIET": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("odd", ["fifo", "dev-zero", "outside-link"])
def test_listing_and_replay_never_hang_on_odd_files(odd: str, tmp_path: Path, tiny_folder: Path) -> None:
    good = Session.create("good")
    good.record_note("fine")
    good.close()
    session = Session.create("odd")
    session.record_note("x")
    session.close()
    log = session.path / "events.jsonl"
    copy = tmp_path / "events-copy.jsonl"
    copy.write_bytes(log.read_bytes())
    log.unlink()
    if odd == "fifo":
        os.mkfifo(log)
    else:
        os.symlink("/dev/zero" if odd == "dev-zero" else copy, log)
    try:
        listing = _run_cli(["sessions"])
        replay = _run_cli(["replay", "odd", "--check", "--model", str(tiny_folder)])
        show = _run_cli(["sessions", "show", "odd"])
    except subprocess.TimeoutExpired:
        pytest.fail(f"a reader hung on a session whose log is a {odd}")
    assert listing.returncode == 0, listing.stderr[-1000:]
    rows = {row.split()[0]: row for row in listing.stdout.splitlines()[1:]}
    assert "unusable" not in rows["good"] and "unusable" in rows["odd"]
    for proc in (replay, show):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"error: {log}: ")


def test_a_crafted_generate_step_runs_only_what_was_recorded(folder_engine, tiny_folder: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from mechscope.sessions.replaying import replay

    session = record_ioi_session(folder_engine, "gen")
    session.close()
    events = [json.loads(line) for line in session.events_path.read_text().splitlines()]
    generate = next(e for e in events if e["kind"] == "request" and e["request"]["kind"] == "generate")
    generate["request"]["max_new_tokens"] = 100_000
    session.events_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    asked: list[int] = []
    real_generate = folder_engine.generate

    def spy(*args, **kwargs):
        asked.append(kwargs["max_new_tokens"])
        return real_generate(*args, **kwargs)

    folder_engine.generate = spy
    try:
        steps = replay(Session.open("gen"), folder_engine)
    finally:
        del folder_engine.generate
    assert asked == [len(generate["outcome"]["token_ids"])]
    assert all(step.matches for step in steps)

    context = folder_engine.info.max_context
    generate["request"]["max_new_tokens"] = context
    generate["outcome"]["token_ids"] = [0] * context
    generate["outcome"]["tokens"] = ["x"] * context
    session.events_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    steps = replay(Session.open("gen"), folder_engine)
    failed = [step for step in steps if step.kind == "generate"][0]
    assert failed.status == "ERROR" and "context" in failed.detail
    assert CLEAN


def _session_files(folder: Path) -> list[str]:
    return ["session.json", "events.jsonl", *(f"tensors/{p.name}" for p in sorted((folder / "tensors").iterdir()))]


def test_a_file_replaced_by_a_directory_is_that_session_unusable(tmp_path: Path, monkeypatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Each file of a session replaced by a directory: the listing names that session unusable with
    the reason and still lists the others; opening it is one error line (exit 2)."""
    import shutil

    from mechscope.cli import main

    fixture = Path(__file__).resolve().parent / "fixtures" / "old-format"
    root = tmp_path / "data" / "sessions"
    root.mkdir(parents=True)
    monkeypatch.setenv("MECHSCOPE_DATA_DIR", str(tmp_path / "data"))
    shutil.copytree(fixture, root / "good")
    broken = {}
    for number, name in enumerate(_session_files(fixture)):
        folder = root / f"broken-{number}"
        shutil.copytree(fixture, folder)
        (folder / name).unlink()
        (folder / name).mkdir()
        broken[folder.name] = folder / name
    summaries = {s.name: s for s in Session.list(root)}
    assert not summaries["good"].error
    for name, path in broken.items():
        assert summaries[name].error and str(path) in summaries[name].error, name
        assert "not a regular file" in summaries[name].error
    assert main(["sessions"]) == 0
    rows = {row.split()[0]: row for row in capsys.readouterr().out.splitlines()[1:]}
    assert "unusable" not in rows["good"] and all("unusable" in rows[name] for name in broken)
    for name in broken:
        assert main(["sessions", "show", name]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "not a regular file" in err
