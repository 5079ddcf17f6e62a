"""A small dialog that asks for one value (the factor of `s`, a note...) and validates it."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Static

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.plain import Plain, PlainLabel, plain_title


def error_of(check: Callable[..., object], *args: object) -> str | None:
    """A dialog's validator from a parser: the message of the ValueError `check(*args)` raises, None
    when the input parses (the same rules the engine applies, worded once, by the parser)."""
    try:
        check(*args)
    except ValueError as exc:
        return str(exc)
    return None


class AskValueScreen(Dialog[str | None]):
    """Returns the typed text on enter (when `validate` gives no error), None on escape."""

    DEFAULT_CSS = """
    AskValueScreen { align: center middle; }
    AskValueScreen Vertical { width: 60; max-width: 100%; height: auto; border: round $accent;
                              background: $surface; padding: 0 1; }
    AskValueScreen #ask-error { color: $error; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, label: str, initial: str = "",
                 validate: Callable[[str], str | None | Awaitable[str | None]] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.label = label
        self.initial = initial
        self.validate = validate

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = plain_title(self.title_text)
            yield Plain(self.label, id="ask-label")  # wraps: a long description is never cut
            yield OrderedInput(self.initial, id="ask-input")
            yield Plain("", id="ask-error")
            yield PlainLabel("enter accepts, esc cancels", classes="dim")

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        checked = self.validate(event.value) if self.validate else None
        error = await checked if inspect.isawaitable(checked) else checked
        if error:
            self.query_one("#ask-error", Static).update(error)
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
