"""Prompt pane: clean and corrupted prompts, metric tokens, and the tokenisation strip."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Select, Static

from mechscope.engine.metric import METRIC_KINDS, METRIC_TITLES
from mechscope.tui.widgets.plain import Plain, PlainLabel
from mechscope.tui.widgets.prompt_input import PromptInput
from mechscope.workbench.controller import Inputs

METRIC_CHOICES = tuple((METRIC_TITLES[kind], kind) for kind in METRIC_KINDS)  # (title, kind) for the select
PromptValues = Inputs  # what the pane shows and returns: the Workbench's inputs


def show_token(text: str) -> str:
    """A token as it reads on screen: spaces as middle dots, control characters escaped (never sent raw)."""
    shown = text.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t")
    if not shown.isprintable():
        shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in shown)
    return shown or "∅"


def token_strip(tokens: list[str], highlight: int | None = None) -> Text:
    """`0When 1·Mary 2·and …` with dim positions; `highlight` is the readout position."""
    strip = Text(no_wrap=False)
    for position, token in enumerate(tokens):
        if position:
            strip.append(" ")
        strip.append(str(position), style="dim")
        style = "bold reverse" if position == highlight else ("bold" if position % 2 else "")
        strip.append(show_token(token), style=style)
    return strip


class PromptPane(Vertical):
    """Inputs bubble their Changed/Submitted messages to the app; the app calls `show_*` back."""

    DEFAULT_CSS = """
    PromptPane { height: auto; padding: 0 1; }
    PromptPane Horizontal { height: 1; }
    PromptPane PlainLabel { width: 8; color: $text-muted; }
    PromptPane PlainLabel.-inline { width: auto; padding: 0 1; }
    PromptPane Input { width: 1fr; }
    PromptPane #target, PromptPane #foil { width: 14; }
    PromptPane Select { width: 18; }
    PromptPane #tokens { height: auto; max-height: 3; }
    PromptPane #prompt-notes { height: auto; max-height: 2; color: $warning; }
    PromptPane #prompt-notes.-hidden { display: none; }
    """

    def __init__(self, values: PromptValues, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.initial = values
        self.shown_tokens: tuple = ()
        self.shown_notes: list[str] = []

    def compose(self) -> ComposeResult:
        values = self.initial
        with Horizontal():
            yield PlainLabel("clean")
            yield PromptInput(values.clean, placeholder="the prompt to study", id="clean", compact=True,
                        select_on_focus=False)
        with Horizontal():
            yield PlainLabel("corrupt")
            yield PromptInput(values.corrupted, placeholder="optional: the same prompt with the key fact changed",
                        id="corrupted", compact=True, select_on_focus=False)
        with Horizontal():
            yield PlainLabel("target")
            yield PromptInput(values.target, id="target", compact=True, select_on_focus=False)
            yield PlainLabel("foil", classes="-inline")
            yield PromptInput(values.foil, id="foil", compact=True, select_on_focus=False)
            yield PlainLabel("metric", classes="-inline")
            yield Select(METRIC_CHOICES, value=values.metric_kind, allow_blank=False, compact=True,
                         id="metric-kind")
        yield Plain("", id="tokens")
        yield Plain("", id="prompt-notes", classes="-hidden")

    def values(self) -> PromptValues:
        kind = self.query_one("#metric-kind", Select).value
        return PromptValues(
            clean=self.query_one("#clean", Input).value,
            corrupted=self.query_one("#corrupted", Input).value,
            target=self.query_one("#target", Input).value,
            foil=self.query_one("#foil", Input).value,
            metric_kind=str(kind) if isinstance(kind, str) else "logit_diff",
        )

    def set_values(self, values: PromptValues) -> None:
        """Fill the inputs (resuming a session) without the user typing."""
        for field in ("clean", "corrupted", "target", "foil"):
            self.query_one(f"#{field}", Input).value = getattr(values, field)
        self.query_one("#metric-kind", Select).value = values.metric_kind

    def show_tokens(self, tokens: list[str], readout: int | None = None) -> None:
        shown = (tuple(tokens), readout)
        if shown != self.shown_tokens:  # unchanged on most edits: skip the relayout
            self.shown_tokens = shown
            self.query_one("#tokens", Static).update(token_strip(tokens, readout))

    def show_notes(self, notes: list[str]) -> None:
        """Warnings under the strip (truncation, multi-token targets, empty prompt); [] hides them."""
        if notes == self.shown_notes:
            return
        self.shown_notes = list(notes)
        widget = self.query_one("#prompt-notes", Static)
        widget.update(Text("\n".join(notes)))
        widget.set_class(not notes, "-hidden")
