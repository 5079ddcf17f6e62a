"""The workbench App: loads the engine in a worker, runs it on every edit, shows the results."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, Select, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from mechscope.engine.addresses import parse_address
from mechscope.engine.errors import Cancelled, MechscopeError
from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    HeadScale,
    Intervention,
    Metric,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.results import RunResult, SweepResult
from mechscope.engine.views import Views
from mechscope.tui.messages import (
    AttentionReady,
    EngineError,
    EngineFailed,
    EngineLoaded,
    EngineProgress,
    GenerationDone,
    GenerationToken,
    InterventionChecked,
    RunFinished,
    SweepUpdate,
    VectorReady,
)
from mechscope.tui.recording import SessionRecorder
from mechscope.tui.state import Change, Entry, InterventionStack
from mechscope.tui.widgets.head_grid import GRID_METRICS, HeadGrid
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.tui.widgets.interventions import InterventionList
from mechscope.tui.widgets.predictions import PredictionsPane
from mechscope.tui.widgets.prompt_pane import PromptPane, PromptValues
from mechscope.tui.widgets.views import (
    AttentionMap,
    AttentionView,
    GenerationView,
    LensView,
    StatsView,
    SweepView,
)

# How the status bar introduces a failed engine request, by the request's name.
ERROR_PREFIXES = {"add": "not added", "change": "not changed", "vector": "no steering vector"}
EXAMPLE_POSITIVE = "I love this. It is wonderful"
EXAMPLE_NEGATIVE = "I hate this. It is awful"

IOI_PAIR = PromptValues(
    clean="When Mary and John went to the store, John gave a drink to",
    corrupted="When Mary and John went to the store, Mary gave a drink to",
    target=" Mary",
    foil=" John",
    metric_kind="logit_diff",
)
TYPING_DEBOUNCE_S = 0.3
CURSOR_DEBOUNCE_S = 0.12
BUSY_NOTICE_S = 0.15
PAINT_HOLD_S = 0.05  # an edit's repaint waits this long for its recompute, so a fast one paints once
TOP_K = 10
GENERATE_TOKENS = 24
TABS = ("tab-attention", "tab-lens", "tab-sweep", "tab-generate", "tab-stats")
SWEEP_OF_GRID = {"patching": "head", "atp": "atp"}  # grid metric -> the sweep kind that computes it

EngineFactory = Callable[[Callable[[str, "float | None"], None]], Any]


@dataclass(frozen=True)
class Command:
    """One workbench action: its key ("" for palette only), what the help screen, palette and footer call it."""

    keys: str
    action: str
    title: str
    help: str
    show: bool = False  # listed in the footer
    short: str = ""  # the footer's word for it


COMMANDS: tuple[Command, ...] = (
    Command("space", "ablate('zero')", "Zero-ablate head", "toggle zero ablation of the selected head", True,
            "zero"),
    Command("m", "ablate('mean')", "Mean-ablate head", "toggle mean ablation (over reference prompts)", True,
            "mean"),
    Command("R", "ablate('resample')", "Resample-ablate head", "toggle resample ablation from the corrupted prompt"),
    Command("s", "scale_head", "Scale head", "multiply the selected head's output by a factor", True, "scale"),
    Command("p", "patch_head", "Patch head", "patch the selected head from the corrupted prompt", True, "patch"),
    Command("K", "knockout", "Knock out attention edge",
            "arrows pick a query→key cell of the attention map; k / enter toggles it", True,
            "knockout"),
    Command("", "knockout_at", "Knock out attention edge by positions…",
            "asks query,key; toggles that edge of the selected head"),
    Command("v", "build_vector", "Build steering vector…",
            "positive minus negative prompts' residuals at a layer; steers with it", True,
            "steer"),
    Command("V", "load_vector", "Load steering vector from file…",
            "a .safetensors or .npy vector [d_model], then steer with it"),
    Command("A", "ablate_component('attn')", "Ablate attention of layer…",
            "zero, mean or resample the whole attention output of a layer"),
    Command("M", "ablate_component('mlp')", "Ablate MLP of layer…", "zero, mean or resample the MLP output of a layer"),
    Command("N", "clamp_neuron", "Clamp neuron…", "set one MLP neuron of a layer to a value"),
    Command("plus", "add_intervention", "Add intervention…", "a new intervention of any kind, filled in as a form",
            True, "add"),
    Command("enter", "edit_head", "Edit intervention", "edit the intervention on the selected head"),
    Command("u", "undo", "Undo", "undo the last intervention change", True, "undo"),
    Command("g", "generate", "Generate", "generate baseline and intervened continuations", True, "generate"),
    Command("c", "cycle_grid", "Colour grid by next metric", "attribution, sink score, patching, AtP", True,
            "grid metric"),
    Command("w", "sweep('head')", "Sweep: head patching", "patch every head from the corrupted prompt"),
    Command("a", "sweep('atp')", "Sweep: attribution patching", "AtP estimate for every head"),
    Command("r", "sweep('resid')", "Sweep: residual patching", "patch the residual stream per layer and position"),
    Command("escape", "cancel", "Cancel", "stop a running sweep or generation; leave a text field"),
    Command("slash,i", "focus_prompt", "Edit prompt", "move the focus to the clean prompt"),
    Command("1", "show_tab('tab-attention')", "View: attention", "attention pattern of the selected head"),
    Command("2", "show_tab('tab-lens')", "View: logit lens", "per-layer decoding of the residual"),
    Command("3", "show_tab('tab-sweep')", "View: sweeps", "sweep progress and results"),
    Command("4", "show_tab('tab-generate')", "View: generation", "baseline and intervened generation"),
    Command("5", "show_tab('tab-stats')", "View: activation stats", "residual norms, massive activations"),
    Command("X", "clear_interventions", "Remove all interventions", "clear the list (undo brings it back)"),
    Command("n", "note", "Add a note", "write a note into the session"),
    Command("S", "sessions", "Sessions", "list, open and replay sessions"),
    Command("question_mark,f1", "help", "Keys", "show every key", True, "keys"),
    Command("q", "quit", "Quit", "leave mechscope"),
)

# Actions that belong to the workbench: disabled (and hidden from footers) when another screen is on top.
WORKBENCH_ACTIONS = frozenset(c.action.split("(")[0] for c in COMMANDS) - {"quit"}

# The kinds "Add intervention…" offers: (kind, title, description).
NEW_INTERVENTION_KINDS: tuple[tuple[str, str, str], ...] = (
    ("head_ablation", "head ablation", "zero / mean / resample one head"),
    ("head_scale", "head scale", "multiply one head's output"),
    ("activation_patch", "activation patch", "copy an activation from another prompt"),
    ("attention_knockout", "attention knockout", "mask one query→key edge of a head"),
    ("component_ablation", "component ablation", "ablate a layer's attention or MLP output"),
    ("neuron_clamp", "neuron clamp", "set one MLP neuron to a value"),
    ("steering_vector", "steering vector", "steer the residual stream with a vector"),
)

# Keys that only make sense inside one widget, listed on the help screen.
WIDGET_KEYS: tuple[tuple[str, str], ...] = (
    ("arrows / h j k l", "move the cursor on the layer x head grid"),
    ("pgup / pgdn / home / end", "jump layers on the grid"),
    ("arrows (attention)", "move the query x key cell cursor of the attention map"),
    ("k / enter (attention)", "toggle the knockout of the edge under the cursor; esc back to the grid"),
    ("space (list)", "toggle the highlighted intervention on or off"),
    ("enter (list)", "edit the highlighted intervention"),
    ("x / delete (list)", "delete the highlighted intervention"),
    ("enter (prompt)", "run now instead of waiting for typing to pause"),
    ("tab / shift+tab", "move between prompt, grid, list and views"),
    ("ctrl+p", "command palette: every action by name"),
    ("ctrl+q", "quit"),
)


def key_label(keys: str) -> str:
    if not keys:
        return "palette"
    names = {"question_mark": "?", "slash": "/", "space": "space", "escape": "esc", "plus": "+"}
    return " / ".join(names.get(key, key) for key in keys.split(","))


class MechscopeApp(App[int]):
    """The workbench. Inject `engine_factory(progress) -> Engine` to run on any engine (tests use tiny ones)."""

    TITLE = "mechscope"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]  # the footer only where rows are to spare
    BINDINGS = [Binding(c.keys, c.action, c.short or c.title, show=c.show) for c in COMMANDS if c.keys]

    def __init__(self, engine_factory: EngineFactory | None = None, session_name: str | None = None,
                 *, source: str = "demo", record: bool = True, deterministic: bool = False,
                 initial: PromptValues = IOI_PAIR) -> None:
        super().__init__()
        self.engine_factory = engine_factory
        self.session_name = session_name
        self.source = source
        self.record = record
        self.deterministic = deterministic  # snapshot mode: no timings on screen
        self.initial = initial
        self.engine: Any = None
        self.recorder = SessionRecorder()
        self.stack = InterventionStack()
        self.result: RunResult | None = None
        self.request = 0
        self.sweeps: dict[str, SweepResult] = {}
        # the (clean, corrupted, metric) each sweep was computed for: the grid hides a sweep
        # whose inputs no longer match the prompt pane instead of colouring heads with stale values
        self.sweep_inputs: dict[str, tuple[str, str, Metric]] = {}
        self.last_sweep: SweepResult | None = None  # the latest partial or final sweep shown
        self.sweep_cancelled = False
        self.grid_metric = "attribution"
        self.status_error: str | None = None
        self.status_info = "loading model…"
        self.load_failed = False
        self._run_timer: Timer | None = None
        self._attention_timer: Timer | None = None
        self._busy_timer: Timer | None = None
        self._paint_hold: Any = None  # an entered App.batch_update() while an edit waits for its run
        self._paint_hold_timer: Timer | None = None
        self.stale_views: set[str] = set()  # view tabs not yet showing the latest result
        self.last_run_key: tuple | None = None  # what the latest live run was started with
        self.pending_note: str | None = None  # why the metric is not used, shown under the prompt
        self.engine_calls = 0  # how many engine requests the UI started (tests read it)
        self.generated: dict[str, list] = {"baseline": [], "intervened": []}

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="title-bar"):
            yield Static(f"mechscope · loading {self.source}…", id="title-model")
            yield Static("", id="title-session")
        yield PromptPane(self.initial, id="prompt-pane")
        with Horizontal(id="body"):
            yield HeadGrid(id="grid")
            with Vertical(id="side"):
                with Horizontal(id="top-right"):
                    yield PredictionsPane("waiting for the model…", id="predictions")
                    yield InterventionList(id="interventions")
                with TabbedContent(id="views", initial="tab-attention"):
                    with TabPane("attention", id="tab-attention"):
                        yield AttentionView()
                    with TabPane("lens", id="tab-lens"):
                        yield LensView()
                    with TabPane("sweep", id="tab-sweep"):
                        yield SweepView()
                    with TabPane("generate", id="tab-generate"):
                        yield GenerationView()
                    with TabPane("stats", id="tab-stats"):
                        yield StatsView()
        with Vertical(id="bottom-bar"):
            yield Static("", id="status-bar")
            yield Footer(id="workbench-footer", show_command_palette=False)

    def part(self, selector: Any, expect_type: Any = None) -> Any:
        """A widget of the workbench screen, whichever screen (help, dialog) is on top."""
        if expect_type is None:
            return self.workbench.query_one(selector)
        return self.workbench.query_one(selector, expect_type)

    @property
    def workbench_alive(self) -> bool:
        """False while the app shuts down and its widgets are already gone (late timers, messages)."""
        return bool(self.workbench.query(PromptPane))

    def on_mount(self) -> None:
        self.workbench = self.screen
        self.part(InterventionList).show_entries(())
        self.part(HeadGrid).focus()
        self.update_status()
        self.load_engine()

    # ---------------------------------------------------------------- loading

    @work(thread=True, exclusive=True, exit_on_error=False, group="load")
    def load_engine(self) -> None:
        def progress(text: str, fraction: float | None = None) -> None:
            self.post_message(EngineProgress(text, fraction))

        try:
            engine = self.default_factory(progress) if self.engine_factory is None else \
                self.engine_factory(progress)
        except MechscopeError as exc:
            self.post_message(EngineFailed(str(exc)))
            return
        except Exception as exc:  # anything else from a broken model folder: still one line
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(EngineLoaded(engine))

    def default_factory(self, progress: Callable[[str, float | None], None]) -> Any:
        from mechscope.engine import Engine

        return Engine.load(self.source, progress=progress)

    def on_engine_progress(self, message: EngineProgress) -> None:
        percent = "" if message.fraction is None else f" {message.fraction:.0%}"
        self.part("#title-model", Static).update(f"mechscope · {message.text}{percent}")
        self.status_info = f"{message.text}{percent} (you can type a prompt or press ? meanwhile)"
        self.update_status()

    def on_engine_failed(self, message: EngineFailed) -> None:
        from mechscope.screens.load_error import LoadErrorScreen

        self.load_failed = True
        self.push_screen(LoadErrorScreen(self.source, message.reason))

    def on_engine_loaded(self, message: EngineLoaded) -> None:
        self.engine = message.engine
        info = self.engine.info
        self.part(HeadGrid).configure(info.n_layers, info.n_heads)
        if self.record:
            self.recorder, state = SessionRecorder.start(self.session_name, self.engine)
            if state is not None:
                self.restore(state)
        self.status_info = "ready"
        self.update_title()
        self.refresh_interventions()
        self.start_run()

    def restore(self, state: Any) -> None:
        """Put a resumed session's prompts, metric, interventions and vectors back."""
        metric = state.metric
        values = PromptValues(
            clean=state.clean or "",
            corrupted=state.corrupted or "",
            target=metric.target if metric is not None else "",
            foil=metric.foil if metric is not None else "",
            metric_kind=metric.kind if metric is not None else "logit_diff",
        )
        self.part(PromptPane).set_values(values)
        self.stack = InterventionStack(Entry(int(i), iv) for i, iv in state.interventions)
        self.stack.next_id = max(self.stack.next_id, self.recorder.used_intervention_ids() + 1)
        for name, array in (state.vectors or {}).items():
            self.engine.add_vector(name, np.asarray(array))
        self.recorder.remember_state(values.clean, values.corrupted, metric)

    def update_title(self) -> None:
        if self.engine is None:
            return
        info = self.engine.info
        title = Text()
        title.append(info.name, style="bold")
        title.append(f" │ {info.device} {info.dtype} │ {info.n_layers} layers × {info.n_heads} heads")
        self.part("#title-model", Static).update(title, layout=False)
        session = Text()
        if self.recorder.session is not None:
            session.append(f"session {self.recorder.name} ")
            session.append("saved" if self.recorder.saved else "UNSAVED",
                           style="green" if self.recorder.saved else "bold red")
            if self.recorder.error:
                session.append(f" ({self.recorder.error})", style="yellow")
        else:
            session.append(self.recorder.error or "not recording", style="yellow")
        widget = self.part("#title-session", Static)
        if session.plain != getattr(widget, "shown_plain", None):
            widget.shown_plain = session.plain
            widget.update(session)

    # ---------------------------------------------------------------- status

    def update_status(self) -> None:
        text = Text()
        grid = self.part(HeadGrid)
        if grid.selected is not None and self.engine is not None:
            layer, head = grid.selected
            text.append(f"L{layer}.H{head}", style="bold")
            value = grid.values[layer, head] if grid.values is not None else np.nan
            if np.isfinite(value):
                text.append(f" {grid.metric_name} {value:+.3f}")
            marks = [e.intervention.label for e in (*self.stack.on_head(layer, head), *self.stack.on_layer(layer))
                     if e.intervention.enabled]
            if marks:
                listed = ", ".join(marks)
                if len(listed) > 40:  # keep room for the message after it
                    listed = f"{len(marks)} interventions here"
                text.append(f" [{listed}]", style="yellow")
            text.append(" │ ")
        if self.status_error:
            text.append(self.status_error, style="bold red")
        else:
            text.append(self.status_info)
        text.append(" │ ? keys  ctrl+p commands", style="dim")
        self.part("#status-bar", Static).update(text, layout=False)  # fixed size: no relayout

    def show_error(self, text: str) -> None:
        self.status_error = text
        self.update_status()

    # ---------------------------------------------------------------- live runs

    def prompt_values(self) -> PromptValues:
        return self.part(PromptPane).values()

    def build_metric(self, values: PromptValues) -> tuple[Metric | None, str | None]:
        """The metric the inputs describe, or None with the reason shown under the prompt."""
        if not values.target:
            return None, "no metric: type a target token (e.g. ' Mary')"
        try:
            if values.metric_kind == "logit_diff":
                return Metric("logit_diff", values.target, values.foil), None
            return Metric(values.metric_kind, values.target), None  # type: ignore[arg-type]
        except ValueError as exc:
            return None, f"metric not used: {exc}"

    def schedule_run(self, delay: float = TYPING_DEBOUNCE_S) -> None:
        if self._run_timer is not None:
            self._run_timer.stop()
        self._run_timer = self.set_timer(delay, self.start_run) if delay > 0 else None
        if delay <= 0:
            self.start_run()

    def start_run(self) -> None:
        """Start a live run for the current inputs and interventions (stale ones are cancelled)."""
        if self.engine is None or not self.workbench_alive:
            self.release_paint()
            return
        values = self.prompt_values()
        pane = self.part(PromptPane)
        if not values.clean.strip():
            self.release_paint()
            self.request += 1  # a result still on its way belongs to the old prompt
            self.last_run_key = None
            self.workers.cancel_group(self, "engine")
            pane.show_tokens([])
            pane.show_notes(["empty prompt: type a prompt to run the model"])
            self.status_info = "waiting for a prompt"
            self.update_status()
            return
        metric, metric_note = self.build_metric(values)
        self.pending_note = metric_note
        grid = self.part(HeadGrid)
        attention = () if grid.selected is None else (f"L{grid.selected[0]}.H{grid.selected[1]}",)
        views = Views(attention=attention, sinks=True, logit_lens=True, attribution=metric is not None,
                      stats=True)
        run_key = (values, tuple(self.stack.enabled()), views)
        if run_key == self.last_run_key:
            self.release_paint()
            return  # e.g. the Changed events of inputs filled in before the model loaded
        self.last_run_key = run_key
        self.request += 1
        if self._busy_timer is None:
            # Say "running" only for runs slow enough to notice; a repaint now would delay fast ones.
            self._busy_timer = self.set_timer(BUSY_NOTICE_S, self.show_busy)
        self.engine_calls += 1
        self.run_engine(self.request, values, self.stack.enabled(), metric, views)

    def show_busy(self) -> None:
        self._busy_timer = None
        if self.workbench_alive:
            self.status_info = "running…"
            self.update_status()

    def stop_busy(self) -> None:
        if self._busy_timer is not None:
            self._busy_timer.stop()
            self._busy_timer = None

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine")
    def run_engine(self, request: int, values: PromptValues, interventions: list[Intervention],
                   metric: Metric | None, views: Views) -> None:
        worker = get_current_worker()
        try:
            result = self.engine.run(values.clean, interventions=interventions, views=views,
                                     metric=metric, corrupted=values.corrupted or None, top_k=TOP_K,
                                     should_stop=lambda: worker.is_cancelled)
        except Cancelled:
            return
        except (MechscopeError, ValueError) as exc:
            self.post_message(EngineError("run", str(exc)))
            return
        if not worker.is_cancelled:
            self.post_message(RunFinished(request, result))

    def on_run_finished(self, message: RunFinished) -> None:
        if message.request != self.request or not self.workbench_alive:
            return
        self.call_next(self.release_paint)  # after this handler's updates: one paint for all
        result = message.result
        self.result = result
        self.stop_busy()
        self.status_error = None
        values = self.prompt_values()
        intervened = bool(self.stack.enabled())
        self.part(PredictionsPane).show(result, intervened)
        self.show_prompt_info(result)
        self.show_grid()
        self.stale_views = {"tab-attention", "tab-lens", "tab-stats"}
        self.show_view(self.part(TabbedContent).active)
        compute = result.compute
        if compute is not None:
            mode = compute.mode + (f" from L{compute.start_layer}" if compute.mode == "incremental" else "")
            timing = "" if self.deterministic else f" in {compute.seconds * 1000:.0f} ms"
            self.status_info = f"{mode}{timing}"
        else:
            self.status_info = "done"
        metric, _ = self.build_metric(values)
        self.recorder.prompt_and_metric(values.clean, values.corrupted, metric)
        self.recorder.run(values.clean, values.corrupted, metric, self.stack.enabled(), result)
        self.update_title()
        self.update_status()

    def show_view(self, tab: str) -> None:
        """Fill a view tab from the latest result; hidden tabs wait until they are opened."""
        result = self.result
        if result is None or tab not in self.stale_views:
            return
        self.stale_views.discard(tab)
        if tab == "tab-attention":
            grid = self.part(HeadGrid)
            if grid.selected is not None:
                address = f"L{grid.selected[0]}.H{grid.selected[1]}"
                if address in result.attention:
                    self.show_attention(address, result.attention[address], result.tokens)
        elif tab == "tab-lens":
            self.part(LensView).show(result.logit_lens)
        elif tab == "tab-stats":
            self.part(StatsView).show(result.stats)

    @on(TabbedContent.TabActivated)
    def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane is not None and event.pane.id:
            self.show_view(event.pane.id)

    def show_prompt_info(self, result: RunResult) -> None:
        pane = self.part(PromptPane)
        notes: list[str] = []
        readout = len(result.tokens) - 1
        if result.metric_info is not None:
            readout = result.metric_info.position % max(len(result.tokens), 1)
            notes.extend(result.metric_info.warnings)
        if result.truncated_from:
            context = self.engine.info.max_context
            notes.insert(0, f"prompt truncated: {result.truncated_from} tokens cut to "
                            f"{len(result.token_ids)} (model context {context})")
        if self.pending_note:
            notes.append(self.pending_note)
        pane.show_tokens(result.tokens, readout)
        pane.show_notes(notes)

    def grid_values(self, name: str) -> np.ndarray | None:
        result = self.result
        if name == "attribution":
            return None if result is None or result.attribution is None else result.attribution.heads
        if name == "sink":
            return None if result is None else result.sink_scores
        kind = SWEEP_OF_GRID[name]
        sweep = self.sweeps.get(kind)
        if sweep is None or self.sweep_inputs.get(kind) != self.current_sweep_inputs():
            return None
        return sweep.values

    def current_sweep_inputs(self) -> tuple[str, str, Metric | None]:
        values = self.prompt_values()
        return values.clean, values.corrupted, self.build_metric(values)[0]

    def show_grid(self) -> None:
        values = self.grid_values(self.grid_metric)
        stale = values is None and self.grid_sweep_ran()
        note = "prompts changed: rerun the sweep" if stale else "not computed"
        self.part(HeadGrid).show_metric(self.grid_metric, values, note)
        self.show_marks()

    def grid_sweep_ran(self) -> bool:
        """A sweep for the grid's metric has run (for these prompts or earlier ones)."""
        return SWEEP_OF_GRID.get(self.grid_metric) in self.sweeps

    def show_marks(self) -> None:
        grid = self.part(HeadGrid)
        grid.set_marks(self.stack.head_marks())
        grid.set_row_marks(self.stack.layer_marks())

    def on_engine_error(self, message: EngineError) -> None:
        self.release_paint()
        if message.action == "run":
            self.stop_busy()
            self.last_run_key = None  # the same inputs may be retried
        self.status_info = "error"
        prefix = ERROR_PREFIXES.get(message.action, f"{message.action} failed")
        self.show_error(f"{prefix}: {message.text}")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Unexpected exceptions in workers land here: show them, keep the app running."""
        if event.state == WorkerState.ERROR:
            self.release_paint()
            error = event.worker.error
            if event.worker.group == "engine":
                self.last_run_key = None
            self.show_error(f"{event.worker.group} failed: {type(error).__name__}: {error}")

    # ---------------------------------------------------------------- typing

    @on(Input.Changed, "#prompt-pane Input")
    def prompt_typed(self, event: Input.Changed) -> None:
        self.schedule_run(TYPING_DEBOUNCE_S)

    @on(Input.Submitted, "#prompt-pane Input")
    def prompt_submitted(self, event: Input.Submitted) -> None:
        self.schedule_run(0)

    @on(Select.Changed, "#metric-kind")
    def metric_kind_changed(self, event: Select.Changed) -> None:
        self.schedule_run(0)

    # ---------------------------------------------------------------- grid cursor

    @on(Heatmap.CursorMoved, "#grid")
    def grid_cursor_moved(self, event: Heatmap.CursorMoved) -> None:
        self.update_status()
        if self.engine is None or self.result is None:
            return
        address = f"L{event.row}.H{event.col}"
        if address in self.result.attention:
            self.show_attention(address, self.result.attention[address], self.result.tokens)
            return
        if self._attention_timer is not None:
            self._attention_timer.stop()
        self._attention_timer = self.set_timer(CURSOR_DEBOUNCE_S, self.start_attention)

    def start_attention(self) -> None:
        if not self.workbench_alive:
            return
        grid = self.part(HeadGrid)
        values = self.prompt_values()
        if grid.selected is None or self.engine is None or not values.clean.strip():
            return
        self.engine_calls += 1
        self.run_attention(f"L{grid.selected[0]}.H{grid.selected[1]}", values,
                           self.stack.enabled())

    @work(thread=True, exclusive=True, exit_on_error=False, group="attention")
    def run_attention(self, address: str, values: PromptValues,
                      interventions: list[Intervention]) -> None:
        worker = get_current_worker()
        try:
            result = self.engine.run(values.clean, interventions=interventions,
                                     views=Views(attention=(address,)),
                                     corrupted=values.corrupted or None, top_k=1,
                                     should_stop=lambda: worker.is_cancelled)
        except Cancelled:
            return
        except (MechscopeError, ValueError) as exc:
            self.post_message(EngineError("attention", str(exc)))
            return
        if not worker.is_cancelled and address in result.attention:
            self.post_message(AttentionReady(address, result.attention[address], result.tokens))

    def on_attention_ready(self, message: AttentionReady) -> None:
        grid = self.part(HeadGrid)
        if grid.selected is not None and message.address == f"L{grid.selected[0]}.H{grid.selected[1]}":
            if self.result is not None:
                self.result.attention[message.address] = message.pattern
            self.show_attention(message.address, message.pattern, message.tokens)

    # ---------------------------------------------------------------- interventions

    def apply_changes(self, changes: list[Change] | None, what: str = "") -> None:
        """After any edit of the list: record it, redraw the list and marks, recompute."""
        if not changes:
            if what:
                self.status_info = what
                self.update_status()
            return
        self.recorder.changes(changes)
        self.hold_paint()
        self.refresh_interventions()
        self.schedule_run(0)

    def hold_paint(self) -> None:
        """Paint an edit together with its recomputed result when that comes within PAINT_HOLD_S.

        Without this the list repaints at once and the result one or two frames later (Textual
        paints at most once per frame): two paints where one shows the same thing sooner.
        """
        if self._paint_hold is not None or self.engine is None:
            return
        self._paint_hold = self.batch_update()
        self._paint_hold.__enter__()
        self._paint_hold_timer = self.set_timer(PAINT_HOLD_S, self.release_paint)

    def release_paint(self) -> None:
        if self._paint_hold is None:
            return
        hold, self._paint_hold = self._paint_hold, None
        if self._paint_hold_timer is not None:
            self._paint_hold_timer.stop()
            self._paint_hold_timer = None
        hold.__exit__(None, None, None)
        try:
            self.screen.check_idle()  # the screen skipped its repaint while held: ask again now
        except ScreenStackError:
            pass  # the app is closing

    def refresh_interventions(self) -> None:
        self.part(InterventionList).show_entries(self.stack.entries)
        self.show_marks()
        view = self.part(AttentionView)
        if view.address is not None:
            view.set_knockouts(self.knockout_marks(view.address))
        self.update_status()

    def selected_head(self) -> tuple[int, int] | None:
        if self.engine is None:
            self.show_error("the model is still loading")
            return None
        return self.part(HeadGrid).selected

    def action_ablate(self, mode: str) -> None:
        head = self.selected_head()
        if head is None:
            return
        if mode == "resample" and not self.prompt_values().corrupted.strip():
            self.show_error("resample ablation needs a corrupted prompt")
            return
        self.apply_changes(self.stack.toggle_head(HeadAblation(head[0], head[1], mode=mode)))

    def action_patch_head(self) -> None:
        head = self.selected_head()
        if head is None:
            return
        corrupted = self.prompt_values().corrupted
        if not corrupted.strip():
            self.show_error("p patches from the corrupted prompt: type one first")
            return
        patch = ActivationPatch(address=f"L{head[0]}.H{head[1]}", source_prompt=corrupted)
        self.apply_changes(self.stack.toggle_head(patch))

    def action_scale_head(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        head = self.selected_head()
        if head is None:
            return
        existing = [e for e in self.stack.on_head(*head) if isinstance(e.intervention, HeadScale)]

        def validate(text: str) -> str | None:
            try:
                float(text)
            except ValueError:
                return f"not a number: {text!r}"
            return None

        def done(text: str | None) -> None:
            if text is None:
                return
            scale = HeadScale(head[0], head[1], factor=float(text))
            if existing:
                self.apply_changes(self.stack.replace(existing[-1].id, scale))
            else:
                self.apply_changes(self.stack.add(scale))

        initial = f"{existing[-1].intervention.factor:g}" if existing else "2"
        self.push_screen(AskValueScreen(f"scale L{head[0]}.H{head[1]}",
                                        "factor (0 removes the head, 1 leaves it, 2 doubles it)",
                                        initial, validate), done)

    def action_edit_head(self) -> None:
        head = self.selected_head()
        if head is None:
            return
        entries = self.stack.on_head(*head)
        if not entries:
            self.show_error(f"no intervention on L{head[0]}.H{head[1]} (space ablates it)")
            return
        self.edit_entry(entries[-1].id)

    def edit_entry(self, entry_id: int) -> None:
        from mechscope.screens.edit_intervention import EditInterventionScreen

        entry = self.stack.get(entry_id)
        if entry is None:
            return

        def done(edited: Intervention | None) -> None:
            if edited is not None and edited != entry.intervention:
                self.add_checked(edited, replace_id=entry_id)

        self.push_screen(EditInterventionScreen(entry.intervention), done)

    @on(InterventionList.Requested)
    def list_requested(self, event: InterventionList.Requested) -> None:
        entry = self.stack.get(event.entry_id)
        if entry is None:
            return
        if event.action == "toggle":
            self.apply_changes(self.stack.set_enabled(entry.id, not entry.intervention.enabled))
        elif event.action == "delete":
            self.apply_changes(self.stack.remove(entry.id))
        elif event.action == "edit":
            self.edit_entry(entry.id)

    def action_undo(self) -> None:
        changes = self.stack.undo()
        if changes is None:
            self.show_error("nothing to undo")
            return
        self.status_error = None
        self.apply_changes(changes, "undone")

    def action_clear_interventions(self) -> None:
        self.apply_changes(self.stack.clear(), "no interventions to remove")

    # ---------------------------------------------------------------- checked additions

    def add_checked(self, intervention: Intervention, replace_id: int | None = None,
                    toggle: bool = False) -> None:
        """Add (or replace `replace_id` with) an intervention once the engine's dry run accepts it.

        A bad one (layer out of range, unknown vector, an edge that leaves a query no key...) never
        enters the list: the reason goes to the status bar.
        """
        if self.engine is None:
            self.show_error("the model is still loading")
            return
        others = [e.intervention for e in self.stack.entries
                  if e.intervention.enabled and e.id != replace_id]
        self.check_intervention(intervention, replace_id, toggle, self.prompt_values(), others)

    def dry_run(self, intervention: Intervention, values: PromptValues,
                others: list[Intervention]) -> str | None:
        """The engine's objection to running `others` plus `intervention`, or None (worker threads only)."""
        validate = getattr(self.engine, "validate", None)
        if validate is None or not values.clean.strip() or not intervention.enabled:
            return None
        try:
            validate([*others, intervention], values.clean, values.corrupted or None)
        except (MechscopeError, ValueError) as exc:
            return str(exc)
        return None

    @work(thread=True, exit_on_error=False, group="check")
    def check_intervention(self, intervention: Intervention, replace_id: int | None, toggle: bool,
                           values: PromptValues, others: list[Intervention]) -> None:
        error = self.dry_run(intervention, values, others)
        if error is not None:
            self.post_message(EngineError("add" if replace_id is None else "change", error))
            return
        self.post_message(InterventionChecked(intervention, replace_id, toggle))

    def on_intervention_checked(self, message: InterventionChecked) -> None:
        if message.replace_id is not None:
            if self.stack.get(message.replace_id) is None:
                return  # deleted while it was being checked
            changes = self.stack.replace(message.replace_id, message.intervention)
        elif message.toggle:
            changes = self.stack.toggle_head(message.intervention)
        else:
            changes = self.stack.add(message.intervention)
        self.status_error = None
        self.apply_changes(changes)

    # ---------------------------------------------------------------- new interventions as forms

    def selected_layer(self) -> int:
        grid = self.part(HeadGrid)
        return grid.selected[0] if grid.selected is not None else 0

    def open_new_form(self, template: Intervention, title: str, hint: str) -> None:
        """The edit form filled with `template`; what the user saves is added after a dry run."""
        from mechscope.screens.edit_intervention import EditInterventionScreen

        def done(made: Intervention | None) -> None:
            if made is not None:
                self.add_checked(made)

        self.push_screen(EditInterventionScreen(template, title=title, hint=hint), done)

    def action_ablate_component(self, component: str) -> None:
        if self.selected_head() is None:
            return
        name = "attention" if component == "attn" else "MLP"
        self.open_new_form(ComponentAblation(self.selected_layer(), component, "zero"),  # type: ignore[arg-type]
                           f"ablate the {name} output of a layer",
                           "mode zero, mean or resample; empty positions = all")

    def action_clamp_neuron(self) -> None:
        if self.selected_head() is None:
            return
        d_mlp = self.engine.info.d_mlp
        self.open_new_form(NeuronClamp(self.selected_layer(), 0, 0.0), "clamp an MLP neuron",
                           f"neuron 0..{d_mlp - 1}; empty positions = all")

    def new_intervention(self, kind: str) -> Intervention:
        """A sensible new intervention of `kind` on the selected head or layer, to edit in the form."""
        layer, head = self.part(HeadGrid).selected or (0, 0)
        values = self.prompt_values()
        last = max(len(self.result.tokens) - 1, 0) if self.result is not None else 0
        vectors = sorted(getattr(self.engine, "vectors", {}) or {})
        templates: dict[str, Intervention] = {
            "head_ablation": HeadAblation(layer, head),
            "head_scale": HeadScale(layer, head, 2.0),
            "activation_patch": ActivationPatch(f"L{layer}.H{head}", values.corrupted or values.clean),
            "attention_knockout": AttentionKnockout(layer, head, last, 0),
            "component_ablation": ComponentAblation(layer, "attn", "zero"),
            "neuron_clamp": NeuronClamp(layer, 0, 0.0),
            "steering_vector": SteeringVector(layer, vectors[-1] if vectors else "", 4.0),
        }
        return templates[kind]

    def action_add_intervention(self) -> None:
        from mechscope.screens.choose import ChooseScreen

        if self.selected_head() is None:
            return

        def chosen(kind: str | None) -> None:
            if kind is None:
                return
            if kind == "steering_vector" and not getattr(self.engine, "vectors", None):
                self.status_info = "no steering vector yet: build one first"
                self.update_status()
                self.action_build_vector()
                return
            hints = {"component_ablation": "component attn or mlp; mode zero, mean or resample",
                     "steering_vector": f"vectors: {', '.join(sorted(getattr(self.engine, 'vectors', {})))}; "
                                        "positions all, last or 3,4",
                     "activation_patch": "address like L3.H1, L3.attn, L3.mlp, L3.resid_pre"}
            self.open_new_form(self.new_intervention(kind), f"add {kind.replace('_', ' ')}",
                               hints.get(kind, "empty positions = all"))

        self.push_screen(ChooseScreen("add an intervention", list(NEW_INTERVENTION_KINDS)), chosen)

    # ---------------------------------------------------------------- attention knockouts

    def knockout_marks(self, address: str) -> dict[tuple[int, int], str]:
        """(query, key) -> mark for the enabled knockouts on the head at `address`."""
        parsed = parse_address(address)
        return {(iv.query_pos, iv.key_pos): "×" for iv in self.stack.enabled()
                if isinstance(iv, AttentionKnockout) and (iv.layer, iv.head) == (parsed.layer, parsed.head)}

    def show_attention(self, address: str, pattern: np.ndarray, tokens: list[str]) -> None:
        self.part(AttentionView).show(address, pattern, tokens, self.knockout_marks(address))

    def action_knockout(self) -> None:
        """Focus the attention map to pick an edge; with the map focused, toggle the edge under its cursor."""
        if self.selected_head() is None:
            return
        attention_map = self.part(AttentionMap)
        view = self.part(AttentionView)
        if not attention_map.has_focus:
            self.part(TabbedContent).active = "tab-attention"
            self.call_after_refresh(attention_map.focus)
            self.status_info = "pick an edge: arrows move query / key, k or enter knocks it out, esc returns"
            self.update_status()
            return
        if view.address is None or attention_map.cursor is None:
            self.show_error("no attention pattern to pick an edge from yet")
            return
        self.toggle_knockout(view.address, *attention_map.cursor)

    def toggle_knockout(self, address: str, query: int, key: int) -> None:
        parsed = parse_address(address)
        knockout = AttentionKnockout(parsed.layer, int(parsed.head), query, key)  # type: ignore[arg-type]
        if knockout in self.stack.enabled():
            self.apply_changes(self.stack.toggle_head(knockout))  # switching it off needs no check
        else:
            self.add_checked(knockout, toggle=True)

    def action_knockout_at(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        head = self.selected_head()
        if head is None:
            return
        attention_map = self.part(AttentionMap)
        n_tokens = len(self.result.tokens) if self.result is not None else 1
        query, key = attention_map.cursor or (n_tokens - 1, 0)

        def parse(text: str) -> tuple[int, int] | None:
            parts = [part.strip() for part in text.replace("->", ",").split(",")]
            if len(parts) != 2 or not all(part.isdigit() for part in parts):
                return None
            return int(parts[0]), int(parts[1])

        def validate(text: str) -> str | None:
            return None if parse(text) is not None else "two positions, query,key (e.g. 13,0)"

        def done(text: str | None) -> None:
            edge = parse(text) if text else None
            if edge is not None:
                self.toggle_knockout(f"L{head[0]}.H{head[1]}", *edge)

        self.push_screen(AskValueScreen(f"knock out an edge of L{head[0]}.H{head[1]}",
                                        f"query,key positions (0..{n_tokens - 1}; key ≤ query)",
                                        f"{query},{key}", validate), done)

    # ---------------------------------------------------------------- steering vectors

    def action_build_vector(self) -> None:
        self.open_steering("build")

    def action_load_vector(self) -> None:
        self.open_steering("load")

    def open_steering(self, mode: str) -> None:
        from mechscope.screens.steering import SteeringRequest, SteeringScreen

        if self.selected_head() is None:
            return
        first = not getattr(self.engine, "vectors", None)
        screen = SteeringScreen(mode, self.engine.info.n_layers, self.selected_layer(),
                                name="love-hate" if first and mode == "build" else "",
                                positive=EXAMPLE_POSITIVE if first else "",
                                negative=EXAMPLE_NEGATIVE if first else "")

        def done(request: SteeringRequest | None) -> None:
            if request is None:
                return
            verb = "building" if request.path is None else "loading"
            self.status_info = f"{verb} steering vector {request.name}…"
            self.update_status()
            others = [e.intervention for e in self.stack.entries if e.intervention.enabled]
            self.engine_calls += 1
            self.make_vector(request, self.prompt_values(), others)

        self.push_screen(screen, done)

    @work(thread=True, exclusive=True, exit_on_error=False, group="vector")
    def make_vector(self, request: Any, values: PromptValues, others: list[Intervention]) -> None:
        from mechscope.tui.vector_files import read_vector_file

        try:
            if request.path is None:
                vector = self.engine.build_steering_vector(request.name, request.layer,
                                                           list(request.positive), list(request.negative))
            else:
                self.engine.add_vector(request.name, read_vector_file(request.path, request.name))
                vector = self.engine.vectors[request.name]
        except (MechscopeError, ValueError) as exc:
            self.post_message(EngineError("vector", str(exc)))
            return
        steer = SteeringVector(request.layer, request.name, request.coeff, request.positions)
        error = self.dry_run(steer, values, others)
        self.post_message(VectorReady(request.name, np.array(vector, dtype=np.float32), steer, error))

    def on_vector_ready(self, message: VectorReady) -> None:
        self.recorder.vector(message.name, message.vector)
        self.last_run_key = None  # a vector of this name may already steer: its values changed
        self.update_title()
        norm = float(np.linalg.norm(message.vector))
        if message.error is not None:
            self.show_error(f"vector {message.name} stored (norm {norm:.3g}) but not steering: {message.error}")
            return
        self.status_error = None
        self.status_info = f"vector {message.name} (norm {norm:.3g}): {message.steer.label}"
        if message.steer in self.stack.enabled():
            self.update_status()
            self.schedule_run(0)
        else:
            self.apply_changes(self.stack.add(message.steer))

    # ---------------------------------------------------------------- grid colouring

    def action_cycle_grid(self) -> None:
        names = list(GRID_METRICS)
        self.grid_metric = names[(names.index(self.grid_metric) + 1) % len(names)]
        self.show_grid()
        if self.grid_values(self.grid_metric) is None and self.grid_metric in SWEEP_OF_GRID:
            key = "w" if self.grid_metric == "patching" else "a"
            why = "the prompts or metric changed since the sweep: " if self.grid_sweep_ran() else ""
            self.status_info = f"grid: {self.grid_metric} ({why}press {key} to run the sweep)"
        else:
            self.status_info = f"grid: {self.grid_metric}"
        self.update_status()

    # ---------------------------------------------------------------- sweeps

    def action_sweep(self, kind: str) -> None:
        if self.engine is None:
            self.show_error("the model is still loading")
            return
        values = self.prompt_values()
        metric, note = self.build_metric(values)
        if not values.clean.strip() or not values.corrupted.strip():
            self.show_error("a sweep needs both a clean and a corrupted prompt")
            return
        if metric is None:
            self.show_error(note or "a sweep needs a metric")
            return
        self.part(TabbedContent).active = "tab-sweep"
        self.status_info = f"{kind} sweep running (esc cancels)"
        self.update_status()
        self.engine_calls += 1
        self.sweep_cancelled = False
        self.run_sweep(kind, values, metric)

    @work(thread=True, exclusive=True, exit_on_error=False, group="sweep")
    def run_sweep(self, kind: str, values: PromptValues, metric: Metric) -> None:
        worker = get_current_worker()
        inputs = (values.clean, values.corrupted, metric)
        try:
            result = self.engine.sweep(
                kind, values.clean, values.corrupted, metric, direction="noising",
                on_progress=lambda partial: self.post_message(SweepUpdate(partial, inputs)),
                should_stop=lambda: worker.is_cancelled)
        except Cancelled:
            return
        except (MechscopeError, ValueError) as exc:
            self.post_message(EngineError("sweep", str(exc)))
            return
        self.post_message(SweepUpdate(result, inputs, done=True))

    def on_sweep_update(self, message: SweepUpdate) -> None:
        result = message.result
        if not message.done and self.sweep_cancelled:
            return  # a partial result that was already on its way when esc was pressed
        running = not message.done and not result.complete
        self.last_sweep = result
        self.part(SweepView).show(result, running)
        if result.kind in SWEEP_OF_GRID.values():
            self.sweeps[result.kind] = result
            self.sweep_inputs[result.kind] = message.inputs
            grid_name = "patching" if result.kind == "head" else "atp"
            if self.grid_metric == grid_name or message.done:
                self.grid_metric = grid_name
                self.show_grid()
        if message.done:
            clean, corrupted, metric = message.inputs  # what it ran on, even if edited since
            timing = "" if self.deterministic else f" in {result.seconds:.1f} s"
            self.status_info = f"{result.kind} sweep complete{timing}"
            self.recorder.sweep(result, clean, corrupted, metric, "noising")
            self.update_title()
            self.update_status()

    def action_cancel(self) -> None:
        if isinstance(self.focused, (Input, AttentionMap)):
            self.part(HeadGrid).focus()
            return
        running = [w for w in self.workers if w.group in ("sweep", "generate") and w.is_running]
        for worker in running:
            worker.cancel()
        if any(worker.group == "sweep" for worker in running):
            self.sweep_cancelled = True
            if self.last_sweep is not None:
                self.part(SweepView).show(self.last_sweep, running=False, note=" (cancelled)")
        if running:
            self.status_info = "cancelled"
            self.update_status()

    # ---------------------------------------------------------------- generation

    def action_generate(self) -> None:
        if self.engine is None:
            self.show_error("the model is still loading")
            return
        values = self.prompt_values()
        if not values.clean.strip():
            self.show_error("empty prompt: nothing to generate from")
            return
        self.part(TabbedContent).active = "tab-generate"
        self.part(GenerationView).reset(values.clean)
        self.generated = {"baseline": [], "intervened": []}
        self.status_info = "generating (esc cancels)"
        self.update_status()
        self.engine_calls += 1
        self.run_generate(values, self.stack.enabled())

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate")
    def run_generate(self, values: PromptValues, interventions: list[Intervention]) -> None:
        worker = get_current_worker()
        try:
            for lane, lane_interventions in (("baseline", []), ("intervened", interventions)):
                self.engine.generate(
                    values.clean, interventions=lane_interventions, max_new_tokens=GENERATE_TOKENS,
                    temperature=0.0, seed=0, corrupted=values.corrupted or None,
                    on_token=lambda token, lane=lane: self.post_message(GenerationToken(lane, token)),
                    should_stop=lambda: worker.is_cancelled)
        except Cancelled:
            self.post_message(GenerationDone(cancelled=True))
            return
        except (MechscopeError, ValueError) as exc:
            self.post_message(EngineError("generate", str(exc)))
            return
        self.post_message(GenerationDone())

    def on_generation_token(self, message: GenerationToken) -> None:
        self.generated[message.lane].append(message.token)
        self.part(GenerationView).append(message.lane, message.token)

    def on_generation_done(self, message: GenerationDone) -> None:
        self.status_info = "generation cancelled" if message.cancelled else "generated"
        if not message.cancelled:
            params = {"max_new_tokens": GENERATE_TOKENS, "temperature": 0.0, "seed": 0}
            values = self.prompt_values()
            self.recorder.generate(values.clean, values.corrupted, self.stack.enabled(), params,
                                   self.generated["intervened"])
            self.update_title()
        self.update_status()

    # ---------------------------------------------------------------- misc actions

    def action_show_tab(self, tab: str) -> None:
        self.part(TabbedContent).active = tab

    def action_focus_prompt(self) -> None:
        self.part("#clean", Input).focus()

    def action_help(self) -> None:
        from mechscope.screens.help import HelpScreen

        keys = [(key_label(c.keys), c.help if c.title in c.help else f"{c.title}: {c.help}")
                for c in COMMANDS]
        self.push_screen(HelpScreen(keys + list(WIDGET_KEYS)))

    def action_note(self) -> None:
        from mechscope.screens.ask_value import AskValueScreen

        def done(text: str | None) -> None:
            if text:
                self.recorder.note(text)
                self.status_info = "note saved" if self.recorder.session is not None else \
                    "note not saved: no session"
                self.update_title()
                self.update_status()

        self.push_screen(AskValueScreen("note", "a note for the session log"), done)

    def action_sessions(self) -> None:
        try:
            from mechscope.screens import sessions as sessions_screen
        except ImportError:
            self.show_error("the sessions screen is not available")
            return
        screen_class = getattr(sessions_screen, "SessionsScreen", None)
        if screen_class is None:
            self.show_error("the sessions screen is not available")
            return
        self.push_screen(screen_class(current=self.recorder.name), self.switch_session)

    def switch_session(self, name: str | None) -> None:
        """The sessions screen chose a session to open: record into it and put its state back."""
        if name is None or self.engine is None or name == self.recorder.name:
            return
        recorder, state = SessionRecorder.start(name, self.engine)
        if recorder.session is None:
            self.show_error(recorder.error or f"cannot open session {name}")
            return
        if self.recorder.session is not None:
            self.recorder.session.close()  # release its write lock now, not whenever it is collected
        self.recorder = recorder
        self.sweeps.clear()
        self.sweep_inputs.clear()
        if state is not None:
            self.restore(state)
        self.status_error = None
        self.status_info = f"opened session {name}"
        self.last_run_key = None
        self.update_title()
        self.refresh_interventions()
        self.schedule_run(0)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Workbench keys do nothing (and leave footers) while another full screen, e.g. sessions, is on top."""
        workbench = getattr(self, "workbench", None)
        if action in WORKBENCH_ACTIONS and workbench is not None and self.screen is not workbench:
            return False
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if screen is not getattr(self, "workbench", screen):
            return
        for command in COMMANDS:
            if command.action in ("help", "quit"):
                continue
            title = f"{command.title} ({key_label(command.keys)})" if command.keys else command.title
            yield SystemCommand(title, command.help, lambda action=command.action: self.run_action(action))
        yield SystemCommand("Keys (?)", "show every key", self.action_help)


def run_app(args: argparse.Namespace) -> int:
    """Entry point of `mechscope` with no sub-command; returns the exit code."""
    def factory(progress: Callable[[str, float | None], None]) -> Any:
        # torch and transformers load here, in the loader thread, after the first paint
        progress("importing PyTorch and transformers", None)
        from mechscope.engine import Engine

        return Engine.load(args.model, device=args.device, dtype=args.dtype,
                           trust_remote_code=args.trust_remote_code, progress=progress,
                           device_map=getattr(args, "device_map", None),
                           max_memory=getattr(args, "max_memory", None))

    app = MechscopeApp(factory, session_name=getattr(args, "session", None), source=args.model)
    return_code = app.run()
    return int(return_code or 0)
