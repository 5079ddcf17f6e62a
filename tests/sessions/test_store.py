"""Session storage: layout, naming, state folding, validation errors with file and line, no pickle."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mechscope.engine import HeadAblation, HeadScale, Metric
from mechscope.sessions import Session, SessionError
from mechscope.sessions.paths import sessions_root
from mechscope.sessions.store import SCHEMA_VERSION


def make_session(name: str = "s1") -> Session:
    session = Session.create(name)
    session.record_prompt("When Mary and John", "When John and Mary")
    session.record_metric(Metric("logit_diff", " Mary", " John"))
    session.record_intervention("added", 1, HeadAblation(1, 2))
    session.record_intervention("added", 2, HeadScale(0, 1, 2.5))
    session.save_vector("happy", np.arange(4, dtype=np.float32))
    session.record_intervention("toggled", 1, enabled=False)
    session.record_note("first note")
    return session


def test_layout_and_manifest(tmp_path: Path) -> None:
    session = make_session()
    assert session.path == sessions_root() / "s1"
    assert sessions_root() == Path(os.environ["MECHSCOPE_DATA_DIR"]) / "sessions"
    manifest = json.loads((session.path / "session.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["name"] == "s1"
    assert manifest["model"] is None
    assert set(manifest["versions"]) >= {"mechscope", "torch", "transformers"}
    lines = (session.path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 7
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, 8))
    assert [e["kind"] for e in events] == ["prompt", "metric", "intervention", "intervention",
                                          "vector", "intervention", "note"]
    assert events[4]["file"] == "tensors/vector-000005.safetensors"
    assert (session.path / events[4]["file"]).is_file()
    assert not [p for p in session.path.rglob("*") if p.name.endswith(".tmp")]


def test_manifest_records_engine_model() -> None:
    from mechscope.engine.testing import tiny_engine

    session = Session.create("with-model", engine=tiny_engine())
    model = Session.open("with-model").manifest["model"]
    assert model["source"] == "tiny-llama"
    assert (model["dtype"], model["device"], model["n_layers"], model["n_heads"]) == (
        "float32", "cpu", 3, 4)
    assert session.model_source == "tiny-llama"


def test_state_round_trip() -> None:
    make_session()
    state = Session.open("s1").state()
    assert (state.clean, state.corrupted) == ("When Mary and John", "When John and Mary")
    assert state.metric == Metric("logit_diff", " Mary", " John")
    assert state.interventions == [(1, HeadAblation(1, 2, enabled=False)), (2, HeadScale(0, 1, 2.5))]
    assert state.next_intervention_id == 3
    np.testing.assert_array_equal(state.vectors["happy"], [0, 1, 2, 3])
    assert state.notes == ["first note"]
    assert state.last_run is None and state.last_outcome is None


def test_intervention_changes_fold_in_order() -> None:
    session = make_session()
    session.record_intervention("changed", 1, HeadAblation(1, 3, mode="mean"))
    session.record_intervention("removed", 2)
    session.record_intervention("added", 7, HeadScale(2, 2, 0.0))
    state = Session.open("s1").state()
    assert state.interventions == [(1, HeadAblation(1, 3, mode="mean")), (7, HeadScale(2, 2, 0.0))]


def test_resume_appends_after_existing_events() -> None:
    make_session().close()
    session = Session.open("s1")
    event = session.record_note("second")
    assert event.seq == 8
    assert [e.seq for e in Session.open("s1")] == list(range(1, 9))


def test_invalid_records_are_refused_and_not_written() -> None:
    session = make_session()
    with pytest.raises(SessionError, match="never added"):
        session.record_intervention("toggled", 9, enabled=True)
    with pytest.raises(SessionError, match="added twice"):
        session.record_intervention("added", 1, HeadAblation(0, 0))
    with pytest.raises(SessionError, match="unknown event kind"):
        session.record("bogus", text="x")
    with pytest.raises(SessionError, match="clean must be a string"):
        session.record("prompt", clean=3, corrupted=None)
    assert len(Session.open("s1")) == 7


def test_generated_names_and_refused_duplicates() -> None:
    first = Session.create(hint="IOI circuit!")
    assert first.name.endswith("-ioi-circuit")
    assert first.name[:4].isdigit()
    second = Session.create(hint="IOI circuit!")
    assert second.name == first.name + "-2"
    anonymous = Session.create()
    assert len(anonymous.name.split("-")) == 6  # YYYY-MM-DD-HHMM-adjective-noun
    with pytest.raises(SessionError, match="already exists"):
        Session.create(first.name)
    with pytest.raises(SessionError, match="bad session name"):
        Session.create("../escape")


def test_list_rename_delete() -> None:
    make_session("alpha")
    Session.create("beta").record_prompt("The cat sat", None)
    (sessions_root() / "broken").mkdir()
    summaries = {s.name: s for s in Session.list()}
    assert set(summaries) == {"alpha", "beta", "broken"}
    assert summaries["alpha"].n_events == 7
    assert summaries["alpha"].last_prompt == "When Mary and John"
    assert summaries["beta"].last_prompt == "The cat sat"
    assert "session.json" in summaries["broken"].error

    session = Session.open("alpha")
    session.rename("gamma")
    assert not (sessions_root() / "alpha").exists()
    reopened = Session.open("gamma")
    assert reopened.manifest["name"] == "gamma" and len(reopened) == 7
    with pytest.raises(SessionError, match="already exists"):
        reopened.rename("beta")
    reopened.delete()
    assert {s.name for s in Session.list()} == {"beta", "broken"}


def test_open_by_path_and_missing_name(tmp_path: Path) -> None:
    session = make_session()
    assert len(Session.open(str(session.path))) == 7
    with pytest.raises(SessionError, match="no session named 'nope'"):
        Session.open("nope")


def test_second_writer_is_refused() -> None:
    writer = make_session()
    other = Session.open("s1")
    with pytest.raises(SessionError, match="another mechscope process"):
        other.record_note("clash")
    writer.close()
    assert other.record_note("now fine").seq == 8


def test_truncated_last_line_is_recovered_with_a_warning() -> None:
    make_session().close()
    path = sessions_root() / "s1" / "events.jsonl"
    path.write_bytes(path.read_bytes() + b'{"seq": 8, "time": 1.0, "kind": "no')
    session = Session.open("s1")
    assert len(session) == 7
    assert len(session.warnings) == 1 and "events.jsonl:8" in session.warnings[0]
    assert "incomplete" in session.warnings[0]
    session.record_note("after the crash")  # the partial line is cut off before appending
    reopened = Session.open("s1")
    assert reopened.warnings == []
    assert [e.seq for e in reopened] == list(range(1, 9))


def test_complete_last_line_without_newline_is_kept() -> None:
    make_session().close()
    path = sessions_root() / "s1" / "events.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    session = Session.open("s1")
    assert len(session) == 7 and session.warnings == []
    session.record_note("appended")
    assert len(Session.open("s1")) == 8


def _replace_line(number: int, text: str) -> Path:
    path = sessions_root() / "s1" / "events.jsonl"
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("line", "text", "message"), [
    (3, "{not json", "invalid JSON"),
    (3, '{"seq": 3, "time": 1.0, "kind": "teleport"}', "unknown event kind 'teleport'"),
    (2, '{"seq": 2, "time": 1.0, "kind": "metric", "metric": {"kind": "vibes"}}', "metric kind"),
    (3, '{"seq": 3, "time": 1.0, "kind": "intervention", "action": "added", "id": 1, '
        '"intervention": {"kind": "head_ablation", "layer": "x", "head": 0}}', "layer must be"),
    (4, '{"seq": 1, "time": 1.0, "kind": "note", "text": "x"}', "does not follow"),
    (1, "", "empty line"),
    (7, '{"seq": 7, "time": NaN, "kind": "note", "text": "x"}', "NaN"),
    (6, '{"seq": 6, "time": 1.0, "kind": "intervention", "action": "toggled", "id": 5, '
        '"enabled": true}', "never added"),
])
def test_bad_lines_name_file_and_line(line: int, text: str, message: str) -> None:
    make_session().close()
    path = _replace_line(line, text)
    with pytest.raises(SessionError, match=message) as info:
        Session.open("s1")
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_newer_schema_is_refused_with_line() -> None:
    make_session().close()
    manifest_path = sessions_root() / "s1" / "session.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    manifest_path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(SessionError, match=f"schema version {SCHEMA_VERSION + 1} is newer") as info:
        Session.open("s1")
    assert str(info.value).startswith(f"{manifest_path}:2: ")


def test_missing_and_wrong_tensor_files() -> None:
    make_session().close()
    tensor = sessions_root() / "s1" / "tensors" / "vector-000005.safetensors"
    original = tensor.read_bytes()
    tensor.unlink()
    with pytest.raises(SessionError, match="tensor file tensors/vector-000005.safetensors is missing") as info:
        Session.open("s1")
    assert "events.jsonl:5: " in str(info.value)
    from safetensors.numpy import save_file

    save_file({"vector": np.zeros(5, dtype=np.float32)}, str(tensor))
    with pytest.raises(SessionError, match="shape"):
        Session.open("s1")
    tensor.write_bytes(original)
    assert len(Session.open("s1")) == 7


def test_tensor_paths_cannot_escape_the_session() -> None:
    make_session().close()
    _replace_line(5, '{"seq": 5, "time": 1.0, "kind": "vector", "name": "v", '
                     '"file": "tensors/../../../etc/passwd.safetensors", "shape": [4]}')
    with pytest.raises(SessionError, match="tensors/<file>.safetensors"):
        Session.open("s1")


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("target", ["events.jsonl", "session.json", "tensors/vector-000005.safetensors"])
def test_pickle_payload_is_never_executed(tmp_path: Path, target: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    pickle.loads(payload).close()  # sanity: unpickling really creates the marker
    assert marker.exists()
    marker.unlink()
    make_session().close()
    (sessions_root() / "s1" / target).write_bytes(payload)
    with pytest.raises(SessionError) as info:
        Session.open("s1")
    assert target.split("/")[-1] in str(info.value)
    assert {s.name for s in Session.list()} == {"s1"}
    assert not marker.exists()
