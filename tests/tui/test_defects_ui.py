"""Workbench defects of issue 10 seen by a new user: hotkeys typed into fields, dialogs, marks, sizes."""

from __future__ import annotations

from textual.widgets import Input

from mechscope.tui.app import IOI_PAIR
from tests.tui.helpers import make_app, screen_text, settle


async def press_each(pilot, *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await pilot.pause()


async def test_keys_never_type_into_a_field_reached_without_entering_it():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "1", "tab", "tab", "tab", "3", "question_mark", "escape", "g")
        await settle(pilot)
        await press_each(pilot, "2", "tab", "tab", "tab", "5", "v", "escape", "z")
        await press_each(pilot, "3", "tab", "g", "o")  # a tab switch left no focus: Tab then letters
        await press_each(pilot, "shift+tab", "shift+tab", "x", "backspace")  # back into the fields
        await settle(pilot)
        assert app.query_one("#clean", Input).value == IOI_PAIR.clean
        assert app.query_one("#foil", Input).value == IOI_PAIR.foil
        assert app.query_one("#corrupted", Input).value == IOI_PAIR.corrupted
        await press_each(pilot, "escape", "slash", "end", "x")  # deliberately entered: letters type
        assert app.query_one("#clean", Input).value == IOI_PAIR.clean + "x"


async def test_a_field_reached_with_tab_is_entered_with_enter():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.query_one("#target", Input).focus()
        await pilot.pause()
        assert "enter or click to edit" in screen_text(app)
        await press_each(pilot, "g")
        assert app.query_one("#target", Input).value == IOI_PAIR.target
        await press_each(pilot, "enter", "end", "s")
        assert app.query_one("#target", Input).value == IOI_PAIR.target + "s"


async def test_every_focusable_pane_shows_a_focus_cue():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        looks = lambda widget: (str(widget.styles.border_top), str(widget.styles.background))  # noqa: E731
        seen = 0
        for _ in range(9):
            focused = app.focused
            assert focused is not None
            focused_look = looks(focused)
            await press_each(pilot, "tab")
            if app.focused is not focused:
                assert looks(focused) != focused_look, f"{focused!r} looks the same focused and not"
                seen += 1
        assert seen >= 8
