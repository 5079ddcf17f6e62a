"""The workbench records into a session and `--session NAME` resumes it."""

from __future__ import annotations

from mechscope.engine.interventions import HeadAblation, HeadScale
from mechscope.sessions import Session
from mechscope.tui.widgets.head_grid import HeadGrid
from tests.tui.helpers import make_app, settle


async def test_session_records_and_resumes():
    app = make_app(session_name="ioi-study")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space", "j", "m")
        await settle(pilot)
        app.query_one("#target").value = " John"
        app.query_one("#foil").value = " Mary"
        app.query_one("#target").focus()
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("escape", "u")  # leave the input, then undo the mean ablation
        await settle(pilot)
        assert "session ioi-study saved" in str(app.query_one("#title-session").render())

    session = Session.open("ioi-study")
    kinds = [event["request"]["kind"] if event.kind == "request" else event.kind for event in session.events]
    assert kinds[:2] == ["prompt", "metric"] and "run" in kinds
    state = session.state()
    assert state.clean.startswith("When Mary and John")
    assert state.metric.target == " John" and state.metric.foil == " Mary"
    assert [iv for _, iv in state.interventions] == [HeadAblation(0, 0)]

    resumed = make_app(session_name="ioi-study")
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert resumed.bench.inputs.target == " John"
        assert [e.intervention for e in resumed.bench.edits.stack.entries] == [HeadAblation(0, 0)]
        assert resumed.query_one(HeadGrid).marks == {(0, 0): "x"}
        assert resumed.bench.result.metric != resumed.bench.result.baseline.metric
        await pilot.press("s")
        await pilot.pause()
        await pilot.press("enter")  # the default factor 2
        await settle(pilot)
        assert [e.id for e in resumed.bench.edits.stack.entries] == [1, 3]  # new ids continue after the old
        assert resumed.bench.edits.stack.entries[1].intervention == HeadScale(0, 0, factor=2.0)


async def test_unwritable_session_folder_still_runs(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MECHSCOPE_DATA_DIR", str(blocker))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.bench.result is not None
        assert "session not recorded" in str(app.query_one("#title-session").render())
