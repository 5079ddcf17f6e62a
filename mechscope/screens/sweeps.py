"""The sweep and generation views' job: start sweeps and generations, show what they stream, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mechscope.engine.results import DIRECTIONS, SweepResult
from mechscope.requests.kinds import (
    GenerateRequest,
    Outcome,
    PathSweepRequest,
    Request,
    SweepRequest,
)
from mechscope.screens.grid import GRID_OF_SWEEP
from mechscope.tui.commands import key_of
from mechscope.tui.widgets.views import GenerationView, SweepView
from mechscope.workbench.sweeps import sweep_title

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen


def view_title(request: SweepRequest | PathSweepRequest) -> str:
    """The sweep view's first line: what was patched (`path patching senders → L23.H3.q`)."""
    receiver = getattr(request, "receiver", None)
    return f"path patching senders → {receiver}" if receiver is not None else ""


class SweepsPart:
    """Sweeps (every entry point) and generation, shown in the sweep and generate tabs."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"sweep": self.sweep, "sweep_with": self.sweep_with, "sweep_options": self.sweep_options,
                "path_sweep": self.path_sweep,
                "generate": self.generate, "generation_settings": self.generation_settings}

    def show_restored(self) -> None:
        """A resumed session's sweeps, in the view and as the grid's metric."""
        bench = self.screen.bench
        for kind, state in bench.sweeps.states.items():
            if state.done and state.result is not None:
                self.show(state.request, state.result, running=False, note=" (from the session)")
                if kind in GRID_OF_SWEEP and bench.sweeps.values(kind) is not None:
                    self.screen.grid_part.metric = GRID_OF_SWEEP[kind]

    @property
    def view(self) -> SweepView:
        return self.screen.part(SweepView, SweepView)

    def show(self, request: SweepRequest | PathSweepRequest, result: SweepResult, running: bool,
             note: str = "") -> None:
        """A sweep in the view, with its header in full and in two short lines (the view picks by size)."""
        bench = self.screen.bench
        normalised = bench.sweeps.effect_scale == "normalised"
        if normalised and result.kind != "atp":
            note += f" · cells: share of the gap ({key_of('toggle_effect_scale')}: Δ)"
        info = self.screen.engine.info
        group = max(info.n_heads // max(info.n_kv_heads, 1), 1)
        self.view.show(result, running=running, note=note,
                       header=bench.sweeps.header(request, result, kv_group=group),
                       short_header=bench.sweeps.header(request, result, short=True, kv_group=group),
                       normalised=normalised, title=view_title(request))

    def rescale(self) -> None:
        """The last sweep again, in the effect scale just chosen."""
        state = self.screen.bench.sweeps.last
        if state is not None and state.result is not None:
            self.show(state.request, state.result, running=not state.done)

    # ---------------------------------------------------------------- sweeps

    def sweep(self, kind: str) -> None:
        self.sweep_with(kind)

    def sweep_with(self, kind: str, direction: str = "noising", on_top: bool | None = None,
                   head_input: str = "output") -> None:
        """Every sweep entry point: the Workbench applies one rule for what the sweep runs on."""
        screen = self.screen
        if screen.loaded():
            screen.submit(screen.bench.sweeps.start(kind, direction, on_top, head_input))  # type: ignore[arg-type]
            screen.update_status()

    def path_sweep(self) -> None:
        """Senders → the selected head: asks q, k or v (and the direction), then fills the grid."""
        from mechscope.screens.ask_value import AskValueScreen

        screen = self.screen
        head = screen.selected_head()
        if head is None or not screen.loaded():
            return

        def parse(text: str) -> tuple[str, str] | None:
            parts = text.split()
            if not parts or parts[0] not in ("q", "k", "v"):
                return None
            if len(parts) == 1:
                return parts[0], "noising"
            return (parts[0], parts[1]) if len(parts) == 2 and parts[1] in DIRECTIONS else None

        def validate(text: str) -> str | None:
            return None if parse(text) else "q, k or v, optionally followed by noising or denoising"

        def done(text: str | None) -> None:
            choice = parse(text) if text else None
            if choice is not None:
                screen.submit(screen.bench.sweeps.path(choice[0], choice[1]))  # type: ignore[arg-type]
                screen.update_status()

        group = max(screen.engine.info.n_heads // max(screen.engine.info.n_kv_heads, 1), 1)
        shared = f"; k and v are KV heads shared by {group} query heads" if group > 1 else ""
        screen.app.push_screen(AskValueScreen(f"senders → L{head[0]}.H{head[1]}",
                                              f"into its q, k or v (then noising or denoising){shared}",
                                              "q", validate), done)

    def sweep_options(self) -> None:
        from mechscope.screens.sweep_options import SweepChoice, SweepOptionsScreen

        screen = self.screen
        if not screen.loaded():
            return
        last = screen.bench.sweeps.last
        kind, direction = (last.request.sweep_kind, last.request.direction) if last else ("head", "noising")

        def done(choice: SweepChoice | None) -> None:
            if choice is not None:
                self.sweep_with(choice.kind, choice.direction, choice.on_top, choice.head_input)

        active = len(screen.bench.interventions())
        screen.app.push_screen(SweepOptionsScreen(kind, direction, screen.bench.sweeps.on_top_default(), active),
                               done)

    def started(self, request: SweepRequest | PathSweepRequest) -> None:
        self.screen.tabs.active = "tab-sweep"
        self.screen.say(f"{sweep_title(request)} running (esc cancels)")

    def partial(self, request: Request, value: Any) -> None:
        assert isinstance(value, SweepResult)
        state = self.screen.bench.sweeps.partial(request, value)  # type: ignore[arg-type]
        if state is None or not self.screen.alive:
            return
        self.show(state.request, value, running=not value.complete)
        if self.screen.grid_part.metric == GRID_OF_SWEEP.get(state.request.sweep_kind):
            self.screen.grid_part.show()

    def finished(self, outcome: Outcome) -> None:
        request = outcome.request
        bench = self.screen.bench
        state = next((s for s in bench.sweeps.states.values() if s.request is request), None)
        if state is None or not outcome.ok:
            return
        result = outcome.result
        self.show(state.request, result, running=False)
        if state.request.sweep_kind in GRID_OF_SWEEP:
            self.screen.grid_part.show(GRID_OF_SWEEP[state.request.sweep_kind])
        timing = "" if self.screen.deterministic else f" in {result.seconds:.1f} s"
        hint = f" · {key_of('path_sweep')}: senders → this head" if result.kind == "head" else ""
        bench.info = f"{sweep_title(state.request)} complete{timing}{hint}"

    def cancel(self) -> bool:
        """Stop a running sweep or generation; True when one was running."""
        screen = self.screen
        sweeping = screen.jobs.cancel("sweep")
        generating = screen.jobs.cancel("generate")
        if sweeping:
            state = screen.bench.sweeps.cancel()
            if state is not None and state.result is not None:
                self.show(state.request, state.result, running=False, note=" (cancelled)")
        return sweeping or generating

    # ---------------------------------------------------------------- generation

    def generate(self) -> None:
        screen = self.screen
        if screen.loaded():
            screen.submit(screen.bench.generations.start())
            screen.update_status()

    def generation_started(self, request: GenerateRequest) -> None:
        self.screen.tabs.active = "tab-generate"
        self.screen.part(GenerationView, GenerationView).reset(request.prompt)
        self.screen.say("generating (esc cancels)")

    def generation_lanes(self, request: GenerateRequest) -> tuple[Request, ...]:
        """Both lanes in one worker: the same request without interventions, then the request itself."""
        generation = self.screen.bench.generations.latest
        baseline = request if generation is None else generation.baseline
        return (baseline, request) if baseline is not request else (request,)

    def token(self, request: Request, value: Any) -> None:
        lane = self.screen.bench.generations.token(request, value)  # type: ignore[arg-type]
        if lane is not None and self.screen.alive:
            self.screen.part(GenerationView, GenerationView).append(lane, value)

    def generation_finished(self, outcome: Outcome) -> None:
        generation = self.screen.bench.generations.latest
        if generation is None or outcome.request is not generation.request:
            return
        self.screen.bench.info = "generation cancelled" if outcome.cancelled else "generated"

    def generation_settings(self) -> None:
        from mechscope.screens.generation_options import GenerationOptionsScreen
        from mechscope.workbench.typed_values import generation_problems

        screen = self.screen

        def done(values: tuple[str, str, str] | None) -> None:
            if values is not None:
                error = screen.bench.generations.set_settings(*values)
                if error:
                    screen.show_error(error)
                else:
                    screen.update_status()

        screen.app.push_screen(GenerationOptionsScreen(screen.bench.generations.settings,
                                                       generation_problems), done)
