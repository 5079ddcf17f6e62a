"""Dialogs that make a steering vector: built from contrastive prompts, or loaded from a file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Static, TextArea

from mechscope.screens.dialog import Dialog
from mechscope.screens.field_errors import FieldError, show_problems
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.plain import Plain, PlainLabel, PlainTextArea
from mechscope.workbench.numbers import number_problem

VECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VECTOR_SUFFIXES = (".safetensors", ".npy")


@dataclass(frozen=True)
class SteeringRequest:
    """What the dialog asks for: where the vector comes from and how to steer with it."""

    name: str
    layer: int
    coeff: float
    positions: str | tuple[int, ...]  # "all" | "last" | explicit positions
    positive: tuple[str, ...] = ()  # build: one prompt per line
    negative: tuple[str, ...] = ()
    path: str | None = None  # load: a .safetensors or .npy file


def parse_positions(text: str) -> str | tuple[int, ...]:
    """`all`, `last` or comma-separated positions; ValueError says what is wrong."""
    text = text.strip().lower() or "all"
    if text in ("all", "last"):
        return text
    try:
        positions = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"positions: 'all', 'last' or numbers like 3,4 — not {text!r}") from None
    if not positions:
        raise ValueError("positions: 'all', 'last' or numbers like 3,4")
    return positions


def prompt_lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


FIELD_OF_LABEL = {"file": "path", "name": "name", "layer": "layer", "coefficient": "coeff", "positions": "positions"}


class SteeringScreen(Dialog[SteeringRequest | None]):
    """Build (`mode="build"`) or load (`mode="load"`) a vector and steer with it; esc cancels."""

    DEFAULT_CSS = """
    SteeringScreen { align: center middle; }
    SteeringScreen > Vertical { width: 76; max-width: 100%; height: auto; max-height: 100%;
                                border: round $accent; background: $surface; padding: 0 1; }
    SteeringScreen Horizontal { height: 1; }
    SteeringScreen PlainLabel { width: 12; color: $text-muted; }
    SteeringScreen Input { width: 1fr; }
    SteeringScreen TextArea { height: 3; background: $boost; }
    SteeringScreen .prompts-label { width: 100%; }
    SteeringScreen #steer-error { color: $error; height: auto; }
    SteeringScreen FieldError { padding-left: 12; }
    SteeringScreen Input.-invalid { background: $error 25%; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "submit", "Done")]

    def __init__(self, mode: str, n_layers: int, layer: int = 0, name: str = "",
                 positive: str = "", negative: str = "", previous: dict[str, str] | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.n_layers = n_layers
        self.initial = {"layer": str(layer), "name": name, "coeff": "4.0", "positions": "all",
                        "path": "", "positive": positive, "negative": negative}
        self.initial.update(previous or {})  # what was typed last time, so a second try starts from it
        self.typed: dict[str, str] = {}  # the fields as the dialog closed

    def field(self, name: str, label: str) -> ComposeResult:
        with Horizontal():
            yield PlainLabel(label)
            yield OrderedInput(self.initial[name], id=f"steer-{name}", compact=True)
        yield FieldError(name)

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            if self.mode == "build":
                box.border_title = "build steering vector (mean difference of residuals)"
                yield from self.field("name", "name")
            else:
                box.border_title = "load steering vector from a file"
                yield from self.field("path", "file")
                yield from self.field("name", "name")
            yield from self.field("layer", f"layer 0..{self.n_layers - 1}")
            yield from self.field("coeff", "coefficient")
            yield from self.field("positions", "positions")
            if self.mode == "build":
                yield PlainLabel("positive prompts, one per line", classes="prompts-label")
                yield PlainTextArea(self.initial["positive"], id="steer-positive", soft_wrap=True, compact=True)
                yield PlainLabel("negative prompts, one per line", classes="prompts-label")
                yield PlainTextArea(self.initial["negative"], id="steer-negative", soft_wrap=True, compact=True)
            yield Plain("", id="steer-error")
            hint = "builds" if self.mode == "build" else "loads"
            yield Plain(f"enter in a field or ctrl+s {hint} and steers; tab moves; esc cancels",
                        classes="dim")

    def text(self, name: str) -> str:
        if name in ("positive", "negative"):
            return self.query_one(f"#steer-{name}", TextArea).text
        return self.query_one(f"#steer-{name}", Input).value

    def request(self) -> SteeringRequest:
        """The typed request; ValueError names the first field that is wrong."""
        path = None
        if self.mode == "load":
            path = self.text("path").strip()
            if not path:
                raise ValueError("file: type the path of a .safetensors or .npy file")
            file = Path(path).expanduser()
            if file.suffix.lower() not in VECTOR_SUFFIXES:
                raise ValueError(f"file: {file.name} is not a .safetensors or .npy file")
            if not file.is_file():
                raise ValueError(f"file: no such file {file}")
            path = str(file)
        name = self.text("name").strip() or (Path(path).stem if path else "")
        if not VECTOR_NAME.match(name):
            raise ValueError("name: letters, digits, _ . - (up to 64), e.g. love-hate")
        try:
            layer = int(self.text("layer"))
        except ValueError:
            raise ValueError(f"layer: not a whole number: {self.text('layer')!r}") from None
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer: {layer} is out of range 0..{self.n_layers - 1}")
        try:
            coeff = float(self.text("coeff"))
        except ValueError:
            raise ValueError(f"coefficient: not a number: {self.text('coeff')!r}") from None
        problem = number_problem("coefficient", coeff)
        if problem is not None:
            raise ValueError(problem)
        positions = parse_positions(self.text("positions"))
        positive: tuple[str, ...] = ()
        negative: tuple[str, ...] = ()
        if self.mode == "build":
            positive, negative = prompt_lines(self.text("positive")), prompt_lines(self.text("negative"))
            if not positive or not negative:
                raise ValueError("type at least one positive and one negative prompt")
        return SteeringRequest(name, layer, coeff, positions, positive, negative, path)

    def keep_typed(self) -> None:
        names = ("name", "layer", "coeff", "positions") + (("positive", "negative") if self.mode == "build"
                                                          else ("path",))
        self.typed = {name: self.text(name) for name in names}

    def action_submit(self) -> None:
        self.keep_typed()
        try:
            request = self.request()
        except ValueError as exc:
            self.show_problem(str(exc))
            return
        self.dismiss(request)

    def show_problem(self, problem: str) -> None:
        """The problem under the field its message names (`layer: ...`), else under the form."""
        fields = {name: self.query_one(f"#steer-{name}", Input) for name in FIELD_OF_LABEL.values()
                  if self.query(f"#steer-{name}")}  # the load dialog alone has a file field
        field = FIELD_OF_LABEL.get(problem.split(":", 1)[0])
        show_problems(self, fields, {field: problem} if field in fields else {})
        self.query_one("#steer-error", Static).update("" if field in fields else problem)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_cancel(self) -> None:
        self.keep_typed()
        self.dismiss(None)
