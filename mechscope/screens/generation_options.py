"""The generation settings dialog: max new tokens, temperature and seed, each validated before it closes."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Static

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.workbench.state import GenerationSettings

Validate = Callable[[str, str, str], str | None]


class GenerationOptionsScreen(Dialog[tuple[str, str, str] | None]):
    """Returns the three typed values once `validate` accepts them (enter in any field), None on escape."""

    DEFAULT_CSS = """
    GenerationOptionsScreen { align: center middle; }
    GenerationOptionsScreen > Vertical { width: 60; max-width: 100%; height: auto; border: round $accent;
                                         background: $surface; padding: 0 1; }
    GenerationOptionsScreen Horizontal { height: 1; }
    GenerationOptionsScreen Label { width: 16; }
    GenerationOptionsScreen Input { width: 1fr; }
    GenerationOptionsScreen #gen-error { color: $error; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, settings: GenerationSettings, validate: Validate) -> None:
        super().__init__()
        self.settings = settings
        self.validate = validate

    def compose(self) -> ComposeResult:
        settings = self.settings
        with Vertical() as box:
            box.border_title = "generation settings"
            for label, ident, value in (("max new tokens", "gen-max", str(settings.max_new_tokens)),
                                        ("temperature", "gen-temperature", f"{settings.temperature:g}"),
                                        ("seed", "gen-seed", str(settings.seed))):
                with Horizontal():
                    yield Label(label)
                    yield OrderedInput(value, id=ident, compact=True)
            yield Static("", id="gen-error")
            yield Static("1..512 tokens; temperature 0 = greedy; enter accepts, esc cancels", classes="dim")

    def values(self) -> tuple[str, str, str]:
        return tuple(self.query_one(f"#{ident}", Input).value  # type: ignore[return-value]
                     for ident in ("gen-max", "gen-temperature", "gen-seed"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        values = self.values()
        error = self.validate(*values)
        if error:
            self.query_one("#gen-error", Static).update(error)
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)
