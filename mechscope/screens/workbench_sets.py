"""The workbench screen's prompt-set commands: load or generate a set, step its rows, set numbers,
set sweeps, estimates with exact verification, head detectors and massive activations. A mixin of
`WorkbenchScreen`; every request comes from `Workbench.sets` and its outcome goes back through
`Workbench.accept`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from textual import work
from textual.worker import get_current_worker

from mechscope.tui.messages import Finished
from mechscope.tui.widgets.set_view import SetView
from mechscope.workbench.requests import (
    DetectHeadsRequest,
    EstimateRequest,
    MassiveRequest,
    Outcome,
    Request,
    RunSetRequest,
    SweepSetRequest,
    TemplateSetRequest,
)
from mechscope.workbench.sets import ESTIMATE_GRID, SET_SWEEP_GRID

if TYPE_CHECKING:
    from textual.widgets import TabbedContent

    from mechscope.tui.widgets.head_grid import HeadGrid
    from mechscope.workbench.controller import Workbench

BASE_GRIDS = ("attribution", "sink", "patching", "atp")
RUNNING = {"run_set": "set numbers", "sweep_set": "set sweep", "estimate": "estimate",
           "detect_heads": "head detectors", "massive": "massive activations",
           "template_set": "building the prompt set"}


class SetCommands:
    """Prompt-set commands of the workbench screen (`WorkbenchScreen` provides what is declared here)."""

    if TYPE_CHECKING:
        bench: Workbench
        engine: Any
        grid_metric: str
        app: Any
        workers: Any
        @property
        def grid(self) -> HeadGrid: ...
        @property
        def tabs(self) -> TabbedContent: ...
        @property
        def alive(self) -> bool: ...

        def submit(self, request: Request | None) -> None: ...
        def say(self, text: str) -> None: ...
        def show_error(self, text: str) -> None: ...
        def show_grid(self) -> None: ...
        def update_status(self) -> None: ...
        def post_message(self, message: Any) -> bool: ...
        def query_one(self, selector: Any, expect: Any = None) -> Any: ...

    # ---------------------------------------------------------------- running

    def submit_set(self, request: Request) -> None:
        """A set request runs in its own worker group (one of each kind at a time)."""
        self.say(f"{RUNNING.get(request.kind, request.kind)} running"
                 + (" (esc cancels)" if isinstance(request, (SweepSetRequest, EstimateRequest)) else ""))
        self.run_set_request(request)

    @work(thread=True, exit_on_error=False, group="sets")
    def run_set_request(self, request: Request) -> None:
        from mechscope.workbench.executor import execute

        worker = get_current_worker()

        def partial(result: Any) -> None:
            self.app.call_from_thread(self.set_partial, request, result)

        outcome = execute(self.engine, request, partial if isinstance(request, SweepSetRequest) else None,
                          lambda: worker.is_cancelled)
        self.post_message(Finished(outcome))

    def set_partial(self, request: SweepSetRequest, result: Any) -> None:
        if self.bench.sets.partial(request, result) and self.alive:
            self.show_sets()
            if self.grid_metric == SET_SWEEP_GRID:
                self.show_grid()

    def set_finished(self, outcome: Outcome) -> None:
        """A set outcome was accepted by the Workbench: show what it changed."""
        sets = self.bench.sets
        request = outcome.request
        if sets.error:
            self.show_error(sets.error)
        elif outcome.cancelled:
            self.say(f"{RUNNING.get(request.kind, request.kind)} cancelled")
        elif outcome.ok:
            self.say(f"{RUNNING.get(request.kind, request.kind)} done")
            if isinstance(request, SweepSetRequest):
                self.grid_metric = SET_SWEEP_GRID
            elif isinstance(request, EstimateRequest):
                self.grid_metric = ESTIMATE_GRID
            elif isinstance(request, DetectHeadsRequest) and sets.detectors is not None:
                self.grid_metric = next(iter(sets.detectors.scores))
                self.say(f"grid: {self.grid_metric} (c cycles the detectors; ? shows their definitions)")
            if isinstance(request, (MassiveRequest, RunSetRequest, TemplateSetRequest)):
                self.tabs.active = "tab-set"
        self.show_sets()
        self.show_grid()

    def show_sets(self) -> None:
        self.sync_prompt_pane()
        self.query_one(SetView).show(self.bench.sets)

    def sync_prompt_pane(self) -> None:
        """A row of the set became the inputs: show it in the prompt fields."""
        pane = self.query_one("#prompt-pane")
        if pane.values() != self.bench.inputs:
            pane.set_values(self.bench.inputs)

    def _ready(self) -> bool:
        if self.engine is None:
            self.show_error("the model is still loading")
            return False
        return True

    def _submit_or_say(self, request: Request | None) -> None:
        if request is None:
            if self.bench.sets.error:
                self.show_error(self.bench.sets.error)
            self.show_sets()
            return
        self.submit(request)
        self.show_sets()

    # ---------------------------------------------------------------- grid

    def grid_names(self) -> list[str]:
        """What `c` cycles through: the run's and single-pair sweeps' grids, then the set's."""
        names = list(BASE_GRIDS) + self.bench.sets.grid_names()
        if self.grid_metric not in names:
            names.append(self.grid_metric)
        return names

    def set_grid_values(self, name: str) -> np.ndarray | None:
        return self.bench.sets.grid_values(name)

    def set_marks(self) -> dict[tuple[int, int], str]:
        return self.bench.sets.exact_marks() if self.grid_metric == ESTIMATE_GRID else {}

    # ---------------------------------------------------------------- commands

    def action_prompt_set(self) -> None:
        from mechscope.screens.prompt_set import PromptSetScreen

        def done(text: str | None) -> None:
            if text is None or not self._ready():
                return
            self._submit_or_say(self.bench.sets.open_text(text))
            self.tabs.active = "tab-set"

        self.app.push_screen(PromptSetScreen(), done)

    def action_set_row(self, delta: int) -> None:
        request = self.bench.sets.step(delta)
        if request is None and self.bench.sets.pset is None:
            self.show_error(self.bench.sets.error or "no prompt set")
            return
        self.submit(request)
        self.show_sets()

    def action_set_numbers(self) -> None:
        if self._ready():
            self._submit_or_say(self.bench.sets.run_request())

    def action_set_sweep(self) -> None:
        if self._ready():
            self._submit_or_say(self.bench.sets.sweep_request())

    def action_estimate(self) -> None:
        from mechscope.screens.estimate import EstimateScreen

        if not self._ready():
            return
        if self.bench.sets.pset is None:
            self.show_error("no prompt set: press L to load or generate one")
            return

        def done(text: str | None) -> None:
            if text is not None:
                self._submit_or_say(self.bench.sets.estimate_text(text))

        self.app.push_screen(EstimateScreen(), done)

    def action_detect_heads(self) -> None:
        if self._ready():
            self._submit_or_say(self.bench.sets.detect_request())

    def action_massive(self) -> None:
        if self._ready():
            self._submit_or_say(self.bench.sets.massive_request())

    def cancel_sets(self) -> bool:
        """Esc: stop a running set sweep or estimate; True when one was running."""
        running = [w for w in self.workers if w.group == "sets" and w.is_running]
        for worker in running:
            worker.cancel()
        return bool(running)
