"""The generation settings dialog: max new tokens, temperature and seed, each validated before it closes."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input

from mechscope.screens.dialog import Dialog
from mechscope.screens.field_errors import FieldError, show_problems
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.plain import Plain, PlainLabel
from mechscope.workbench.state import GenerationSettings
from mechscope.workbench.typed_values import GENERATION_PARSERS

Validate = Callable[[str, str, str], dict[str, str]]  # the typed values -> each faulty field's problem
FIELDS = tuple(GENERATION_PARSERS)


class GenerationOptionsScreen(Dialog[tuple[str, str, str] | None]):
    """Returns the three typed values once `validate` finds no problem (enter in any field; each problem
    shows under its field), None on escape."""

    DEFAULT_CSS = """
    GenerationOptionsScreen { align: center middle; }
    GenerationOptionsScreen > Vertical { width: 60; max-width: 100%; height: auto; border: round $accent;
                                         background: $surface; padding: 0 1; }
    GenerationOptionsScreen Horizontal { height: 1; }
    GenerationOptionsScreen PlainLabel { width: 16; }
    GenerationOptionsScreen Input { width: 1fr; }
    GenerationOptionsScreen FieldError { padding-left: 16; }
    GenerationOptionsScreen Input.-invalid { background: $error 25%; }
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
            for name, value in zip(FIELDS, (str(settings.max_new_tokens), f"{settings.temperature:g}",
                                            str(settings.seed)), strict=True):
                with Horizontal():
                    yield PlainLabel(name.replace("_", " "))
                    yield OrderedInput(value, id=f"gen-{name}", compact=True)
                yield FieldError(name)
            yield Plain("1..512 tokens; temperature 0 = greedy; enter accepts, esc cancels", classes="dim")

    def fields(self) -> dict[str, Input]:
        return {name: self.query_one(f"#gen-{name}", Input) for name in FIELDS}

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        fields = self.fields()
        max_new_tokens, temperature, seed = (field.value for field in fields.values())
        problems = self.validate(max_new_tokens, temperature, seed)
        if problems:
            show_problems(self, fields, problems)
            return
        self.dismiss((max_new_tokens, temperature, seed))

    def action_cancel(self) -> None:
        self.dismiss(None)
