"""The full text of a message the status line had to cut (an engine error, a long note)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.plain import Plain, plain_title


class MessageScreen(Dialog[None]):
    """One message, wrapped in full; esc, enter or q closes it."""

    DEFAULT_CSS = """
    MessageScreen { align: center middle; }
    MessageScreen VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 90%;
                                   border: round $accent; background: $surface; padding: 0 1; }
    MessageScreen VerticalScroll.-error { border: round $error; }
    """

    BINDINGS = [Binding("escape,enter,q,E", "close", "Close")]

    def __init__(self, title: str, text: str, error: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.text = text
        self.error = error

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="-error" if self.error else "") as box:
            box.border_title = plain_title(f"{self.title_text} (esc closes)")
            yield Plain(self.text, id="message-text")

    def action_close(self) -> None:
        self.dismiss(None)
