"""`mechscope sessions / replay / export`: tables, exit codes 0/1/2, one-line errors, runnable exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mechscope.cli import main
from mechscope.sessions import Session
from mechscope.sessions.outcomes import format_generation, format_outcome, format_sweep
from mechscope.sessions.store import SCHEMA_VERSION
from tests.sessions.helpers import record_ioi_session

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def quiet_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MECHSCOPE_QUIET", "1")


@pytest.fixture
def ioi(folder_engine) -> Session:
    session = record_ioi_session(folder_engine, "ioi")
    session.close()  # a writer holds the lock; rename and rm are refused while it does
    return session


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def test_sessions_list_show_rename_rm(ioi: Session, capsys: pytest.CaptureFixture[str]) -> None:
    Session.create("empty")
    assert main(["sessions"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split() == ["name", "model", "created", "events", "last", "prompt"]
    ioi_row = next(row for row in rows if row.startswith("ioi "))
    assert f" {len(ioi)} " in ioi_row and "'The cat sat on the'" in ioi_row

    assert main(["sessions", "show", "ioi"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == len(ioi)
    assert shown[0].split()[:2] == ["1", "prompt"]

    assert main(["sessions", "rename", "ioi", "ioi-2"]) == 0
    assert "renamed ioi -> ioi-2" in capsys.readouterr().out
    assert main(["sessions", "rm", "empty"]) == 2  # stdin is not a terminal: needs --yes
    assert "without --yes" in _one_error_line(capsys.readouterr().err)
    assert main(["sessions", "rm", "empty", "--yes"]) == 0
    assert [s.name for s in Session.list()] == ["ioi-2"]


def test_sessions_list_when_empty(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "list"]) == 0
    assert "no sessions yet" in capsys.readouterr().out


def test_replay_check_passes_on_the_recorded_model(ioi: Session,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "ioi", "--check"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+  ", line)]
    assert len(rows) == 7
    assert all(row.rstrip().endswith(" ok") for row in rows)
    assert "7 steps: 7 ok, 0 drifted" in out
    assert "probabilities within 0.0001, metric within 0.001" in out


def test_replay_without_check_prints_both_outcomes(ioi: Session,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "ioi"]) == 0
    out = capsys.readouterr().out
    first_run = ioi.events[3]
    assert first_run.kind == "request" and first_run["request"]["kind"] == "run"
    assert f"recorded   {format_outcome(first_run['outcome'])}" in out
    assert f"recomputed {format_outcome(first_run['outcome'])}" in out


def test_replay_on_a_different_model_reports_drift(ioi: Session, other_tiny_folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "ioi", "--check", "--model", str(other_tiny_folder)]) == 1
    out = capsys.readouterr().out
    assert "7 steps: 0 ok, 7 drifted" in out
    assert out.count(" DRIFT") == 7
    assert "-> p at rank 1" in out or "-> token at rank 1" in out


def _break(session: Session, how: str) -> tuple[Path, int]:
    """Damage a recorded session; return the file and line the error must name."""
    events = session.path / "events.jsonl"
    lines = events.read_text().splitlines()
    if how == "corrupt line":
        lines[2] = lines[2][:-5] + "@@@@@"
        events.write_text("\n".join(lines) + "\n")
        return events, 3
    if how == "unknown kind":
        lines[4] = json.dumps({"seq": 5, "time": 1.0, "kind": "hologram"})
        events.write_text("\n".join(lines) + "\n")
        return events, 5
    if how == "newer schema":
        manifest_path = session.path / "session.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["schema_version"] = SCHEMA_VERSION + 1
        manifest_path.write_text(json.dumps(manifest, indent=2))
        return manifest_path, 2
    vector_line = next(e.line for e in session if e.kind == "vector")
    (session.path / session.events[vector_line - 1]["file"]).unlink()
    return events, vector_line


@pytest.mark.parametrize("how", ["corrupt line", "unknown kind", "newer schema", "missing tensor"])
@pytest.mark.parametrize("argv", [["replay", "ioi", "--check"], ["export", "ioi", "-o", "-"],
                                  ["sessions", "show", "ioi"]])
def test_unusable_sessions_exit_2_with_file_and_line(ioi: Session, how: str, argv: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path, line = _break(ioi, how)
    assert main(argv) == 2
    message = _one_error_line(capsys.readouterr().err)
    assert message.startswith(f"error: {path}:{line}: ")


def test_missing_session_and_unloadable_model_exit_2(folder_engine,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "nothing-here", "--check"]) == 2
    assert "no session named 'nothing-here'" in _one_error_line(capsys.readouterr().err)

    from mechscope.engine.testing import tiny_engine

    record_ioi_session(tiny_engine(), "in-memory")  # recorded model source "tiny-llama": not loadable
    assert main(["replay", "in-memory", "--check"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err and "--model" in err


def test_cli_subprocess_corrupt_session_has_no_traceback(ioi: Session) -> None:
    path, line = _break(ioi, "unknown kind")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mechscope", "replay", "ioi", "--check"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}:{line}: unknown event kind 'hologram' (known: "
                                   "prompt, metric, intervention, vector, reference_prompts, run, "
                                   "sweep, generate, note, effect_scale, feature_label, prompt_set, set_run, set_sweep, request)")


def test_truncated_session_replays_with_a_warning(ioi: Session,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    events = ioi.path / "events.jsonl"
    events.write_bytes(events.read_bytes() + b'{"seq": 99, "time": 1.0, "kind": "note", "te')
    assert main(["replay", "ioi", "--check"]) == 0
    captured = capsys.readouterr()
    assert f"warning: {events}:{len(ioi) + 1}: last line is incomplete" in captured.err
    assert "7 steps: 7 ok" in captured.out


def test_exported_script_reproduces_the_outcomes(ioi: Session, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "ioi_export.py"
    assert main(["export", "ioi", "-o", str(script)]) == 0
    assert f"wrote {script}" in capsys.readouterr().out
    text = script.read_text()
    assert "from mechscope.requests import execute" in text
    assert "'kind': 'head_ablation', 'layer': 1, 'head': 2" in text
    assert "pickle" not in text
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    expected = []
    for event in ioi.work():
        request, summary = ioi.outcome(event)
        if request.kind == "run":
            expected.append(f"seq {event.seq} run: {format_outcome(summary.data)}")
        elif request.kind == "sweep":
            values = summary.arrays["values"]
            expected.append(f"seq {event.seq} sweep: "
                            f"{format_sweep(values, summary.data['base_metric'], summary.data['source_metric'])}")
        elif request.kind == "generate":
            expected.append(f"seq {event.seq} generate: "
                            f"{format_generation(summary.data['token_ids'], summary.data['tokens'])}")
    assert len(printed) == len(expected) == 7
    for got, want in zip(printed, expected):
        assert _numbers_close(got, want), (got, want)


def _numbers_close(got: str, want: str) -> bool:
    """Same text with every number within one unit of its last printed digit (rounding at the edge)."""
    number = r"[+-]?\d+\.\d+"
    if re.sub(number, "#", got) != re.sub(number, "#", want):
        return False
    return all(abs(float(a) - float(b)) <= 1.5e-4
               for a, b in zip(re.findall(number, got), re.findall(number, want)))


def test_replay_shows_progress_and_checks_part_of_a_session(ioi: Session,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    work = [(event.seq, event["request"]["kind"]) for event in ioi.work()]
    sweeps_and_generations = [(seq, kind) for seq, kind in work if kind in ("sweep", "generate")]
    assert main(["replay", "ioi", "--check", "--kind", "sweep,generate"]) == 0
    captured = capsys.readouterr()
    assert "2 steps: 2 ok, 0 drifted" in captured.out
    progress = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert [line.split(" (")[0] for line in progress] == [
        f"step {number}/2: seq {seq} {kind}" for number, (seq, kind) in enumerate(sweeps_and_generations, 1)]
    assert all(line.endswith(" s elapsed)") for line in progress)
    assert "replayed in " in captured.out and "the recorded steps took" in captured.out

    first, third = work[0][0], work[2][0]
    assert main(["replay", "ioi", "--check", "--steps", f"{first},{third}-{third}"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if re.match(r"^\s+\d+  ", line)]
    assert rows == [str(first), str(third)]

    assert main(["replay", "ioi", "--steps", "3,x"]) == 2
    assert "--steps: 'x' is not a number" in _one_error_line(capsys.readouterr().err)
    assert main(["replay", "ioi", "--kind", "run,hologram"]) == 2
    message = _one_error_line(capsys.readouterr().err)
    assert "unknown kind hologram" in message and "sweep_set" in message


def test_replay_progress_is_a_bar_on_a_terminal() -> None:
    import io

    from mechscope.cli.replay_progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(4, stream)
    progress.start(3, "run")
    progress.start(7, "sweep")
    progress.close()
    text = stream.getvalue()
    assert "\r[" + "." * 24 + "] 0/4 · seq 3 run" in text
    assert "\r[" + "#" * 6 + "." * 18 + "] 1/4 · seq 7 sweep" in text
    assert "\n" not in text and text.endswith("\r")


def _edit_sweep_outcome(session: Session, **fields: object) -> None:
    """Set fields of the recorded outcome of the session's last grid (sweep or estimate)."""
    events = session.path / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    event = next(e for e in reversed(lines) if e["kind"] == "request"
                 and e["request"]["kind"] in ("sweep", "estimate"))
    event["outcome"].update(fields)
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_export_sweep_with_null_labels_writes_default_labels(ioi: Session, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The handler's check lets a falsy label list through (resuming shows L0, L1...): export-sweep
    raised TypeError on `list(None)`."""
    _edit_sweep_outcome(ioi, row_labels=None, col_labels=None)
    out = tmp_path / "sweep.csv"
    assert main(["export-sweep", "ioi", "-o", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 3 * 4 and rows[1].startswith("head,noising,0,0,L0.H0,")


@pytest.mark.parametrize("fmt", ["csv", "safetensors"])
def test_export_sweep_to_a_folder_that_is_missing_exits_2(ioi: Session, tmp_path: Path, fmt: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing" / f"sweep.{fmt}"
    assert main(["export-sweep", "ioi", "--format", fmt, "-o", str(out)]) == 2
    message = _one_error_line(capsys.readouterr().err)
    assert message.startswith(f"error: cannot write {out} (")
    assert "No such file or directory" in message


def test_export_sweep_names_its_file_from_the_request_not_the_recorded_outcome(
        folder_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An estimate's outcome carries its method as free text: `x/y` named the default output file
    `sweep-estimate-x/y-noising.csv` (FileNotFoundError, or a file under another folder)."""
    from mechscope.engine.prompt_sets import PromptRow, PromptSet
    from mechscope.requests import execute
    from mechscope.requests.kinds import EstimateRequest
    from tests.sessions.helpers import CLEAN, CORRUPT

    session = Session.create("estimate", engine=folder_engine)
    rows = PromptSet("one", (PromptRow(CLEAN, CORRUPT, " Mary", " John"),))
    outcome = execute(folder_engine, EstimateRequest(rows, "atp"))
    assert outcome.ok, outcome.error
    session.record_outcome(outcome)
    session.close()
    _edit_sweep_outcome(session, method="x/y")
    monkeypatch.chdir(tmp_path)
    assert main(["export-sweep", "estimate"]) == 0
    assert capsys.readouterr().out == "wrote sweep-estimate-atp-noising.csv\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep-estimate-atp-noising.csv"]


def test_export_sweep_without_a_sweep_exits_2_with_an_error_line(folder_engine,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    Session.create("no-sweep").close()
    assert main(["export-sweep", "no-sweep"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: session 'no-sweep' has no sweep"
    assert main(["export-sweep", "nothing-here"]) == 2
    assert "no session named 'nothing-here'" in _one_error_line(capsys.readouterr().err)
