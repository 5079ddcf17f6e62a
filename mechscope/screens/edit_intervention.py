"""Edit any intervention as a form of its fields (enter on the list, or a new one); returns the new value."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Static

from mechscope.engine.interventions import Intervention
from mechscope.screens.dialog import Dialog
from mechscope.screens.field_errors import FieldError, show_problems
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.plain import Plain, PlainLabel, plain_title
from mechscope.workbench.numbers import number_problem

HIDDEN_FIELDS = ("enabled",)


def field_text(value: Any) -> str:
    """A field value as the user edits it: lists as `1,2,3`, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_field(text: str, original: Any) -> Any:
    """Read an edited field back; strings stay strings, numbers and position lists are parsed."""
    text = text.strip()
    if isinstance(original, str) and original not in ("all", "last"):
        return text
    if text == "":
        return None
    if "," in text:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if all(part.lstrip("-").isdigit() for part in parts):
            return [int(part) for part in parts]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def rebuild(original: Intervention, texts: dict[str, str]) -> Intervention:
    """A new intervention of the same kind with the edited fields; ValueError says what is wrong."""
    data = original.to_dict()
    for name, text in texts.items():
        data[name] = parse_field(text, getattr(original, name))
        if isinstance(data[name], float) and (problem := number_problem(name, data[name])):
            raise ValueError(problem)
    try:
        return Intervention.from_dict(data)
    except TypeError as exc:
        raise ValueError(f"{original.kind}: {exc}") from None


def plain(message: str, field: str) -> str:
    """A parse error in words a user reads: `positions: 'x' is not a whole number`."""
    raw = re.search(r"invalid literal for int\(\) with base 10: (.+)$", message) or \
        re.search(r"must be an integer, got ('.*'|[-\d.e+]+)$", message)
    if raw:
        return f"{field}: {raw.group(1)} is not a whole number"
    if re.search(r"must be (an integer|a number), got None$", message):
        return f"{field}: empty: type a value"
    return message


def field_at_fault(original: Intervention, texts: dict[str, str], message: str) -> str | None:
    """The field an error is about: the one that fails on its own, else the first the message names."""
    for name, text in texts.items():
        try:
            rebuild(original, {name: text})
        except ValueError:
            return name
    for name in texts:
        if re.search(rf"\b{re.escape(name)}\b", message):
            return name
    return None


class EditInterventionScreen(Dialog[Intervention | None]):
    """One input per field; enter saves (errors stay in the dialog), esc cancels."""

    DEFAULT_CSS = """
    EditInterventionScreen { align: center middle; }
    EditInterventionScreen > Vertical { width: 70; max-width: 100%; height: auto; max-height: 100%;
                                        border: round $accent; background: $surface; padding: 0 1; }
    EditInterventionScreen Horizontal { height: 1; }
    EditInterventionScreen PlainLabel { width: 14; color: $text-muted; }
    EditInterventionScreen Input { width: 1fr; }
    EditInterventionScreen #edit-error { color: $error; height: auto; }
    EditInterventionScreen FieldError { padding-left: 14; }
    EditInterventionScreen Input.-invalid { background: $error 25%; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, intervention: Intervention, title: str | None = None,
                 hint: str = "empty positions = all",
                 check: Callable[[Intervention], Awaitable[str | None]] | None = None) -> None:
        super().__init__()
        self.check = check  # the engine's dry run: a value it refuses keeps the dialog open
        self.original = intervention
        self.title_text = title or f"edit {intervention.label}"
        self.hint = hint
        self.field_names = [f.name for f in dataclasses.fields(intervention)
                            if f.name not in HIDDEN_FIELDS]

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = plain_title(self.title_text)
            for name in self.field_names:
                with Horizontal():
                    yield PlainLabel(name)
                    yield OrderedInput(field_text(getattr(self.original, name)), id=f"field-{name}",
                                compact=True)
                yield FieldError(name)
            yield Plain("", id="edit-error")
            yield Plain(f"enter saves, esc cancels; {self.hint}", classes="dim")

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        texts = {name: self.query_one(f"#field-{name}", Input).value for name in self.field_names}
        try:
            edited = rebuild(self.original, texts)
        except ValueError as exc:
            problem: str | None = str(exc)
        else:  # the dry run runs in a worker: the dialog stays responsive when the engine is remote
            problem = await self.check(edited) if self.check is not None else None
        if problem is None:
            self.dismiss(edited)
            return
        field = field_at_fault(self.original, texts, problem)
        self.show_problem(field, plain(problem, field or "value"))

    def show_problem(self, field: str | None, problem: str) -> None:
        """The error under its field (and the field marked), or under the form when no field is named."""
        fields = {name: self.query_one(f"#field-{name}", Input) for name in self.field_names}
        show_problems(self, fields, {field: problem} if field else {})
        self.query_one("#edit-error", Static).update("" if field else problem)

    def action_cancel(self) -> None:
        self.dismiss(None)
