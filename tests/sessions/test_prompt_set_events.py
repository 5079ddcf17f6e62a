"""prompt_set / set_run / set_sweep events: validated on record and on load (file:line), bounded."""

from __future__ import annotations

import json

import pytest

from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.sessions import Session, SessionError
from mechscope.sessions.events import MAX_SET_ROWS, validate_payload

ROW = {"clean": "a b", "corrupted": "a c", "target": " b", "foil": " c"}


def test_a_set_run_must_name_an_earlier_prompt_set(tmp_path):
    session = Session.create(name="s", root=tmp_path)
    with pytest.raises(SessionError, match="no earlier prompt_set"):
        session.record("set_run", set=1, metric_kind="logit_diff", prompt="clean", interventions=[],
                       values=[1.0], baseline=[0.5])
    event = session.record_prompt_set(PromptSet("x", (PromptRow(**ROW),)))
    with pytest.raises(SessionError, match="2 values for a set of 1 rows"):
        session.record("set_run", set=event.seq, metric_kind="logit_diff", prompt="clean",
                       interventions=[], values=[1.0, 2.0], baseline=[0.5, 0.5])
    session.record("set_run", set=event.seq, metric_kind="logit_diff", prompt="clean",
                   interventions=[], values=[1.0], baseline=[0.5])
    assert session.prompt_set(event.seq) == PromptSet("x", (PromptRow(**ROW),))


@pytest.mark.parametrize(("payload", "message"), [
    ({"name": "x", "source": "", "rows": []}, "at least one row"),
    ({"name": "x", "source": "", "rows": [{"clean": "a"}]}, "missing field 'corrupted'"),
    ({"name": "x", "source": "", "rows": [dict(ROW, foil=3)]}, "foil must be a string"),
    ({"name": "x", "source": "", "rows": [ROW] * (MAX_SET_ROWS + 1)}, f"at most {MAX_SET_ROWS}"),
])
def test_bad_prompt_sets_are_refused(payload, message):
    with pytest.raises(ValueError, match=message):
        validate_payload("prompt_set", payload)


def test_a_hand_edited_set_run_fails_to_load_with_file_and_line(tmp_path):
    session = Session.create(name="s", root=tmp_path)
    session.record_prompt_set(PromptSet("x", (PromptRow(**ROW),)))
    session.close()
    path = tmp_path / "s" / "events.jsonl"
    line = {"seq": 9, "time": 1.0, "kind": "set_run", "set": 7, "metric_kind": "logit_diff",
            "prompt": "clean", "interventions": [], "values": [1.0], "baseline": [1.0]}
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    with pytest.raises(SessionError, match=r"events\.jsonl:2: set_run names prompt set 7"):
        Session.open(tmp_path / "s")
