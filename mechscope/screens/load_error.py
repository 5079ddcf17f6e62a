"""Shown instead of the workbench when the model cannot be loaded: the reason, and how to go on."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen

from mechscope.tui.widgets.plain import Plain


class LoadErrorScreen(Screen[None]):
    """One clear reason, no traceback; q quits with a non-zero exit code."""

    DEFAULT_CSS = """
    LoadErrorScreen { align: center middle; }
    LoadErrorScreen Vertical { width: 76; max-width: 100%; height: auto; border: heavy $error;
                               padding: 1 2; }
    LoadErrorScreen #load-error-reason { margin: 1 0; }
    """

    BINDINGS = [Binding("q,escape,enter", "quit_app", "Quit")]

    def __init__(self, source: str, reason: str) -> None:
        super().__init__()
        self.source = source
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "mechscope could not load the model"
            yield Plain(f"model: {self.source}")
            yield Plain(self.reason, id="load-error-reason")
            yield Plain("Try --model demo, a local Hugging Face folder, a .gguf file or a cached hub id. "
                        "Press q to quit.")

    def action_quit_app(self) -> None:
        self.app.exit(return_code=2)
