"""Opening a recorded session from the sessions screen (S) switches the workbench's recording and state to it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mechscope.engine.interventions import HeadAblation, HeadScale, SteeringVector
from mechscope.engine.metric import Metric
from mechscope.engine.testing import tiny_engine
from mechscope.sessions import Session
from mechscope.tui.app import IOI_PAIR, TOP_K
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.tui.widgets.interventions import InterventionList
from mechscope.tui.widgets.predictions import PredictionsPane, predictions_text
from mechscope.tui.widgets.prompt_pane import PromptValues
from tests.tui.helpers import make_app, settle

A_NAME = "study-a"
B_NAME = "study-b"
A_VALUES = PromptValues(
    clean="Alice and Bob walked to the park, and Bob handed a book to",
    corrupted="Alice and Bob walked to the park, and Alice handed a book to",
    target=" Alice",
    foil=" Bob",
    metric_kind="logit_diff",
)
A_METRIC = Metric("logit_diff", " Alice", " Bob")
A_VECTOR = np.linspace(-1.0, 1.0, 32, dtype=np.float32)  # [d_model]
A_INTERVENTIONS = [
    (1, HeadAblation(1, 2)),
    (2, HeadScale(0, 1, factor=3.0, enabled=False)),
    (3, SteeringVector(1, "toward-park", coeff=4.0)),
]


def record_session_a(engine) -> None:
    """Session A through the Session API: prompts, metric, a vector, an ablation, a disabled scale, a steer."""
    with Session.create(name=A_NAME, engine=engine) as session:
        session.record_prompt(A_VALUES.clean, A_VALUES.corrupted)
        session.record_metric(A_METRIC)
        session.save_vector("toward-park", A_VECTOR)
        session.record_intervention("added", 1, intervention=HeadAblation(1, 2))
        session.record_intervention("added", 2, intervention=HeadScale(0, 1, factor=3.0))
        session.record_intervention("toggled", 2, enabled=False)
        session.record_intervention("added", 3, intervention=SteeringVector(1, "toward-park", coeff=4.0))


def event_lines(name: str) -> list[dict]:
    """The session's events as written; a piece of work as its request (kind: the request's kind)."""
    path = Session.resolve(name) / "events.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{**e["request"], "outcome": e["outcome"]} if e["kind"] == "request" else e for e in lines]


def header(app) -> str:
    return str(app.query_one("#title-session").render())


async def move_to_session(pilot, name: str) -> None:
    """Move the sessions screen's cursor to `name` with the arrow keys."""
    screen = pilot.app.screen
    assert type(screen).__name__ == "SessionsScreen"
    for _ in range(len(screen.summaries)):
        if screen.selected_name() == name:
            break
        await pilot.press("down")
    assert screen.selected_name() == name


async def open_from_sessions_screen(pilot, name: str, key: str = "enter") -> None:
    """S, move the cursor to `name`, open it with `key`."""
    await pilot.press("S")
    await pilot.pause()
    await move_to_session(pilot, name)
    await pilot.press(key)
    await settle(pilot)


@pytest.fixture
def engine():
    engine = tiny_engine("llama")
    record_session_a(engine)
    engine.vectors.clear()  # the app must get the vector from session A, not from this setup
    return engine


async def test_opening_a_session_restores_its_state_and_records_into_it(engine):
    app = make_app(engine, session_name=B_NAME)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.bench.inputs == IOI_PAIR
        assert header(app).startswith(f"session {B_NAME} saved")
        b_events = event_lines(B_NAME)
        a_events = event_lines(A_NAME)
        assert [e["kind"] for e in b_events][-1] == "run"

        await open_from_sessions_screen(pilot, A_NAME)

        assert app.screen is app.workbench
        assert app.bench.recorder.name == A_NAME
        assert header(app).startswith(f"session {A_NAME} saved")
        assert app.bench.inputs == A_VALUES
        assert [(e.id, e.intervention) for e in app.bench.edits.stack.entries] == A_INTERVENTIONS
        assert app.query_one(InterventionList).border_title == "interventions 2/3"
        assert app.query_one(HeadGrid).marks == {(1, 2): "x"}  # the disabled scale leaves no mark
        np.testing.assert_array_equal(engine.vectors["toward-park"], A_VECTOR)

        # The predictions are A's prompt under A's enabled interventions, not B's run.
        enabled = [iv for _, iv in A_INTERVENTIONS if iv.enabled]
        expected = engine.run(A_VALUES.clean, interventions=enabled, metric=A_METRIC,
                              corrupted=A_VALUES.corrupted, top_k=TOP_K)
        result = app.bench.result
        assert result.tokens == expected.tokens
        assert [t.id for t in result.top] == [t.id for t in expected.top]
        np.testing.assert_allclose([t.prob for t in result.top], [t.prob for t in expected.top],
                                   rtol=1e-5, atol=1e-7)
        assert result.metric == pytest.approx(expected.metric, rel=1e-5, abs=1e-6)
        assert result.baseline.metric == pytest.approx(expected.baseline.metric, rel=1e-5, abs=1e-6)
        assert result.metric != pytest.approx(result.baseline.metric, abs=1e-4)  # the steer/ablation bite
        shown = app.query_one(PredictionsPane).render()
        from mechscope.tui.token_labels import token_labels

        ids = [t.id for t in expected.top]
        labels = dict(zip(ids, token_labels(engine, ids, [t.text for t in expected.top]), strict=True))
        assert str(shown) == predictions_text(expected, intervened=True, labels=labels).plain

        # Opening records only the run on A (its prompts and metric are already there); B is untouched.
        new_a = event_lines(A_NAME)[len(a_events):]
        assert [e["kind"] for e in new_a] == ["run"]
        assert new_a[0]["prompt"] == A_VALUES.clean
        assert [d["kind"] for d in new_a[0]["interventions"]] == ["head_ablation", "steering_vector"]
        assert event_lines(B_NAME) == b_events

        # A later edit (toggle the disabled scale back on from the list) goes into A's log only.
        app.query_one(InterventionList).focus()
        await pilot.press("down")
        assert app.query_one(InterventionList).selected_entry_id == 2
        await pilot.press("space")
        await settle(pilot)
        assert app.bench.edits.stack.get(2).intervention.enabled
        toggles = [e for e in event_lines(A_NAME) if e["kind"] == "intervention" and e["id"] == 2]
        assert toggles[-1]["action"] == "toggled" and toggles[-1]["enabled"] is True
        assert event_lines(B_NAME) == b_events

    resumed = Session.open(A_NAME).state()
    assert resumed.interventions == [(1, HeadAblation(1, 2)), (2, HeadScale(0, 1, factor=3.0)),
                                     (3, SteeringVector(1, "toward-park", coeff=4.0))]
    assert (resumed.clean, resumed.corrupted, resumed.metric) == (A_VALUES.clean, A_VALUES.corrupted, A_METRIC)
    b_state = Session.open(B_NAME).state()
    assert b_state.clean == IOI_PAIR.clean and b_state.interventions == []


