"""A form's problems beside the fields they are about: each message under its field, the field marked,
the first such field focused."""

from __future__ import annotations

from collections.abc import Mapping

from textual.widget import Widget

from mechscope.tui.widgets.plain import Plain


class FieldError(Plain):
    """The line under one field of a form: its problem, hidden while it has none."""

    DEFAULT_CSS = """
    FieldError { color: $error; height: auto; }
    FieldError.-hidden { display: none; }
    """

    def __init__(self, name: str) -> None:
        super().__init__("", id=f"error-{name}", classes="-hidden")


def show_problems(form: Widget, fields: Mapping[str, Widget], problems: Mapping[str, str]) -> None:
    """Show `problems` (field name -> message) under their fields of `form`, each field named in
    `fields` (name -> its input) with a `FieldError`; the fields without a problem are cleared. The
    first field with a problem takes the focus, so the user types the fix where it is needed."""
    first: Widget | None = None
    for name, field in fields.items():
        problem = problems.get(name, "")
        field.set_class(bool(problem), "-invalid")
        error = form.query_one(f"#error-{name}", FieldError)
        error.update(problem)
        error.set_class(not problem, "-hidden")
        if problem and first is None:
            first = field
    if first is not None:
        first.focus()
