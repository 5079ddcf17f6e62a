"""The sessions screen: list recorded sessions, open, rename, delete, and replay one as a timeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

from mechscope.screens.dialog import Dialog
from mechscope.sessions import Session, SessionError, SessionSummary, StepResult
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.plain import Plain, PlainLabel, cell, plain_title

STATUS_STYLES = {"ok": "green", "DRIFT": "bold red", "ERROR": "bold magenta"}


class RenameSessionScreen(Dialog[str | None]):
    """Asks for a new session name; returns it on enter (if it is free and valid), None on escape."""

    DEFAULT_CSS = """
    RenameSessionScreen { align: center middle; }
    RenameSessionScreen Vertical { width: 64; max-width: 100%; height: auto; border: round $accent;
                                   background: $surface; padding: 0 1; }
    RenameSessionScreen #rename-error { color: $error; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, name: str, taken: set[str]) -> None:
        super().__init__()
        self.old_name = name
        self.taken = taken

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = plain_title(f"rename {self.old_name}")
            yield PlainLabel("new name (letters, digits, '.', '_', '-')")
            yield OrderedInput(self.old_name, id="rename-input")
            yield Plain("", id="rename-error")
            yield PlainLabel("enter renames, esc cancels", classes="dim")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        from mechscope.sessions.paths import check_name

        event.stop()
        new_name = event.value.strip()
        try:
            check_name(new_name)
        except ValueError as exc:
            self.query_one("#rename-error", Static).update(str(exc))
            return
        if new_name != self.old_name and new_name in self.taken:
            self.query_one("#rename-error", Static).update(f"a session named {new_name!r} exists")
            return
        self.dismiss(None if new_name == self.old_name else new_name)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDeleteScreen(Dialog[bool]):
    """y deletes, n or escape keeps."""

    DEFAULT_CSS = """
    ConfirmDeleteScreen { align: center middle; }
    ConfirmDeleteScreen Vertical { width: 64; max-width: 100%; height: auto; border: heavy $error;
                                   background: $surface; padding: 0 1; }
    """

    BINDINGS = [Binding("y", "answer(True)", "Delete"), Binding("n,escape", "answer(False)", "Keep")]

    def __init__(self, summary: SessionSummary) -> None:
        super().__init__()
        self.summary = summary

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "delete session"
            yield PlainLabel(f"Delete {self.summary.name} ({self.summary.n_events} events) for good?")
            yield PlainLabel("y deletes, n keeps", classes="dim")

    def action_answer(self, delete: bool) -> None:
        self.dismiss(delete)