async def test_new_intervention_after_opening_continues_a_ids(engine):
    app = make_app(engine, session_name=B_NAME)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await open_from_sessions_screen(pilot, A_NAME)
        app.query_one(HeadGrid).focus()
        await pilot.press("space")  # ablate the head under the cursor
        await settle(pilot)
        assert [e.id for e in app.bench.edits.stack.entries] == [1, 2, 3, 4]
        added = [e for e in event_lines(A_NAME) if e["kind"] == "intervention"][-1]
        assert (added["action"], added["id"]) == ("added", 4)
        assert not [e for e in event_lines(B_NAME) if e["kind"] == "intervention"]


async def test_opening_the_session_being_recorded_changes_nothing(engine):
    app = make_app(engine, session_name=B_NAME)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space")  # one ablation, so there is state to keep
        await settle(pilot)
        before_entries = app.bench.edits.stack.entries
        before_result, before_calls = app.bench.result, app.workbench.engine_calls
        b_events = event_lines(B_NAME)

        await pilot.press("S")
        await pilot.pause()
        assert set(app.screen.summaries) == {A_NAME, B_NAME}
        rendered = app.screen.query_one("#sessions-table").get_row(B_NAME)[0]
        assert str(rendered) == f"{B_NAME} *"  # the current session is marked
        await move_to_session(pilot, B_NAME)
        await pilot.press("o")
        await settle(pilot)

        assert app.screen is app.workbench
        assert app.bench.recorder.name == B_NAME
        assert app.bench.edits.stack.entries == before_entries
        assert app.bench.result is before_result and app.workbench.engine_calls == before_calls
        assert app.bench.inputs == IOI_PAIR
        assert "opened session" not in app.bench.info
        assert event_lines(B_NAME) == b_events


async def test_escape_leaves_the_sessions_screen_with_nothing_changed(engine):
    app = make_app(engine, session_name=B_NAME)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        before_result, before_calls = app.bench.result, app.workbench.engine_calls
        a_events, b_events = event_lines(A_NAME), event_lines(B_NAME)

        await pilot.press("S")
        await pilot.pause()
        await move_to_session(pilot, A_NAME)
        await pilot.press("escape")
        await settle(pilot)

        assert app.screen is app.workbench
        assert app.bench.recorder.name == B_NAME
        assert header(app).startswith(f"session {B_NAME} saved")
        assert app.bench.inputs == IOI_PAIR
        assert app.bench.edits.stack.entries == ()
        assert app.bench.result is before_result and app.workbench.engine_calls == before_calls
        assert "toward-park" not in engine.vectors
        assert event_lines(A_NAME) == a_events and event_lines(B_NAME) == b_events


async def test_switching_back_and_forth_keeps_recording_both(engine):
    app = make_app(engine, session_name=B_NAME)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        first_b = app.bench.recorder.session
        await open_from_sessions_screen(pilot, A_NAME)
        await open_from_sessions_screen(pilot, B_NAME, key="o")
        assert app.bench.recorder.name == B_NAME
        assert header(app).startswith(f"session {B_NAME} saved")
        assert app.bench.inputs == IOI_PAIR
        assert app.bench.edits.stack.entries == ()
        app.query_one(HeadGrid).focus()
        await pilot.press("space")
        await settle(pilot)
        assert app.bench.recorder.saved and app.bench.recorder.reason is None
        assert event_lines(B_NAME)[-2]["kind"] == "intervention"
        assert first_b is not app.bench.recorder.session  # B was re-opened, its old writer let go
