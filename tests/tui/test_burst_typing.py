"""Editing keys typed into a field in one burst apply in order (a bound key such as backspace is not
overtaken by the letters typed after it), as a terminal delivers a paste, key repeat or tmux send-keys."""

from __future__ import annotations

from collections.abc import Callable

from textual import events
from textual.app import App, ComposeResult
from textual.command import CommandInput
from textual.widgets import Input

from mechscope.screens.ask_value import AskValueScreen
from mechscope.tui.widgets.ordered_input import OrderedCommandInput, OrderedInput
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


async def test_a_paste_into_the_entered_prompt_keeps_every_line() -> None:
    """Input keeps only the first line of a paste: a chat-formatted prompt was cut short without a word."""
    app = OneField(lambda: PromptInput("", select_on_focus=False))
    async with app.run_test() as pilot:
        field = app.field
        field.focus()
        field.post_message(events.Paste("<|user|>\r\nWhen Mary"))
        await pilot.pause()
        assert field.value == ""  # not entered: a paste is not typing into it
        field.arm()
        field.post_message(events.Paste("<|user|>\r\nWhen Mary and John\n<|assistant|>"))
        await pilot.pause()
        assert field.value == "<|user|>\nWhen Mary and John\n<|assistant|>"
        assert field.render_line(0).text.startswith("<|user|>␊When Mary and John␊<|assistant|>")


async def test_the_command_palettes_search_takes_a_burst_in_order() -> None:
    """Textual's own palette field ran backspace after the letters typed behind it: `[load ste`."""
    from tests.tui.helpers import make_app, settle

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        field = app.screen.query_one(CommandInput)
        assert isinstance(field, OrderedCommandInput)
        send_burst(app, [("x", "x"), ("y", "y"), ("backspace", None), ("backspace", None),
                         *((c, c) for c in "load"), ("left", None), ("backspace", None), ("o", "o")])
        await land(pilot, 0.5)
        assert field.value == "lood"


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


async def land(pilot, seconds: float = 0.0) -> None:
    """Let a burst land: `seconds` of the dialogs' own checks, then each dialog mounts, focuses its
    field and takes the keys typed ahead."""
    from tests.tui.helpers import settle

    await pilot.pause(seconds)
    for _ in range(20):
        await pilot.pause(0.02)
    await settle(pilot)


async def burst_into_workbench(keys: list[tuple[str, str | None]], seconds: float = 0.0):
    from tests.tui.helpers import make_app, settle

    app = make_app()
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        send_burst(app, keys)
        await land(pilot, seconds)
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


def slow_answers(monkeypatch, seconds: float) -> None:
    """The go-to dialog's check takes `seconds` to answer (as a dry run on a busy or remote engine
    does): longer than any fixed wait the keys typed after enter might be given."""
    import asyncio

    from mechscope.screens import ask_value

    check = ask_value.error_of

    async def slow(*args):
        await asyncio.sleep(seconds)
        return check(*args)

    monkeypatch.setattr(ask_value, "error_of", slow)


async def test_keys_after_enter_wait_for_a_dialog_that_is_slow_to_close(monkeypatch) -> None:
    """`: L 1 . H 2 enter space` where the dialog takes 1.5 s to accept: space still ablates the head
    moved to, not a space typed into the closing dialog."""
    from mechscope.engine import HeadAblation

    slow_answers(monkeypatch, 1.5)
    address = [("L", "L"), ("1", "1"), ("full_stop", "."), ("H", "H"), ("2", "2")]
    app, screen, _ = await burst_into_workbench([("colon", ":"), *address, ("enter", None), ("space", " ")], 1.8)
    assert screen == "WorkbenchScreen" and app.bench.selected == (1, 2)
    assert app.bench.interventions() == (HeadAblation(1, 2),)


