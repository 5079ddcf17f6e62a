"""The workbench screen's research commands: sweep options, metric position, pinned baseline,
reference prompts, generation settings and exports. A mixin of `WorkbenchScreen`; each command goes
through its Workbench (`workbench/research.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.engine.results import RunResult
from mechscope.tui.widgets.pinned import pinned_text
from mechscope.tui.widgets.predictions import PredictionsPane
from mechscope.workbench import exports
from mechscope.workbench.requests import Request

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench

# What "Export…" offers: (choice, title, description).
EXPORTS: tuple[tuple[str, str, str], ...] = (
    ("sweep-csv", "sweep as CSV", "the latest sweep, one row per cell"),
    ("sweep-safetensors", "sweep matrix as safetensors", "the latest sweep's values [rows, cols]"),
    ("attribution-csv", "attribution as CSV", "every part of the direct logit attribution"),
    ("lens-csv", "logit lens as CSV", "per layer, the top decoded tokens"),
)


class ResearchActions:
    """Actions past single interventions (`WorkbenchScreen` provides what is declared here)."""

    if TYPE_CHECKING:
        bench: Workbench
        engine: Any
        app: Any

        def submit(self, request: Request | None) -> None: ...
        def apply(self, request: Request | None) -> None: ...
        def say(self, text: str) -> None: ...
        def show_error(self, text: str) -> None: ...
        def update_status(self) -> None: ...
        def part(self, selector: Any, expect: Any) -> Any: ...

    def _loaded(self) -> bool:
        if self.engine is None:
            self.show_error("the model is still loading")
            return False
        return True

    # ---------------------------------------------------------------- predictions against a pin

    def show_predictions(self, result: RunResult, intervened: bool) -> None:
        pane = self.part(PredictionsPane, PredictionsPane)
        deltas = self.bench.deltas_against_pin()
        if deltas is None:
            pane.show(result, intervened)
            return
        pane.update(pinned_text(result, deltas), layout=False)
        pane.border_title = "predictions"
        pane.border_subtitle = self.bench.pin_label()

    def repaint_predictions(self) -> None:
        run = self.bench.run
        if run is not None and run.result is not None:
            self.show_predictions(run.result, bool(getattr(run.request, "interventions", ())))

    def action_pin_baseline(self) -> None:
        """Pin the current result, or unpin when one is pinned."""
        if self.bench.pinned is not None:
            self.bench.unpin()
        elif not self.bench.pin():
            self.update_status()
            return
        self.repaint_predictions()
        self.update_status()

    # ---------------------------------------------------------------- metric position

    def action_metric_position(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        n = self.bench.n_tokens()
        span = f"0..{n - 1}, or -1 for the last token" if n else "-1 for the last token"

        def done(text: str | None) -> None:
            if text is not None:
                self.submit(self.bench.set_metric_position(text))
                self.update_status()

        self.app.push_screen(AskValueScreen("metric position", f"token position to measure at ({span})",
                                            str(self.bench.metric_position), self.bench.position_error), done)

    # ---------------------------------------------------------------- sweeps

    def action_sweep_with(self, kind: str, direction: str = "noising") -> None:
        if self._loaded():
            self.submit(self.bench.sweep_with(kind, direction))  # type: ignore[arg-type]
            self.update_status()

    def action_sweep_options(self) -> None:
        from mechscope.screens.sweep_options import SweepChoice, SweepOptionsScreen

        if not self._loaded():
            return
        last = self.bench.last_sweep
        kind, direction = (last.request.sweep_kind, last.request.direction) if last else ("head", "noising")

        def done(choice: SweepChoice | None) -> None:
            if choice is not None:
                self.submit(self.bench.sweep_with(choice.kind, choice.direction,  # type: ignore[arg-type]
                                                  choice.on_top))
                self.update_status()

        self.app.push_screen(SweepOptionsScreen(kind, direction, True, len(self.bench.interventions())), done)

    # ---------------------------------------------------------------- reference prompts, generation

    def action_reference_prompts(self) -> None:
        from mechscope.screens.reference_prompts import ReferencePromptsScreen

        if not self._loaded():
            return
        current = self.bench.reference_prompts or tuple(getattr(self.engine, "reference_prompts", ()) or ())

        def done(text: str | None) -> None:
            if text is not None:
                self.submit(self.bench.set_reference_prompts(text))
                self.update_status()

        self.app.push_screen(ReferencePromptsScreen(current), done)

    def action_generation_settings(self) -> None:
        from mechscope.screens.generation_options import GenerationOptionsScreen
        from mechscope.workbench.research import parse_generation

        def validate(max_new_tokens: str, temperature: str, seed: str) -> str | None:
            try:
                parse_generation(max_new_tokens, temperature, seed)
            except ValueError as exc:
                return str(exc)
            return None

        def done(values: tuple[str, str, str] | None) -> None:
            if values is not None:
                error = self.bench.set_generation(*values)
                if error:
                    self.show_error(error)
                else:
                    self.update_status()

        self.app.push_screen(GenerationOptionsScreen(self.bench.generation_settings, validate), done)

    # ---------------------------------------------------------------- exports

    def export_text(self, choice: str) -> tuple[str, Any] | None:
        """(default file name, what to write) for an export choice; None (and a message) when there is nothing."""
        bench = self.bench
        if choice.startswith("sweep"):
            state = bench.last_sweep
            if state is None or state.result is None:
                self.show_error("no sweep to export yet (w or W runs one)")
                return None
            request = state.request
            fmt = "csv" if choice == "sweep-csv" else "safetensors"
            name = exports.default_name("sweep", f"{request.sweep_kind}-{request.direction}", fmt)
            if fmt == "csv":
                return name, exports.sweep_to_csv(state.result, direction=request.direction)
            return name, state.result
        result = bench.result
        if choice == "attribution-csv":
            if result is None or result.attribution is None:
                self.show_error("no attribution to export: set a metric target")
                return None
            return exports.default_name("attribution", "", "csv"), exports.attribution_to_csv(result.attribution)
        if result is None or result.logit_lens is None:
            self.show_error("no logit lens to export yet")
            return None
        return exports.default_name("logit-lens", "", "csv"), exports.lens_to_csv(result.logit_lens)

    def write_export(self, choice: str, path: str, payload: Any) -> None:
        try:
            if isinstance(payload, str):
                exports.write_text(path, payload)
            else:
                state = self.bench.last_sweep
                direction = state.request.direction if state is not None else "noising"
                exports.sweep_to_safetensors(payload, Path(path).expanduser(), direction=direction)
        except OSError as exc:
            self.show_error(f"not exported: {exc.strerror or exc}: {path}")
            return
        self.bench.error = None
        self.say(f"exported {choice.replace('-', ' ')} to {path}")

    def action_export(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen
        from mechscope.screens.choose import ChooseScreen

        def validate(text: str) -> str | None:
            path = Path(text.strip()).expanduser()
            if not text.strip():
                return "give a file name"
            if not path.parent.is_dir():
                return f"no such folder: {path.parent}"
            if path.is_dir():
                return f"{path} is a folder: give a file name"
            return None

        def chosen(choice: str | None) -> None:
            if choice is None:
                return
            made = self.export_text(choice)
            if made is None:
                return
            name, payload = made

            def confirmed(path: str | None) -> None:
                if path is not None:
                    self.write_export(choice, path.strip(), payload)

            self.app.push_screen(AskValueScreen(f"export {choice.replace('-', ' ')}",
                                                "write to (an existing file is replaced)", name, validate),
                                 confirmed)

        self.app.push_screen(ChooseScreen("export", list(EXPORTS)), chosen)
