"""The `?` screen: every key of the workbench and what it does."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll

from mechscope.screens.dialog import Dialog
from mechscope.tui.commands import key_of
from mechscope.tui.widgets.plain import Plain

GRID_LEGEND = (
    "\nGrid marks: x zero, m mean, r resample, s scale, p patch, k knockout, * another kind on a head; "
    "one letter per edit (ms: mean + scale), + for more than two (the list shows them all); "
    "a * after a layer label: an edit of the whole layer (attention or MLP ablation, neuron clamp, "
    "steering, residual patch). On the estimate grid, = marks a head verified by exact patching: "
    "its cell shows the exact value, the others the estimate."
)


def detector_definitions() -> str:
    """The head detectors' definitions (grid metrics after D), read from the engine's detectors module."""
    try:
        from mechscope.engine.results import DEFINITIONS
    except ImportError:
        return ""
    heading = f"\nHead detectors ({key_of('detect_heads')}, then {key_of('choose_grid')} chooses one):\n"
    return heading + "\n".join(f"  {text}" for text in DEFINITIONS.values())


class HelpScreen(Dialog[None]):
    """Lists (keys, description) pairs given by the app; any of escape, q, ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll { width: 72; max-width: 100%; height: auto; max-height: 90%;
                                border: round $accent; background: $surface; padding: 0 1; }
    """

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2), expand=True)
        table.add_column(style="bold cyan", width=min(max(len(key) for key, _ in self.keys), 16))
        table.add_column(ratio=1)
        for key, description in self.keys:
            table.add_row(Text(key), Text(description))
        with VerticalScroll() as scroll:
            scroll.border_title = "keys (esc closes)"
            yield Plain(table)
            yield Plain(GRID_LEGEND, id="grid-legend")
            yield Plain(detector_definitions(), id="detector-definitions")

    def action_close(self) -> None:
        self.dismiss(None)
