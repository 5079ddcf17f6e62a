"""Workbench defects that misled users: keys typed into a prompt after a dialog, non-finite numbers."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from mechscope.engine.interventions import HeadAblation, HeadScale
from mechscope.screens.ask_value import AskValueScreen
from mechscope.screens.edit_intervention import EditInterventionScreen
from mechscope.sessions import Session
from mechscope.tui.app import IOI_PAIR
from mechscope.tui.widgets.head_grid import HeadGrid
from tests.tui.helpers import make_app, screen_text, settle


async def test_after_a_dialog_closes_keys_act_on_the_grid_not_the_prompt():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash")  # into the clean prompt
        await pilot.press("f1")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.query_one(HeadGrid).has_focus
        await pilot.press("g")
        await settle(pilot)
        assert app.query_one("#clean", Input).value == IOI_PAIR.clean
        assert app.bench.generations.latest is not None and app.bench.generations.latest.done


async def test_non_finite_or_huge_numbers_keep_the_dialog_open_with_the_reason():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        for typed, reason in (("nan", "factor: must be a finite number"), ("inf", "must be a finite number"),
                              ("1e40", "factor: 1e+40 is out of range ±1e+06")):
            app.screen.query_one("#ask-input", Input).value = typed
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, AskValueScreen) and reason in screen_text(app)
        app.screen.query_one("#ask-input", Input).value = "3"
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadScale(0, 0, 3.0)]
        await pilot.press("enter")  # edit it as a form: Infinity is refused there too
        await pilot.pause()
        app.screen.query_one("#field-factor", Input).value = "Infinity"
        app.screen.query_one("#field-factor", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EditInterventionScreen)
        assert "factor: must be a finite number" in screen_text(app)


async def test_stale_predictions_are_marked_stale():
    from mechscope.engine.errors import InterventionError
    from tests.tui.helpers import CountingEngine

    engine = CountingEngine()
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        predictions = app.query_one("#predictions")
        assert predictions.border_title == "predictions"
        engine.fail_with = InterventionError("zero L0.H0: something went wrong")
        await pilot.press("space")
        await settle(pilot)
        assert predictions.border_title == "predictions (stale: the last run failed)"
        engine.fail_with = None
        await pilot.press("u")
        await settle(pilot)
        assert predictions.border_title == "predictions"
        await pilot.press("slash")
        app.query_one("#clean", Input).value = ""
        await pilot.press("enter")
        await settle(pilot)
        assert predictions.border_title == "predictions (stale: the prompt is empty)"


async def test_header_says_not_saved_until_a_write_works_and_lost_writes_can_be_retried():
    from tests.workbench.test_controller import FlakySession

    app = make_app(session_name="study")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        recorder = app.bench.recorder
        recorder.session = flaky = FlakySession(recorder.session)
        flaky.failing = True
        await pilot.press("space")
        await settle(pilot)
        header = str(app.query_one("#title-session").render())
        assert header.startswith("session study NOT SAVED: [Errno 28] No space left on device")
        assert "unwritten: intervention list" in header and " saved" not in header
        await pilot.press("j", "space", "u")  # more edits while the disk is full
        await settle(pilot)
        flaky.failing = False
        app.workbench.run_command("retry_saving")
        await pilot.pause()
        assert str(app.query_one("#title-session").render()) == "session study saved"
        await pilot.press("l", "space")  # and recording goes on as before
        await settle(pilot)
        app.bench.recorder.close()
    state = Session.open("study").state()
    assert state.interventions == [(1, HeadAblation(0, 0)), (3, HeadAblation(1, 1))]


async def test_a_patch_follows_the_corrupted_prompt_and_the_list_says_so():
    from tests.tui.helpers import CountingEngine

    engine = CountingEngine()
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("j", "l", "p")
        await settle(pilot)
        lines = app.query_one("#interventions")
        assert "[x] patch L1.H1 ← corrupted" in str(lines.get_option_at_index(0).prompt)
        before = app.bench.result.metric
        swapped = IOI_PAIR.corrupted.replace("Mary and John", "John and Mary")
        app.query_one("#corrupted", Input).value = swapped
        app.query_one("#corrupted", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        request = app.bench.run.request
        assert request.interventions[0].source_prompt == swapped  # the run used the new source
        expected = engine.inner.run(IOI_PAIR.clean, request.interventions, metric=request.metric,
                                    corrupted=swapped)
        assert app.bench.result.metric == pytest.approx(expected.metric, abs=1e-5)
        assert abs(expected.metric - before) > 1e-3