async def test_keys_after_a_refused_enter_go_into_the_dialog_that_stayed(monkeypatch) -> None:
    """`: L 9 enter backspace 1 . H 2 enter space`, each answer slow: L9 is refused (3 layers), the
    keys after it fix the address in the dialog, the second enter moves there and space ablates."""
    from mechscope.engine import HeadAblation

    slow_answers(monkeypatch, 1.2)
    fixed = [("backspace", None), ("1", "1"), ("full_stop", "."), ("H", "H"), ("2", "2")]
    keys = [("colon", ":"), ("L", "L"), ("9", "9"), ("enter", None), *fixed, ("enter", None), ("space", " ")]
    app, screen, _ = await burst_into_workbench(keys, 3.0)
    assert screen == "WorkbenchScreen" and app.bench.selected == (1, 2)
    assert app.bench.interventions() == (HeadAblation(1, 2),)


async def test_a_burst_typed_into_an_open_dialog_waits_for_its_slow_answer(monkeypatch) -> None:
    """The go-to dialog already open and focused, `L 1 . H 2 enter space` arrives at once and the
    check takes 1.5 s: the space, typed after enter, ablates the head moved to instead of going into
    the field the dialog is about to close."""
    from mechscope.engine import HeadAblation
    from tests.tui.helpers import make_app, settle

    slow_answers(monkeypatch, 1.5)
    app = make_app()
    async with app.run_test(size=(140, 50)) as pilot:
        await settle(pilot)
        await pilot.press("colon")
        await settle(pilot)
        assert type(app.screen).__name__ == "AskValueScreen" and app.screen.focused is not None
        send_burst(app, [("L", "L"), ("1", "1"), ("full_stop", "."), ("H", "H"), ("2", "2"),
                         ("enter", None), ("space", " ")])
        await land(pilot, 1.8)
        assert type(app.screen).__name__ == "WorkbenchScreen" and app.bench.selected == (1, 2)
        assert app.bench.interventions() == (HeadAblation(1, 2),)


def test_every_dialog_answers_its_closing_keys() -> None:
    """A modal screen that is not a Dialog gives the keys typed after enter or escape a fixed wait
    instead of its answer; only the screen that swallows every key until the terminal grows is not."""
    import importlib
    import inspect
    import pkgutil

    from textual.screen import ModalScreen

    import mechscope.screens
    from mechscope.screens.dialog import Dialog

    modal = {cls.__name__: cls
             for info in pkgutil.iter_modules(mechscope.screens.__path__)
             for _, cls in inspect.getmembers(importlib.import_module(f"mechscope.screens.{info.name}"),
                                              inspect.isclass)
             if issubclass(cls, ModalScreen) and cls.__module__.startswith("mechscope.")}
    assert len(modal) >= 12
    assert sorted(name for name, cls in modal.items() if not issubclass(cls, Dialog)) == ["TooSmallScreen"]


async def test_a_burst_through_two_dialogs_in_a_row_reaches_each_then_the_workbench() -> None:
    """`+ enter enter j`: + opens the list of kinds, enter picks the first (head ablation), which
    opens its form; the second enter saves the form as filled in (L0.H0), and j then moves the cursor
    down, not into the form's layer field."""
    from mechscope.engine import HeadAblation

    app, screen, _ = await burst_into_workbench([("plus", "+"), ("enter", None), ("enter", None), ("j", "j")])
    assert screen == "WorkbenchScreen"
    assert app.bench.interventions() == (HeadAblation(0, 0),) and app.bench.selected == (1, 0)


async def test_a_burst_picks_from_the_sweep_dialogs_list_and_runs_it() -> None:
    """`W enter down enter ctrl+s`: the sweep dialog opens on its kind list, enter opens the list,
    down and enter pick the second kind (attention output per layer), ctrl+s runs that sweep."""
    app, screen, _ = await burst_into_workbench([("W", "W"), ("enter", None), ("down", None), ("enter", None),
                                                  ("ctrl+s", None)])
    assert screen == "WorkbenchScreen"
    assert list(app.bench.sweeps.states) == ["attn"] and app.bench.sweeps.states["attn"].result is not None