class SessionsScreen(Screen[str | None]):
    """Sessions on disk; dismisses with the name of the session to open, or None.

    `engine` replays sessions (default: the app's `engine` attribute); `current` is the session the
    workbench records into, which cannot be renamed or deleted from here. Replay runs in a thread
    worker that posts one `ReplayStep` per step, so the timeline fills as the steps compute.
    """

    DEFAULT_CSS = """
    SessionsScreen { layout: vertical; }
    SessionsScreen #sessions-table { height: 1fr; min-height: 5; }
    SessionsScreen #timeline-box { height: 1fr; min-height: 6; border-top: solid $accent; }
    SessionsScreen #timeline { height: 1fr; }
    SessionsScreen #step-detail { height: auto; max-height: 4; color: $text-muted; }
    SessionsScreen #sessions-status { height: 1; background: $boost; }
    SessionsScreen .-hidden { display: none; }
    """

    BINDINGS = [
        Binding("o", "open_session", "Open"),
        Binding("p", "replay", "Replay"),
        Binding("r", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("f5", "refresh", "Refresh"),
        Binding("escape", "close", "Back"),
        Binding("j", "cursor('down')", "Down", show=False),
        Binding("k", "cursor('up')", "Up", show=False),
    ]

    @dataclass
    class ReplayStep(Message):
        """One replayed step, posted from the replay worker."""

        session: str
        step: StepResult
        total: int

    @dataclass
    class ReplayDone(Message):
        session: str
        steps: list[StepResult]

    @dataclass
    class ReplayFailed(Message):
        session: str
        error: str

    def __init__(self, engine: Any = None, current: str | None = None,
                 root: str | Path | None = None) -> None:
        super().__init__()
        self._engine = engine
        self._current = current
        self.root = root
        self.summaries: dict[str, SessionSummary] = {}
        self.steps: list[StepResult] = []
        self.replayed: str | None = None

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="timeline-box", classes="-hidden"):
            yield DataTable(id="timeline", cursor_type="row")
            yield Plain("", id="step-detail")
        yield Plain("", id="sessions-status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#sessions-table", DataTable)
        table.add_columns("name", "model", "created", "events", "last prompt")
        timeline = self.query_one("#timeline", DataTable)
        timeline.add_columns("seq", "kind", "status", "recorded", "recomputed")
        self.refresh_sessions()
        table.focus()

    @property
    def engine(self) -> Any:
        return self._engine if self._engine is not None else getattr(self.app, "engine", None)

    @property
    def current(self) -> str | None:
        if self._current is not None:
            return self._current
        recorder = getattr(self.app, "recorder", None)
        return getattr(recorder, "name", None)

    def set_status(self, text: str) -> None:
        self.query_one("#sessions-status", Static).update(text)

    def refresh_sessions(self, select: str | None = None) -> None:
        """Re-read the sessions folder and redraw the list, keeping (or moving to) `select`."""
        table = self.query_one("#sessions-table", DataTable)
        keep = select or self.selected_name()
        self.summaries = {s.name: s for s in Session.list(self.root)}
        table.clear()
        for summary in self.summaries.values():
            name = cell(summary.name + (" *" if summary.name == self.current else ""))
            if summary.error:
                prompt = cell(f"unusable: {summary.error}", style="red")
            else:
                prompt = Text(repr(summary.last_prompt) if summary.last_prompt else "-")
            table.add_row(name, cell(summary.model), cell(summary.created[:16].replace("T", " ")),
                          str(summary.n_events), prompt, key=summary.name)
        if keep in self.summaries:
            table.move_cursor(row=table.get_row_index(keep))
        count = len(self.summaries)
        self.set_status(f"{count} session{'s' if count != 1 else ''}" if count else
                        "no sessions yet: the workbench records one each time it runs")

    def selected_name(self) -> str | None:
        table = self.query_one("#sessions-table", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # -- actions ------------------------------------------------------------------------------

    def action_open_session(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        summary = self.summaries[name]
        if summary.error:
            self.set_status(f"cannot open {name}: {summary.error}")
            return
        self.dismiss(name)

    @on(DataTable.RowSelected, "#sessions-table")
    def open_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a session opens it."""
        event.stop()
        self.action_open_session()

    def action_close(self) -> None:
        if self.workers_running():
            self.workers.cancel_group(self, "replay")
            self.set_status("replay cancelled")
            return
        self.dismiss(None)

    def action_cursor(self, direction: str) -> None:
        """j / k move through the focused list as the arrows do, like h j k l on the workbench's grid."""
        table = self.focused
        if isinstance(table, DataTable) and direction == "down":
            table.action_cursor_down()
        elif isinstance(table, DataTable):
            table.action_cursor_up()

    def action_refresh(self) -> None:
        self.refresh_sessions()

    def action_rename(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        if name == self.current:
            self.set_status(f"{name} is being recorded; rename it after leaving the workbench")
            return

        def done(new_name: str | None) -> None:
            if not new_name:
                return
            try:
                Session.open(self.summaries[name].path).rename(new_name)
            except SessionError as exc:
                self.set_status(f"rename failed: {exc}")
                return
            self.refresh_sessions(select=new_name)
            self.set_status(f"renamed {name} -> {new_name}")

        self.app.push_screen(RenameSessionScreen(name, set(self.summaries)), done)

    def action_delete(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        if name == self.current:
            self.set_status(f"{name} is being recorded; it cannot be deleted now")
            return
        summary = self.summaries[name]

        def done(confirmed: bool | None) -> None:
            if not confirmed:
                self.set_status(f"kept {name}")
                return
            try:
                _delete_folder(summary.path)
            except (SessionError, OSError) as exc:
                self.set_status(f"delete failed: {exc}")
                return
            self.refresh_sessions()
            self.set_status(f"deleted {name}")

        self.app.push_screen(ConfirmDeleteScreen(summary), done)

    def action_replay(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        if self.engine is None:
            self.set_status("no model is loaded yet; replay needs one")
            return
        self.steps = []
        self.replayed = name
        timeline = self.query_one("#timeline", DataTable)
        timeline.clear()
        self.query_one("#step-detail", Static).update("")
        self.query_one("#timeline-box").remove_class("-hidden")
        self.set_status(f"replaying {name}...")
        self.replay_worker(name, self.summaries[name].path, self.engine)

    def workers_running(self) -> bool:
        return any(w.group == "replay" and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                   for w in self.workers)

    # -- replay worker ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="replay")
    def replay_worker(self, name: str, path: Path, engine: Any) -> None:
        from mechscope.engine.errors import Cancelled, MechscopeError
        from mechscope.sessions.replaying import count_steps, replay

        worker = get_current_worker()
        try:
            session = Session.open(path)
            total = count_steps(session)
            steps = replay(session, engine,
                           on_step=lambda step: self.post_message(self.ReplayStep(name, step, total)),
                           should_stop=lambda: worker.is_cancelled)
        except Cancelled:
            return
        except (SessionError, MechscopeError) as exc:
            self.post_message(self.ReplayFailed(name, str(exc)))
            return
        self.post_message(self.ReplayDone(name, steps))

    @on(ReplayStep)
    def show_step(self, message: ReplayStep) -> None:
        if message.session != self.replayed:
            return
        step = message.step
        self.steps.append(step)
        timeline = self.query_one("#timeline", DataTable)
        style = STATUS_STYLES.get(step.status, "")
        drift = "" if step.matches else style
        timeline.add_row(str(step.seq), cell(step.kind), cell(step.status, style=style),
                         cell(_clip(step.recorded_short)),
                         cell(_clip(step.recomputed_short), style=drift),
                         key=str(step.seq))
        self.set_status(f"replaying {message.session}: step {len(self.steps)}/{message.total}")

    @on(ReplayDone)
    def finish_replay(self, message: ReplayDone) -> None:
        if message.session != self.replayed:
            return
        drifted = sum(1 for step in message.steps if not step.matches)
        verdict = "all match" if not drifted else f"{drifted} drifted"
        self.set_status(f"replayed {message.session}: {len(message.steps)} steps, {verdict}")

    @on(ReplayFailed)
    def fail_replay(self, message: ReplayFailed) -> None:
        self.set_status(f"cannot replay {message.session}: {message.error}")

    @on(Worker.StateChanged)
    def worker_state(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "replay" and event.state == WorkerState.ERROR:
            self.set_status(f"replay failed: {event.worker.error}")

    @on(DataTable.RowHighlighted, "#timeline")
    def show_step_detail(self, event: DataTable.RowHighlighted) -> None:
        seq = int(event.row_key.value) if event.row_key.value is not None else -1
        step = next((s for s in self.steps if s.seq == seq), None)
        if step is None:
            return
        lines = [f"recorded   {step.recorded}", f"recomputed {step.recomputed}"]
        if step.detail:
            lines.append(f"-> {step.detail}")
        self.query_one("#step-detail", Static).update("\n".join(lines))


def _clip(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _delete_folder(path: Path) -> None:
    """Delete a session folder even when its log is unreadable; refused while another process records it."""
    from mechscope.sessions.folders import remove_folder

    remove_folder(path)
