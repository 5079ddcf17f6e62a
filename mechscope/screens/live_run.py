"""The live run's job: run the inputs once typing pauses, say "running…" only for a slow run, paint an
edit together with its recompute, and fill the panes and view tabs from the latest result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ScreenStackError
from textual.timer import Timer

from mechscope.engine.results import RunResult
from mechscope.requests.kinds import Outcome, Request
from mechscope.screens.features import FEATURES_TAB
from mechscope.tui.commands import key_of
from mechscope.tui.token_labels import token_labels
from mechscope.tui.widgets.plain import plain_title
from mechscope.tui.widgets.predictions import PredictionsPane
from mechscope.tui.widgets.views import GenerationView, LensView, StatsView
from mechscope.workbench.spacing import SpacingHint, first_ids, spacing_hints, with_spaces

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

TYPING_DEBOUNCE_S = 0.3
BUSY_NOTICE_S = 0.15
PAINT_HOLD_S = 0.05  # an edit's repaint waits this long for its recompute, so a fast one paints once
VIEW_TABS = ("tab-attention", "tab-lens", "tab-stats", FEATURES_TAB)  # filled from the latest run


class LiveRunPart:
    """The run of the current inputs and interventions, and the panes that show it."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen
        self.stale_views: set[str] = set()  # view tabs not yet showing the latest result
        self.spacing: list[SpacingHint] = []  # metric tokens typed without the space the model predicts
        self.shown_run: Any = None  # the run on screen when an outcome arrived (before accepting it)
        self._run_timer: Timer | None = None
        self._busy_timer: Timer | None = None
        self._paint_hold: Any = None  # an entered App.batch_update() while an edit waits for its run
        self._paint_hold_timer: Timer | None = None

    # ---------------------------------------------------------------- starting a run

    def schedule(self, delay: float = TYPING_DEBOUNCE_S) -> None:
        """Run the inputs after `delay` (typing restarts the wait); at once for 0."""
        if self._run_timer is not None:
            self._run_timer.stop()
            self._run_timer = None
        if delay > 0:
            self._run_timer = self.screen.set_timer(delay, self.start)
        else:
            self.start()

    def start(self) -> None:
        screen = self.screen
        if not screen.alive or screen.engine is None:
            return
        request = screen.bench.next_run()
        if request is None and not screen.bench.inputs.clean.strip():
            screen.jobs.cancel_group("engine")
            screen.prompt_pane.show_tokens([])
            screen.prompt_pane.show_notes(["empty prompt: type a prompt to run the model"])
            screen.part(PredictionsPane, PredictionsPane).mark_stale("stale: the prompt is empty")
            self.mark_stale("the prompt is empty")
            screen.say("waiting for a prompt")
        screen.submit(request)

    def started(self, request: Request) -> None:
        if self._busy_timer is None and not self.screen.bench.is_attention_request(request):
            # Say "running" only for runs slow enough to notice; a repaint now would delay fast ones.
            self._busy_timer = self.screen.set_timer(BUSY_NOTICE_S, self.show_busy)

    def finished(self, outcome: Outcome) -> None:
        screen = self.screen
        if screen.bench.is_attention_request(outcome.request):
            screen.attention.show()
            return
        self.stop_busy()
        screen.call_next(self.release_paint)  # after this handler's updates: one paint for all
        if screen.bench.run is not self.shown_run:
            self.show_result()
        elif outcome.error:
            screen.part(PredictionsPane, PredictionsPane).mark_stale("stale: the last run failed")
            self.mark_stale(f"the last run failed ({key_of('show_message')} shows why)")

    def show_busy(self) -> None:
        self._busy_timer = None
        if self.screen.alive:
            self.screen.say("running…")

    def stop_busy(self) -> None:
        if self._busy_timer is not None:
            self._busy_timer.stop()
            self._busy_timer = None

    # ---------------------------------------------------------------- one paint per edit

    def hold_paint(self) -> None:
        """Paint an edit together with its recomputed result when that comes within PAINT_HOLD_S.

        Without this the list repaints at once and the result one or two frames later (Textual
        paints at most once per frame): two paints where one shows the same thing sooner.
        """
        if self._paint_hold is not None or self.screen.engine is None:
            return
        self._paint_hold = self.screen.app.batch_update()
        self._paint_hold.__enter__()
        self._paint_hold_timer = self.screen.set_timer(PAINT_HOLD_S, self.release_paint)

    def release_paint(self) -> None:
        if self._paint_hold is None:
            return
        hold, self._paint_hold = self._paint_hold, None
        if self._paint_hold_timer is not None:
            self._paint_hold_timer.stop()
            self._paint_hold_timer = None
        hold.__exit__(None, None, None)
        try:
            self.screen.app.screen.check_idle()  # the screen skipped its repaint while held: ask again now
        except ScreenStackError:
            pass  # the app is closing

    # ---------------------------------------------------------------- showing the result

    def show_result(self) -> None:
        screen, bench = self.screen, self.screen.bench
        run = bench.run
        if run is None or not isinstance(run.result, RunResult):
            return
        result = run.result
        self.mark_stale(None)
        screen.research.show_predictions(result, bool(getattr(run.request, "interventions", ())))
        screen.relabel_interventions()
        self.show_prompt_info(result)
        screen.grid_part.show()
        self.stale_views = set(VIEW_TABS)
        self.show_view(screen.tabs.active)
        compute = result.compute
        if compute is not None:
            mode = compute.mode + (f" from L{compute.start_layer}" if compute.mode == "incremental" else "")
            timing = "" if screen.deterministic else f" in {compute.seconds * 1000:.0f} ms"
            bench.info = f"{mode}{timing}"
        else:
            bench.info = "done"
        if bench.generations.latest is not None and not bench.generations.is_current():
            screen.part(GenerationView, GenerationView).mark_stale()

    def mark_stale(self, why: str | None) -> None:
        """The grid and the views still show the last good run: say so over them (None: current again)."""
        self.screen.tabs.set_class(why is not None, "-stale")
        self.screen.tabs.border_title = plain_title(f"stale: {why}" if why else "")
        self.screen.grid.set_class(why is not None, "-stale")

    def show_view(self, tab: str) -> None:
        """Fill a view tab from the latest result; hidden tabs wait until they are opened."""
        screen = self.screen
        result = screen.bench.result
        if result is None or tab not in self.stale_views:
            return
        self.stale_views.discard(tab)
        if tab == "tab-attention":
            screen.attention.show()
        elif tab == "tab-lens":
            screen.query_one(LensView).show(result.logit_lens)
        elif tab == "tab-stats":
            screen.query_one(StatsView).show(result.stats)
        elif tab == FEATURES_TAB:
            screen.features.refresh()
            screen.feature_attribution.show()

    def show_prompt_info(self, result: RunResult) -> None:
        """The prompt's tokens with the metric's read-out position, and the notes under them."""
        screen = self.screen
        notes: list[str] = []
        readout = len(result.tokens) - 1
        if result.metric_info is not None:
            readout = result.metric_info.position % max(len(result.tokens), 1)
            notes.extend(result.metric_info.warnings)
        if result.truncated_from:
            context = screen.engine.info.max_context
            notes.insert(0, f"prompt truncated: {result.truncated_from} tokens cut to "
                            f"{len(result.token_ids)} (model context {context})")
        metric_note = screen.bench.inputs.metric()[1]
        if metric_note:
            notes.append(metric_note)
        self.spacing = spacing_hints(screen.bench.inputs, result.baseline.logits, first_ids(screen.engine.tokenize))
        notes.extend(hint.note for hint in self.spacing)
        screen.prompt_pane.show_tokens(token_labels(screen.engine, result.token_ids, result.tokens), readout)
        screen.prompt_pane.show_notes(notes)

    def use_spaced_tokens(self) -> None:
        """T: the target / foil the model predicts with their leading space (see the prompt notes)."""
        screen = self.screen
        if screen.bench.sets.spaceable():
            screen.set_tab.fix_spacing()
            return
        if not self.spacing:
            screen.say("target and foil already match what the model predicts")
            return
        inputs = with_spaces(screen.bench.inputs, self.spacing)
        self.spacing = []
        screen.prompt_pane.set_values(inputs)
        screen.bench.edit(inputs)
        self.schedule(0)
