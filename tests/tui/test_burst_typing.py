"""Editing keys typed into a field in one burst apply in order (a bound key such as backspace is not
overtaken by the letters typed after it), as a terminal delivers a paste, key repeat or tmux send-keys."""

from __future__ import annotations

from collections.abc import Callable

from textual import events
from textual.app import App, ComposeResult
from textual.widgets import Input

from mechscope.screens.ask_value import AskValueScreen
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.prompt_input import PromptInput

BURST = [("end", None), ("backspace", None), ("backspace", None), ("1", "1"), ("0", "0"),
         ("left", None), ("x", "x")]


def send_burst(app: App, keys: list[tuple[str, str | None]]) -> None:
    """Queue every key before any is handled, as the driver does for bytes that arrive together."""
    for key, character in keys:
        app.post_message(events.Key(key, character))


class OneField(App):
    def __init__(self, make: Callable[[], Input]) -> None:
        super().__init__()
        self.make = make

    def compose(self) -> ComposeResult:
        self.field = self.make()
        yield self.field


async def test_a_burst_with_backspace_and_arrows_applies_in_order() -> None:
    app = OneField(lambda: OrderedInput("atp verify auto", select_on_focus=False))
    async with app.run_test() as pilot:
        await pilot.pause()
        send_burst(app, BURST)
        await pilot.pause()
        await pilot.pause()
        assert app.field.value == "atp verify au1x0"


async def test_the_estimate_dialog_takes_a_burst_in_order() -> None:
    class Host(App):
        result: str | None = None

        def on_mount(self) -> None:
            self.push_screen(AskValueScreen("estimate", "method", "atp verify auto"),
                             lambda value: setattr(self, "result", value))

    app = Host()
    async with app.run_test() as pilot:
        await pilot.pause()
        send_burst(app, [("right", None), *BURST, ("enter", None)])
        await pilot.pause()
        await pilot.pause()
        assert app.result == "atp verify au1x0"


async def test_an_entered_prompt_field_takes_a_burst_in_order_and_an_unentered_one_none() -> None:
    app = OneField(lambda: PromptInput("When Mary", select_on_focus=False))
    async with app.run_test() as pilot:
        await pilot.pause()
        field = app.field
        assert isinstance(field, PromptInput)
        send_burst(app, [("backspace", None), ("x", "x")])
        await pilot.pause()
        assert field.value == "When Mary"  # not entered: keys are left to the hotkeys
        field.arm()
        send_burst(app, BURST)
        await pilot.pause()
        await pilot.pause()
        assert field.value == "When Ma1x0"


def test_every_text_field_is_an_ordered_input() -> None:
    """A plain `Input(...)` anywhere in the package would bring the out-of-order burst back."""
    import re
    from pathlib import Path

    import mechscope

    package = Path(mechscope.__file__).parent
    plain = [f"{path.relative_to(package)}:{number}"
             for path in package.rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"(?<![\w.])Input\(", line)]
    assert plain == []


async def burst_into_workbench(keys: list[tuple[str, str | None]]):
    from tests.tui.helpers import make_app, settle

    app = make_app()
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        send_burst(app, keys)
        for _ in range(20):  # the dialog mounts, focuses its field, then takes the keys typed ahead
            await pilot.pause(0.02)
        await settle(pilot)
        return app, type(app.screen).__name__, app.screen.query_one("#views").active


async def test_keys_typed_ahead_of_a_dialog_go_into_it_in_order() -> None:
    """`: L 1 . H 2 enter space` in one burst: the go-to dialog gets the address and enter, the grid
    moves, and space then ablates the head it moved to."""
    from mechscope.engine import HeadAblation

    address = [("L", "L"), ("1", "1"), ("full_stop", "."), ("H", "H"), ("2", "2")]
    app, screen, _ = await burst_into_workbench([("colon", ":"), *address, ("enter", None), ("space", " ")])
    assert screen == "WorkbenchScreen" and app.bench.selected == (1, 2)
    assert app.bench.interventions() == (HeadAblation(1, 2),)


async def test_a_burst_that_closes_a_dialog_goes_on_to_the_workbench_keys() -> None:
    """`? escape 2`: the help opens, escape closes it, and 2 shows the logit lens tab."""
    _, screen, tab = await burst_into_workbench([("question_mark", "?"), ("escape", None), ("2", "2")])
    assert screen == "WorkbenchScreen" and tab == "tab-lens"
