"""The research commands' job: predictions against a pinned baseline, metric position and kind,
reference prompts and exports. Each command goes through the Workbench and its parts (`bench.pinned`,
`bench.sweeps`, `bench.sets`); exports are written by `workbench/exports.py`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.engine.results import RunResult
from mechscope.tui.commands import key_of
from mechscope.tui.token_labels import token_labels
from mechscope.tui.widgets.pinned import pinned_text
from mechscope.tui.widgets.plain import plain_title
from mechscope.tui.widgets.predictions import PredictionsPane
from mechscope.workbench import exports

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

# What "Export…" offers: (choice, title, description).
EXPORTS: tuple[tuple[str, str, str], ...] = (
    ("sweep-csv", "sweep as CSV", "the latest sweep, one row per cell"),
    ("sweep-safetensors", "sweep matrix as safetensors", "the latest sweep's values [rows, cols]"),
    ("set-sweep-csv", "set sweep as CSV", "the prompt set's head sweep: per head, the mean over its rows"),
    ("set-sweep-safetensors", "set sweep matrix as safetensors",
     "the prompt set's head sweep: the mean over its rows [layer, head]"),
    ("attribution-csv", "attribution as CSV", "every part of the direct logit attribution"),
    ("lens-csv", "logit lens as CSV", "per layer, the top decoded tokens"),
)


class ResearchPart:
    """Pinned baseline, metric, reference prompts and exports."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen

    def commands(self) -> dict[str, Callable[..., object]]:
        return {"pin_baseline": self.pin_baseline, "metric_position": self.metric_position,
                "metric_kind": self.metric_kind, "reference_prompts": self.reference_prompts,
                "export": self.export}

    # ---------------------------------------------------------------- predictions against a pin

    def show_predictions(self, result: RunResult, intervened: bool) -> None:
        pane = self.screen.part(PredictionsPane, PredictionsPane)
        deltas = self.screen.bench.pinned.deltas()
        if deltas is None:
            top_ids = [token.id for token in result.top]
            labels = dict(zip(top_ids, token_labels(self.screen.engine, top_ids, [t.text for t in result.top]),
                              strict=True))
            pane.show(result, intervened, labels)
            return
        pane.update(pinned_text(result, deltas), layout=False)
        pane.border_title = "predictions"
        pane.border_subtitle = plain_title(self.screen.bench.pinned.label())

    def repaint_predictions(self) -> None:
        run = self.screen.bench.run
        if run is not None and run.result is not None:
            self.show_predictions(run.result, bool(getattr(run.request, "interventions", ())))

    def pin_baseline(self) -> None:
        """Pin the current result, or unpin when one is pinned."""
        if self.screen.bench.pinned.outcome is not None:
            self.screen.bench.pinned.unpin()
        elif not self.screen.bench.pinned.pin():
            self.screen.update_status()
            return
        self.repaint_predictions()
        self.screen.update_status()

    # ---------------------------------------------------------------- metric position

    def metric_position(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        n = self.screen.bench.n_tokens()
        span = f"0..{n - 1}, or -1 for the last token" if n else "-1 for the last token"

        def done(text: str | None) -> None:
            if text is not None:
                self.screen.submit(self.screen.bench.set_metric_position(text))
                self.screen.update_status()

        self.screen.app.push_screen(AskValueScreen("metric position", f"token position to measure at ({span})",
                                            str(self.screen.bench.metric_position), self.screen.bench.position_error), done)

    # ---------------------------------------------------------------- reference prompts, generation

    def metric_kind(self) -> None:
        """Choose the metric (logit diff, prob, loss, KL) from a list instead of tabbing to its field."""
        import dataclasses

        from mechscope.screens.choose import ChooseScreen
        from mechscope.tui.widgets.prompt_pane import METRIC_CHOICES

        screen = self.screen
        current = screen.bench.inputs.metric_kind
        items = [(kind, title, "current" if kind == current else "") for title, kind in METRIC_CHOICES]

        def chosen(kind: str | None) -> None:
            if kind is None or kind == screen.bench.inputs.metric_kind:
                return
            inputs = dataclasses.replace(screen.bench.inputs, metric_kind=kind)
            screen.prompt_pane.set_values(inputs)
            screen.bench.edit(inputs)
            screen.live.schedule(0)

        screen.app.push_screen(ChooseScreen("metric", items), chosen)

    def reference_prompts(self) -> None:
        from mechscope.screens.reference_prompts import ReferencePromptsScreen

        if not self.screen.loaded():
            return
        current = self.screen.bench.reference_prompts or tuple(getattr(self.screen.engine, "reference_prompts", ()) or ())

        def done(text: str | None) -> None:
            if text is not None:
                self.screen.submit(self.screen.bench.set_reference_prompts(text))
                self.screen.update_status()

        self.screen.app.push_screen(ReferencePromptsScreen(current), done)

    # ---------------------------------------------------------------- exports

    def export_text(self, choice: str) -> tuple[str, Any] | None:
        """(default file name, what to write) for an export choice: a CSV's text, or a sweep matrix and its
        direction; None (and a message) when there is nothing."""
        bench = self.screen.bench
        if choice.startswith("sweep"):
            state = bench.sweeps.last
            if state is None or state.result is None:
                self.screen.show_error(f"no sweep to export yet ({key_of('sweep')} or {key_of('sweep_options')} "
                                       "runs one)")
                return None
            request = state.request
            fmt = "csv" if choice == "sweep-csv" else "safetensors"
            name = exports.default_name("sweep", f"{request.sweep_kind}-{request.direction}", fmt)
            if fmt == "csv":
                run = bench.result
                tokens = run.tokens if run is not None and bench.result_is_current else None
                return name, exports.sweep_to_csv(state.result, direction=request.direction, tokens=tokens)
            return name, (state.result, request.direction)
        if choice.startswith("set-sweep"):
            done = bench.sets.sweep_result()
            if done is None:
                self.screen.show_error(f"no set sweep to export yet ({key_of('set_sweep')} runs one on the set)")
                return None
            fmt = "csv" if choice == "set-sweep-csv" else "safetensors"
            name = exports.default_name("sweep", f"set-{done.direction}", fmt)
            grid = exports.set_sweep_grid(done)
            if fmt == "csv":
                return name, exports.sweep_to_csv(grid, direction=done.direction)
            return name, (grid, done.direction)
        result = bench.result
        if choice == "attribution-csv":
            if result is None or result.attribution is None:
                self.screen.show_error("no attribution to export: set a metric target")
                return None
            return exports.default_name("attribution", "", "csv"), exports.attribution_to_csv(result.attribution)
        if result is None or result.logit_lens is None:
            self.screen.show_error("no logit lens to export yet")
            return None
        return exports.default_name("logit-lens", "", "csv"), exports.lens_to_csv(result.logit_lens)

    def write_export(self, choice: str, path: str, payload: Any) -> None:
        try:
            if isinstance(payload, str):
                exports.write_text(path, payload)
            else:
                result, direction = payload
                exports.sweep_to_safetensors(result, Path(path).expanduser(), direction=direction)
        except OSError as exc:
            self.screen.show_error(f"not exported: {exc.strerror or exc}: {path}")
            return
        self.screen.bench.error = None
        self.screen.say(f"exported {choice.replace('-', ' ')} to {path}")

    def export(self) -> None:
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

            self.screen.app.push_screen(AskValueScreen(f"export {choice.replace('-', ' ')}",
                                                "write to (an existing file is replaced)", name, validate),
                                 confirmed)

        self.screen.app.push_screen(ChooseScreen("export", list(EXPORTS)), chosen)
