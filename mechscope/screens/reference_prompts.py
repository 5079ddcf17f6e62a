"""The reference prompts dialog: the prompts mean ablation averages over, one per line."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Button, Static, TextArea

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.plain import Plain, PlainLabel, PlainTextArea
from mechscope.workbench.typed_values import parse_reference_prompts


class ReferencePromptsScreen(Dialog[str | None]):
    """Returns the text (validated: at least one non-blank line) on ctrl+s / save, None on escape."""

    DEFAULT_CSS = """
    ReferencePromptsScreen { align: center middle; }
    ReferencePromptsScreen > Vertical { width: 80; max-width: 100%; height: auto; max-height: 100%;
                                        border: round $accent; background: $surface; padding: 0 1; }
    ReferencePromptsScreen TextArea { height: 10; }
    ReferencePromptsScreen #ref-error { color: $error; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, prompts: Sequence[str]) -> None:
        super().__init__()
        self.prompts = list(prompts)

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "mean-ablation reference prompts"
            yield PlainLabel("one prompt per line; mean ablation replaces a head by its mean over these")
            yield PlainTextArea("\n".join(self.prompts), id="ref-text")
            yield Plain("", id="ref-error")
            yield Button("save (ctrl+s)", variant="primary", id="ref-save")
            yield PlainLabel("esc cancels", classes="dim")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        text = self.query_one("#ref-text", TextArea).text
        try:
            parse_reference_prompts(text)
        except ValueError as exc:
            self.query_one("#ref-error", Static).update(str(exc))
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
