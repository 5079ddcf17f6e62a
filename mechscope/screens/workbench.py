"""The workbench screen: lays out the panes, turns keys into commands of the parts that own each job
(live run, grid, attention view, sweeps, set tab, dialogs, research), runs the requests they return through
one job table and repaints from the Workbench when each outcome comes back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from textual import events, on
from textual.actions import parse as parse_action
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, Select, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from mechscope.requests.kinds import (
    SET_REQUESTS,
    AddVectorRequest,
    BuildVectorRequest,
    FeatureActivationsRequest,
    FeatureAttributionRequest,
    FeatureCardRequest,
    GenerateRequest,
    Outcome,
    PathSweepRequest,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    SweepRequest,
    ValidateRequest,
)
from mechscope.screens.attention import AttentionPart
from mechscope.screens.dialogs import InterventionDialogs
from mechscope.screens.feature_attribution import FeatureAttributionPart
from mechscope.screens.features import FEATURES_TAB, FeaturesPart
from mechscope.screens.grid import GridPart
from mechscope.screens.jobs import Job, JobRunner
from mechscope.screens.live_run import LiveRunPart
from mechscope.screens.research import ResearchPart
from mechscope.screens.session_log import SessionLogPart
from mechscope.screens.set_tab import SetTab
from mechscope.screens.status_text import model_title, session_title, status_text
from mechscope.screens.sweeps import SweepsPart
from mechscope.tui.commands import COMMANDS, WIDGET_KEYS, key_label
from mechscope.tui.messages import Finished, Partial
from mechscope.tui.widgets.feature_attribution_view import FeatureAttributionView
from mechscope.tui.widgets.features_view import FeaturesView
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.tui.widgets.interventions import InterventionList
from mechscope.tui.widgets.plain import Plain
from mechscope.tui.widgets.predictions import PredictionsPane
from mechscope.tui.widgets.prompt_input import PromptInput
from mechscope.tui.widgets.prompt_pane import PromptPane
from mechscope.tui.widgets.set_view import SetRowTable, SetView
from mechscope.tui.widgets.views import (
    AttentionMap,
    AttentionView,
    GenerationView,
    LensView,
    StatsView,
    SweepView,
)
from mechscope.workbench.controller import Workbench

W = TypeVar("W", bound=Widget)


def command_binding(action: str) -> str:
    """The screen action that runs a key table entry: `ablate('zero')` -> `command('ablate', 'zero')`."""
    _, name, params = parse_action(action)
    return f"command({', '.join(repr(part) for part in (name, *params))})"


class WorkbenchScreen(Screen[None]):
    """Renders a `Workbench`; every engine call is a request from it, run by `submit`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(c.keys, command_binding(c.action), c.short or c.title, show=c.show)
          for c in COMMANDS if c.keys and c.action != "quit"),
        *(Binding(f"shift+{key}", f"command('scroll_view', '{key}')", show=False)
          for key in ("pageup", "pagedown", "home", "end"))]

    def __init__(self, bench: Workbench, *, source: str, deterministic: bool = False) -> None:
        super().__init__()
        self.bench = bench
        self.source = source
        self.deterministic = deterministic  # snapshot mode: no timings on screen
        self.engine: Any = None
        self._mounted = False
        self._prompt_pane: PromptPane | None = None
        self._parts: dict[tuple[Any, type], Widget] = {}
        self.live = LiveRunPart(self)
        self.grid_part = GridPart(self)
        self.attention = AttentionPart(self)
        self.sweeps = SweepsPart(self)
        self.set_tab = SetTab(self)
        self.features = FeaturesPart(self)
        self.feature_attribution = FeatureAttributionPart(self)
        self.session_log = SessionLogPart(self)
        self.dialogs = InterventionDialogs(self)
        self.research = ResearchPart(self)
        vector = Job("vector", self.dialogs.vector_finished, exclusive=True)
        sets = Job("sets", self.set_tab.finished, self.set_tab.partial, started=self.set_tab.started)
        # The one table: a request type -> its worker group, what handles its outcome and its stream.
        self.jobs = JobRunner(self, {
            RunRequest: Job("engine", self.live.finished, exclusive=True, started=self.live.started),
            **dict.fromkeys((SweepRequest, PathSweepRequest),
                            Job("sweep", self.sweeps.finished, self.sweeps.partial, exclusive=True,
                                started=self.sweeps.started)),
            GenerateRequest: Job("generate", self.sweeps.generation_finished, self.sweeps.token, exclusive=True,
                                 started=self.sweeps.generation_started, lanes=self.sweeps.generation_lanes),
            ValidateRequest: Job("check", self.check_finished),
            ReferencePromptsRequest: Job("reference", self.check_finished, exclusive=True),
            BuildVectorRequest: vector,
            AddVectorRequest: vector,
            **dict.fromkeys(SET_REQUESTS, sets),
            FeatureActivationsRequest: Job("features", self.features.finished, exclusive=True),
            FeatureCardRequest: Job("feature-card", self.features.card_finished, exclusive=True),
            FeatureAttributionRequest: Job("feature_attribution", self.feature_attribution.finished, exclusive=True),
        })
        self.commands: dict[str, Callable[..., object]] = {
            **self.grid_part.commands(), **self.sweeps.commands(), **self.set_tab.commands(),
            **self.features.commands(), **self.feature_attribution.commands(),
            **self.dialogs.commands(), **self.research.commands(),
            "cancel": self.cancel,
            "use_spaced_tokens": self.live.use_spaced_tokens, "show_message": self.show_message,
            "focus_prompt": self.focus_prompt, "show_tab": self.show_tab, "help": self.help,
            **self.session_log.commands(),
            "scroll_view": self.scroll_view,
        }

    # ---------------------------------------------------------------- commands

    def action_command(self, name: str, *args: Any) -> None:
        """Every key of the key table lands here and runs the command of the part that owns it."""
        self.commands[name](*args)

    def run_command(self, action: str) -> None:
        """A key table action by its text (`sweep_with('head','denoising')`), as the palette runs it."""
        _, name, params = parse_action(action)
        self.commands[name](*params)

    @property
    def engine_calls(self) -> int:
        """How many engine requests the screen started (tests read it)."""
        return self.jobs.started

    # ---------------------------------------------------------------- typed parts

    def part(self, selector: str | type[W], expect: type[W]) -> W:
        """A widget of this screen, looked up once (the layout never changes after compose)."""
        key = (selector, expect)
        widget = self._parts.get(key)
        if widget is None:
            widget = self.query_one(selector, expect) if isinstance(selector, str) else self.query_one(selector)
            self._parts[key] = widget
        return widget  # type: ignore[return-value]

    @property
    def grid(self) -> HeadGrid:
        return self.part(HeadGrid, HeadGrid)

    @property
    def prompt_pane(self) -> PromptPane:
        return self.part(PromptPane, PromptPane)

    @property
    def tabs(self) -> TabbedContent:
        return self.part(TabbedContent, TabbedContent)

    @property
    def attention_view(self) -> AttentionView:
        return self.part(AttentionView, AttentionView)

    @property
    def attention_map(self) -> AttentionMap:
        return self.part(AttentionMap, AttentionMap)

    @property
    def alive(self) -> bool:
        """False while the app shuts down and the widgets are already gone (late timers, messages)."""
        pane = self._prompt_pane  # kept from mount: querying the DOM here costs ms per message
        return pane is not None and pane.is_attached

    def loaded(self) -> bool:
        """True when the engine is here; otherwise says the model is still loading."""
        if self.engine is None:
            self.show_error("the model is still loading")
            return False
        return True

    # ---------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="title-bar"):
            yield Plain(f"mechscope · loading {self.source}…", id="title-model")
            yield Plain("", id="title-session")
        yield PromptPane(self.bench.inputs, id="prompt-pane")
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
                    with TabPane("set", id="tab-set"):
                        yield SetView()
                    with TabPane("features", id=FEATURES_TAB):
                        yield FeaturesView()
                        yield FeatureAttributionView()
        with Vertical(id="bottom-bar"):
            yield Plain("", id="status-bar")
            yield Footer(id="workbench-footer", show_command_palette=False)

    def on_mount(self) -> None:
        self.part(InterventionList, InterventionList).show_entries((), ())
        self.grid.selected_callback = self.cursor_moved
        self.grid.focus()
        self.update_status()
        self._prompt_pane = self.query_one(PromptPane)
        self._mounted = True
        if self.engine is not None:
            self.engine_ready(self.engine)  # it loaded before the panes were composed

    def on_screen_resume(self) -> None:
        """Back from a dialog or another screen: keys act on the grid again, never type into a field."""
        if self._mounted:
            self.grid.focus()

    # ---------------------------------------------------------------- the engine arrives

    def engine_ready(self, engine: Any) -> None:
        """The model is loaded (and a resumed session's state is in the Workbench): show it and run."""
        self.engine = engine
        self.jobs.engine = engine
        self.bench.sets.check(engine.tokenize)  # a resumed session's set, and every set from now on
        self.bench.features.offer(engine.info.trained_saes)
        if not self._mounted:
            return
        info = engine.info
        self.grid.configure(info.n_layers, info.n_heads)
        self.bench.select(*(self.grid.selected or (0, 0)))
        self.bench.info = "ready"
        self.refresh_all()

    def refresh_all(self) -> None:
        """Repaint everything from the Workbench (after loading or switching sessions), then run."""
        self.prompt_pane.set_values(self.bench.inputs)
        self.update_title()
        self.sweeps.show_restored()
        self.refresh_interventions()
        self.grid_part.show()
        self.submit(self.bench.next_run())

    def update_title(self) -> None:
        if self.engine is None:
            return
        self.part("#title-model", Static).update(model_title(self.engine), layout=False)
        session = session_title(self.bench.recorder)
        widget = self.part("#title-session", Static)
        if session.plain != getattr(widget, "shown_plain", None):
            widget.shown_plain = session.plain  # type: ignore[attr-defined]
            widget.update(session)

    def show_progress(self, text: str) -> None:
        self.part("#title-model", Static).update(f"mechscope · {text}")
        self.bench.info = f"{text} (you can type a prompt or press ? meanwhile)"
        self.update_status()

    # ---------------------------------------------------------------- status

    def update_status(self) -> None:
        text = status_text(self.bench, self.grid, ready=self.engine is not None)
        self.part("#status-bar", Static).update(text, layout=False)  # fixed size: no relayout

    def show_error(self, text: str) -> None:
        self.bench.error = text
        self.update_status()

    def say(self, text: str) -> None:
        self.bench.info = text
        self.update_status()

    # ---------------------------------------------------------------- running requests

    def submit(self, request: Request | None) -> None:
        """Run a request the Workbench returned, in the worker its job names (None: nothing to run)."""
        if request is None:
            self.live.release_paint()  # callers have shown why nothing runs
            return
        if self.engine is None:
            self.bench.invalidate()  # loading: engine_ready runs the current inputs
            return
        job = self.jobs.job(request)
        if job.started is not None:
            job.started(request)
        attention = self.bench.is_attention_request(request)
        lanes = job.lanes(request) if job.lanes is not None else (request,)
        self.jobs.start(*lanes, group="attention" if attention else None)

    def on_finished(self, message: Finished) -> None:
        """One outcome back: the Workbench stores (and records) it; the part that owns it repaints."""
        if not self.alive:
            return
        outcome = message.outcome
        self.live.shown_run = self.bench.run
        follow_up = self.bench.accept(outcome)
        self.jobs.job(outcome.request).finished(outcome)
        self.update_title()
        self.update_status()
        if follow_up is not None:
            self.apply(follow_up)

    def on_partial(self, message: Partial) -> None:
        handle = self.jobs.job(message.request).partial
        if handle is not None and self.alive:
            handle(message.request, message.value)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Unexpected exceptions in workers land here: show them, keep the app running."""
        if event.state == WorkerState.ERROR:
            self.live.release_paint()
            self.live.stop_busy()
            error = event.worker.error
            if event.worker.group == "engine":
                self.bench.invalidate()  # the same inputs may be retried
            self.show_error(f"{event.worker.group} failed: {type(error).__name__}: {error}")

    def check_finished(self, outcome: Outcome) -> None:
        """A dry run or reference prompts came back: an accepted one returns its run as the follow-up."""

    def apply(self, request: Request | None) -> None:
        """After a command that may have edited the list: redraw the list and marks, run what it returned."""
        if request is not None and self.jobs.job(request).group == "engine":
            self.live.hold_paint()
        self.refresh_interventions()
        self.submit(request)

    @on(TabbedContent.TabActivated)
    def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane is not None and event.pane.id:
            self.live.show_view(event.pane.id)

    # ---------------------------------------------------------------- selection

    def cursor_moved(self, layer: int, head: int) -> None:
        """The grid's cursor moved: the Workbench's selection follows at once, before the next key."""
        self.bench.select(layer, head)

    def select(self, layer: int, head: int) -> None:
        """Select a head (the grid's cursor follows)."""
        self.bench.select(layer, head)
        self.grid.cursor = (layer, head)

    @on(Heatmap.CursorMoved, "#grid")
    def grid_cursor_moved(self, event: Heatmap.CursorMoved) -> None:
        self.update_status()
        if self.engine is not None:
            self.set_tab.follow_head()
        self.attention.follow_cursor()

    def selected_head(self) -> tuple[int, int] | None:
        if not self.loaded():
            return None
        return self.bench.selected

    def selected_layer(self) -> int:
        selected = self.bench.selected
        return selected[0] if selected is not None else 0

    # ---------------------------------------------------------------- typing

    @on(Input.Changed, "#prompt-pane Input")
    def prompt_typed(self, event: Input.Changed) -> None:
        self.bench.edit(self.prompt_pane.values())  # runs of the old text are superseded now
        self.live.schedule()

    @on(Input.Submitted, "#prompt-pane Input")
    def prompt_submitted(self, event: Input.Submitted) -> None:
        self.bench.edit(self.prompt_pane.values())
        self.live.schedule(0)

    @on(Select.Changed, "#metric-kind")
    def metric_kind_changed(self, event: Select.Changed) -> None:
        if self.prompt_pane.values() != self.bench.inputs:
            self.bench.edit(self.prompt_pane.values())
            self.live.schedule(0)

    @on(events.DescendantFocus)
    def prompt_field_focused(self, event: events.DescendantFocus) -> None:
        field = event.widget
        if isinstance(field, PromptInput) and not field.armed:
            self.say(f"{field.id} field: enter or click to edit it; letter keys stay hotkeys until then")

    # ---------------------------------------------------------------- interventions

    def relabel_interventions(self) -> None:
        """The list's lines; a steering vector's compares its norm with the latest run's residual."""
        entries = self.bench.edits.stack.entries
        self.part(InterventionList, InterventionList).show_entries(
            entries, tuple(self.bench.edits.list_label(e) for e in entries))

    def refresh_interventions(self) -> None:
        self.relabel_interventions()
        self.grid_part.show_marks()
        self.attention.show_knockouts()
        self.update_status()

    @on(SetRowTable.Picked)
    def set_row_picked(self, message: SetRowTable.Picked) -> None:
        self.set_tab.picked(message)

    @on(InterventionList.Requested)
    def list_requested(self, event: InterventionList.Requested) -> None:
        if event.action == "toggle":
            self.apply(self.bench.edits.toggle(event.entry_id))
        elif event.action == "delete":
            self.apply(self.bench.edits.remove(event.entry_id))
        elif event.action == "edit":
            self.dialogs.edit_entry(event.entry_id)

    # ---------------------------------------------------------------- screen-wide commands

    def cancel(self) -> None:
        """esc / ctrl+c: leave a text field, else stop the running sweep, generation, set job or
        feature attribution."""
        if isinstance(self.app.focused, (Input, AttentionMap)):
            self.grid.focus()
            return
        if self.sweeps.cancel() | self.set_tab.cancel() | self.feature_attribution.cancel():
            self.say("cancelled")

    def show_tab(self, tab: str) -> None:
        self.tabs.active = tab
        self.call_after_refresh(self.focus_grid_if_lost)

    def focus_grid_if_lost(self) -> None:
        """A tab switch hid the focused view: keys go to the grid, never to whatever Tab reaches next."""
        if self.alive and self.app.screen is self and self.app.focused is None:
            self.grid.focus()

    def scroll_view(self, key: str) -> None:
        """shift+pgup/pgdn/home/end: scroll the open view tab, wherever the focus is."""
        pane = self.tabs.get_pane(self.tabs.active)
        target = next((w for w in pane.query("DataTable, Heatmap, VerticalScroll") if w.display), None)
        if target is None:
            return
        if target is self.attention_map and target.cursor is not None:
            moves = {"pageup": (-8, 0), "pagedown": (8, 0), "home": (-9999, 0), "end": (9999, 0)}
            self.attention_map.move_cursor(*moves[key])  # the query cursor follows, so the caption says where
            return
        ends = ("scroll_top", "scroll_bottom") if isinstance(target, DataTable) else ("scroll_home", "scroll_end")
        action = {"pageup": "page_up", "pagedown": "page_down", "home": ends[0], "end": ends[1]}[key]
        getattr(target, f"action_{action}")()

    def show_message(self) -> None:
        """E (or a click on the status line): the whole message, never cut."""
        from mechscope.screens.message import MessageScreen

        error = self.bench.error
        self.app.push_screen(MessageScreen("error" if error else "message", error or self.bench.info,
                                           error=bool(error)))

    def on_click(self, event: events.Click) -> None:
        if event.widget is not None and event.widget.id == "status-bar":
            self.show_message()

    def focus_prompt(self) -> None:
        field = self.query_one("#clean", PromptInput)
        field.arm()  # a deliberate entry: letters type from now until the field is left
        field.focus()

    def help(self) -> None:
        from mechscope.screens.help import HelpScreen

        keys = [(key_label(c.keys), c.help if c.title in c.help else f"{c.title}: {c.help}")
                for c in COMMANDS]
        self.app.push_screen(HelpScreen(keys + list(WIDGET_KEYS)))

    def restored(self, name: str) -> None:
        """The App switched sessions: the Workbench holds the new state; show it and run."""
        self.bench.error = None
        self.bench.info = f"opened session {name}"
        self.live.stale_views.clear()
        self.refresh_all()
