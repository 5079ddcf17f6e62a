"""The workbench screen's sweep, generation and view commands. A mixin of `WorkbenchScreen`, which
provides the parts and helpers these methods use (`bench`, `part`, `submit`, `say`, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import events
from textual.widgets import DataTable, Input

from mechscope.tui.commands import COMMANDS, WIDGET_KEYS, key_label
from mechscope.tui.messages import GenerationToken, SweepPartial
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.tui.widgets.prompt_input import PromptInput
from mechscope.tui.widgets.views import AttentionMap, GenerationView, SweepView
from mechscope.workbench.requests import Outcome, SweepRequest
from mechscope.workbench.spacing import SpacingHint, with_spaces

SWEEP_OF_GRID = {"patching": "head", "atp": "atp"}  # grid metric -> the sweep kind that computes it
GRID_OF_SWEEP = {kind: name for name, kind in SWEEP_OF_GRID.items()}


class JobAndViewActions:
    """Sweeps, generation, view scrolling and messages of the workbench screen."""

    if TYPE_CHECKING:
        spacing: list[SpacingHint]

        def __getattr__(self, name: str) -> Any: ...

    # ---------------------------------------------------------------- sweeps

    def action_sweep(self, kind: str) -> None:
        if self.engine is None:
            self.show_error("the model is still loading")
            return
        self.submit(self.bench.sweep(kind))
        self.update_status()

    def on_sweep_partial(self, message: SweepPartial) -> None:
        state = self.bench.sweep_partial(message.request, message.result)
        if state is None or not self.alive:
            return
        self.part(SweepView, SweepView).show(message.result, running=not message.result.complete,
                                             note=self.bench.sweep_header(message.request))
        if self.grid_metric == GRID_OF_SWEEP.get(message.request.sweep_kind):
            self.show_grid()

    def sweep_finished(self, outcome: Outcome) -> None:
        request = outcome.request
        assert isinstance(request, SweepRequest)
        state = self.bench.sweeps.get(request.sweep_kind)
        if state is None or state.request is not request or not outcome.ok:
            return
        result = outcome.result
        self.part(SweepView, SweepView).show(result, running=False, note=self.bench.sweep_header(request))
        if request.sweep_kind in GRID_OF_SWEEP:
            self.grid_metric = GRID_OF_SWEEP[request.sweep_kind]
            self.show_grid()
        timing = "" if self.deterministic else f" in {result.seconds:.1f} s"
        self.bench.info = f"{result.kind} sweep complete{timing}"

    def action_cancel(self) -> None:
        if isinstance(self.app.focused, (Input, AttentionMap)):
            self.grid.focus()
            return
        running = [w for w in self.workers if w.group in ("sweep", "generate") and w.is_running]
        for worker in running:
            worker.cancel()
        if any(worker.group == "sweep" for worker in running):
            state = self.bench.cancel_sweep()
            if state is not None and state.result is not None:
                self.part(SweepView, SweepView).show(state.result, running=False,
                                                     note=" (cancelled)" + self.bench.sweep_header(state.request))
        if self.cancel_sets() or running:
            self.say("cancelled")

    # ---------------------------------------------------------------- generation

    def action_generate(self) -> None:
        if self.engine is None:
            self.show_error("the model is still loading")
            return
        self.submit(self.bench.generate())
        self.update_status()

    def on_generation_token(self, message: GenerationToken) -> None:
        lane = self.bench.generation_token(message.request, message.token)
        if lane is not None and self.alive:
            self.part(GenerationView, GenerationView).append(lane, message.token)

    def generation_finished(self, outcome: Outcome) -> None:
        generation = self.bench.generation
        if generation is None or outcome.request is not generation.request:
            return
        self.bench.info = "generation cancelled" if outcome.cancelled else "generated"

    # ---------------------------------------------------------------- misc actions

    def action_show_tab(self, tab: str) -> None:
        self.tabs.active = tab
        self.call_after_refresh(self.focus_grid_if_lost)

    def focus_grid_if_lost(self) -> None:
        """A tab switch hid the focused view: keys go to the grid, never to whatever Tab reaches next."""
        if self.alive and self.app.screen is self and self.app.focused is None:
            self.grid.focus()

    def action_use_spaced_tokens(self) -> None:
        """T: the target / foil the model predicts with their leading space (see the prompt notes)."""
        if not self.spacing:
            self.say("target and foil already match what the model predicts")
            return
        inputs = with_spaces(self.bench.inputs, self.spacing)
        self.spacing = []
        self.prompt_pane.set_values(inputs)
        self.bench.edit(inputs)
        self.schedule_run(0)

    def action_toggle_numbers(self) -> None:
        shown = not self.grid.show_numbers
        for heatmap in self.query(Heatmap):
            heatmap.toggle_numbers(shown)
        self.say("numbers in heatmaps" if shown else "heatmaps: colours only (0 shows numbers)")

    def action_scroll_view(self, key: str) -> None:
        """shift+pgup/pgdn/home/end: scroll the open view tab, wherever the focus is."""
        pane = self.tabs.get_pane(self.tabs.active)
        target = next((w for w in pane.query("DataTable, Heatmap, VerticalScroll") if w.display), None)
        if target is None:
            return
        if target is self.attention_map and target.cursor is not None:
            moves = {"pageup": (-8, 0), "pagedown": (8, 0), "home": (-9999, 0), "end": (9999, 0)}
            target.move_cursor(*moves[key])  # the query cursor follows, so the caption says where
            return
        ends = ("scroll_top", "scroll_bottom") if isinstance(target, DataTable) else ("scroll_home", "scroll_end")
        action = {"pageup": "page_up", "pagedown": "page_down", "home": ends[0], "end": ends[1]}[key]
        getattr(target, f"action_{action}")()

    def action_show_message(self) -> None:
        """E (or a click on the status line): the whole message, never cut."""
        from mechscope.screens.message import MessageScreen

        error = self.bench.error
        self.app.push_screen(MessageScreen("error" if error else "message", error or self.bench.info,
                                           error=bool(error)))

    def on_click(self, event: events.Click) -> None:
        if event.widget is not None and event.widget.id == "status-bar":
            self.action_show_message()

    def action_focus_prompt(self) -> None:
        field = self.query_one("#clean", PromptInput)
        field.arm()  # a deliberate entry: letters type from now until the field is left
        field.focus()

    def action_help(self) -> None:
        from mechscope.screens.help import HelpScreen

        keys = [(key_label(c.keys), c.help if c.title in c.help else f"{c.title}: {c.help}")
                for c in COMMANDS]
        self.app.push_screen(HelpScreen(keys + list(WIDGET_KEYS)))

    def action_note(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        def done(text: str | None) -> None:
            if text:
                recorder = self.bench.recorder
                recorder.note(text)
                self.say("note saved" if recorder.saved else
                         "note not saved: no session" if recorder.session is None else "note not saved")
                self.update_title()

        self.app.push_screen(AskValueScreen("note", "a note for the session log"), done)

    def action_retry_saving(self) -> None:
        recorder = self.bench.recorder
        if not recorder.unsaved:
            self.say("nothing waits to be saved")
            return
        left = recorder.retry_unsaved()
        self.say(f"{left} still not saved" if left else "saved everything that was waiting")
        self.update_title()

    def action_sessions(self) -> None:
        open_sessions = getattr(self.app, "open_sessions", None)
        if open_sessions is not None:
            open_sessions()
