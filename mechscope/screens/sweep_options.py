"""The sweep options dialog: what to sweep, in which direction, and whether on top of the active interventions."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Select

from mechscope.engine.results import DIRECTIONS, HEAD_INPUTS, SWEEP_KINDS
from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.plain import PlainLabel
from mechscope.workbench.sweeps import HEAD_INPUT_NAMES, SWEEP_NAMES


@dataclass(frozen=True)
class SweepChoice:
    kind: str
    direction: str
    on_top: bool
    head_input: str = "output"  # what a head sweep patches of each head


class SweepOptionsScreen(Dialog[SweepChoice | None]):
    """Returns a `SweepChoice` on "run" (or ctrl+s), None on escape."""

    DEFAULT_CSS = """
    SweepOptionsScreen { align: center middle; }
    SweepOptionsScreen > Vertical { width: 64; max-width: 100%; height: auto; border: round $accent;
                                    background: $surface; padding: 0 1; }
    SweepOptionsScreen Horizontal { height: auto; }
    SweepOptionsScreen PlainLabel { width: 11; padding: 1 0 0 0; }
    SweepOptionsScreen Select { width: 1fr; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "run", "Run")]

    def __init__(self, kind: str = "head", direction: str = "noising", on_top: bool = True,
                 n_interventions: int = 0) -> None:
        super().__init__()
        self.initial = SweepChoice(kind, direction, on_top)
        self.n_interventions = n_interventions

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "sweep"
            with Horizontal():
                yield PlainLabel("over")
                yield Select([(SWEEP_NAMES[k], k) for k in SWEEP_KINDS], value=self.initial.kind,
                             allow_blank=False, id="sweep-kind")
            with Horizontal():
                yield PlainLabel("component")
                yield Select([(f"each head's {HEAD_INPUT_NAMES[k]}" + (" (k/v: shared KV head)" if k in "kv" else ""),
                               k) for k in HEAD_INPUTS], value="output", allow_blank=False, id="sweep-head-input")
            with Horizontal():
                yield PlainLabel("direction")
                yield Select([("noising: patch corrupted into clean", "noising"),
                              ("denoising: patch clean into corrupted", "denoising")],
                             value=self.initial.direction, allow_blank=False, id="sweep-direction")
            yield Checkbox(f"on top of the {self.n_interventions} active intervention(s)",
                           self.initial.on_top and self.n_interventions > 0, id="sweep-on-top",
                           disabled=self.n_interventions == 0)
            yield Button("run (ctrl+s)", variant="primary", id="sweep-run")
            yield PlainLabel("esc cancels", classes="dim")

    def on_mount(self) -> None:
        self.query_one("#sweep-kind", Select).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_run()

    def action_run(self) -> None:
        kind = self.query_one("#sweep-kind", Select).value
        direction = self.query_one("#sweep-direction", Select).value
        head_input = self.query_one("#sweep-head-input", Select).value
        assert kind in SWEEP_KINDS and direction in DIRECTIONS and head_input in HEAD_INPUTS
        self.dismiss(SweepChoice(str(kind), str(direction), self.query_one("#sweep-on-top", Checkbox).value,
                                 str(head_input) if kind == "head" else "output"))

    def action_cancel(self) -> None:
        self.dismiss(None)
