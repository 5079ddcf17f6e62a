"""Shown over everything while the terminal is smaller than the workbench needs; it acts on no key."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.screen import ModalScreen
from textual.widgets import Static

from mechscope.tui.widgets.plain import Plain

MIN_WIDTH, MIN_HEIGHT = 80, 24


def too_small(width: int, height: int) -> bool:
    return width < MIN_WIDTH or height < MIN_HEIGHT


class TooSmallScreen(ModalScreen[None]):
    """Swallows every key (only the app's priority ones, like ctrl+q, still act) until the terminal grows."""

    DEFAULT_CSS = """
    TooSmallScreen { align: center middle; background: $background; }
    TooSmallScreen Static { width: 100%; height: auto; color: $warning; text-style: bold;
                            text-align: center; }
    """

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.shown_size = (width, height)

    def compose(self) -> ComposeResult:
        yield Plain(self.message(*self.shown_size), id="too-small")

    @staticmethod
    def message(width: int, height: int) -> str:
        return f"terminal too small: {MIN_WIDTH}×{MIN_HEIGHT} needed (now {width}×{height})"

    def show_size(self, width: int, height: int) -> None:
        self.shown_size = (width, height)
        if self.is_mounted:
            self.query_one("#too-small", Static).update(self.message(width, height))

    def on_key(self, event: events.Key) -> None:
        event.stop()  # blind keys would act on panes the user cannot see
        event.prevent_default()

    def on_click(self, event: events.Click) -> None:
        event.stop()
