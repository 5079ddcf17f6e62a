"""Workbench defects that misled users: keys typed into a prompt after a dialog, non-finite numbers."""

from __future__ import annotations

from textual.widgets import Input

from mechscope.engine.interventions import HeadScale
from mechscope.screens.ask_value import AskValueScreen
from mechscope.screens.edit_intervention import EditInterventionScreen
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
        assert app.bench.generation is not None and app.bench.generation.done


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
        assert [e.intervention for e in app.bench.stack.entries] == [HeadScale(0, 0, 3.0)]
        await pilot.press("enter")  # edit it as a form: Infinity is refused there too
        await pilot.pause()
        app.screen.query_one("#field-factor", Input).value = "Infinity"
        app.screen.query_one("#field-factor", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EditInterventionScreen)
        assert "factor: must be a finite number" in screen_text(app)
