"""The App: loads the engine in a worker, switches sessions, offers the palette; the workbench screen does the rest."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from textual import events, work
from textual._dispatch_key import dispatch_key
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import CommandPalette
from textual.markup import escape
from textual.screen import Screen

from mechscope.engine.errors import MechscopeError
from mechscope.screens.live_run import TYPING_DEBOUNCE_S
from mechscope.screens.workbench import WorkbenchScreen
from mechscope.tui.commands import COMMANDS, key_label
from mechscope.tui.messages import EngineFailed, EngineLoaded, EngineProgress
from mechscope.tui.remote import AttachedMixin
from mechscope.tui.type_ahead import TypeAhead
from mechscope.tui.widgets.ordered_input import OrderedCommandPalette
from mechscope.tui.widgets.prompt_input import PromptInput
from mechscope.workbench.controller import GenerationSettings, Inputs, Workbench
from mechscope.workbench.recorder import SessionRecorder

__all__ = ["COMMANDS", "IOI_PAIR", "TOP_K", "TYPING_DEBOUNCE_S", "MechscopeApp", "key_label", "run_app"]

IOI_PAIR = Inputs(
    clean="When Mary and John went to the store, John gave a drink to",
    corrupted="When Mary and John went to the store, Mary gave a drink to",
    target=" Mary",
    foil=" John",
    metric_kind="logit_diff",
)
TOP_K = 10
GENERATE_TOKENS = 24

EngineFactory = Callable[[Callable[[str, "float | None"], None]], Any]


class MechscopeApp(AttachedMixin, App[int]):
    """The workbench. Inject `engine_factory(progress) -> Engine` to run on any engine (tests use tiny ones)."""

    TITLE = "mechscope"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]  # the footer only where rows are to spare
    BINDINGS = [*(Binding(c.keys, c.action, c.short or c.title, show=c.show) for c in COMMANDS
                  if c.action == "quit"),
                # Priority: the focus moves as the key arrives, so keys typed after it in one burst
                # (a paste, a fast typist) go to the next field, not to the one it left.
                Binding("tab", "move_focus(1)", "Next field", show=False, priority=True),
                Binding("shift+tab", "move_focus(-1)", "Previous field", show=False, priority=True)]

    def push_screen(self, screen: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(screen, Screen):
            self.type_ahead.opening(screen)
        return super().push_screen(screen, *args, **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        """A key no widget took: typed ahead of a dialog, it goes into the dialog; else the bindings
        (this replaces App's own handler, which would run them a second time)."""
        event.prevent_default()
        if self.type_ahead.take(event):
            return
        if not await self._check_bindings(event.key):
            await dispatch_key(self, event)
        self.type_ahead.handled(event)

    async def on_event(self, event: events.Event) -> None:
        """A key as it arrives: kept while a dialog has keys typed ahead or an answer to give; one
        handed on from there has run its priority binding when it returns here, if it has one."""
        if isinstance(event, events.Key) and not event.is_forwarded:
            if self.type_ahead.hold(event):
                return
            if self.type_ahead.is_handed_on(event) and await self._check_bindings(event.key, priority=True):
                self.type_ahead.handled(event)
                return
        await super().on_event(event)

    def on_descendant_focus(self) -> None:
        self.type_ahead.deliver()  # a dialog focused its field: the keys typed ahead go in now

    def action_move_focus(self, step: int) -> None:
        """Tab / shift+tab: a prompt field being edited hands the editing on to the next field."""
        focused = self.focused
        if isinstance(focused, PromptInput) and focused.armed:
            focused.action_hand_on(step)
        elif step > 0:
            self.screen.focus_next()
        else:
            self.screen.focus_previous()

    def __init__(self, engine_factory: EngineFactory | None = None, session_name: str | None = None,
                 *, source: str = "demo", record: bool = True, deterministic: bool = False,
                 initial: Inputs = IOI_PAIR) -> None:
        super().__init__()
        self.engine_factory = engine_factory
        self.session_name = session_name
        self.source = source
        self.record = record
        self.engine: Any = None
        self.load_failed = False
        self.load_error: str | None = None  # printed by `run_app` after the screen closes
        self.bench = Workbench(initial, top_k=TOP_K,
                               generation=GenerationSettings(max_new_tokens=GENERATE_TOKENS))
        self.bench.info = "loading model…"
        self.workbench = WorkbenchScreen(self.bench, source=source, deterministic=deterministic)
        self.type_ahead = TypeAhead(self)

    @property
    def recorder(self) -> SessionRecorder:
        return self.bench.recorder

    def get_default_screen(self) -> Screen:
        return self.workbench

    def on_mount(self) -> None:
        self.load_engine()
        self.check_size(self.size.width, self.size.height)

    def on_resize(self, event: events.Resize) -> None:
        self.check_size(event.size.width, event.size.height)

    def check_size(self, width: int, height: int) -> None:
        """Below 80x24 cover the workbench with "terminal too small" (it acts on nothing); remove it above."""
        from mechscope.screens.too_small import TooSmallScreen, too_small

        covering = next((s for s in self.screen_stack if isinstance(s, TooSmallScreen)), None)
        if too_small(width, height):
            if covering is None:
                self.push_screen(TooSmallScreen(width, height))
            else:
                covering.show_size(width, height)
        elif covering is not None and self.screen is covering:
            self.pop_screen()

    def action_command_palette(self) -> None:
        from mechscope.screens.too_small import TooSmallScreen

        if not isinstance(self.screen, TooSmallScreen) and self.use_command_palette \
                and not isinstance(self.screen, CommandPalette):
            self.push_screen(OrderedCommandPalette(id="--command-palette"))

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
        self.workbench.show_progress(f"{message.text}{percent}")

    def on_engine_failed(self, message: EngineFailed) -> None:
        from mechscope.screens.load_error import LoadErrorScreen

        self.load_failed = True
        self.load_error = message.reason
        self.push_screen(LoadErrorScreen(self.source, message.reason))

    def on_engine_loaded(self, message: EngineLoaded) -> None:
        self.engine = message.engine
        if hasattr(self.engine, "on_unreachable"):  # a RemoteEngine: say whose job waits, reconnect
            self.attach_remote(self.engine)
        if self.record:
            recorder, state = SessionRecorder.start(self.session_name, self.engine)
            self.bench.switch_recorder(recorder)
            if state is not None:
                self.restore(state)
        self.workbench.engine_ready(self.engine)

    def restore(self, state: Any) -> None:
        """Put everything a resumed session showed back (the Workbench's state), and its vectors and
        reference prompts into the engine."""
        self.bench.restore_session(state)
        for name, array in (state.vectors or {}).items():
            self.engine.add_vector(name, np.asarray(array))
        prompts = getattr(state, "reference_prompts", None)
        if prompts:  # mean ablations average over what the session last set
            self.engine.set_reference_prompts(list(prompts))

    # ---------------------------------------------------------------- sessions

    def open_sessions(self) -> None:
        try:
            from mechscope.screens import sessions as sessions_screen
        except ImportError:
            self.workbench.show_error("the sessions screen is not available")
            return
        screen_class = getattr(sessions_screen, "SessionsScreen", None)
        if screen_class is None:
            self.workbench.show_error("the sessions screen is not available")
            return
        self.push_screen(screen_class(current=self.bench.recorder.name), self.switch_session)

    def switch_session(self, name: str | None) -> None:
        """The sessions screen chose a session to open: record into it and put its state back."""
        if name is None or self.engine is None or name == self.bench.recorder.name:
            return
        recorder, state = SessionRecorder.start(name, self.engine)
        if recorder.session is None:
            self.workbench.show_error(recorder.reason or f"cannot open session {name}")
            return
        self.bench.switch_recorder(recorder)  # releases the old session's write lock now
        if state is not None:
            self.restore(state)
        else:
            self.bench.sweeps.clear()
            self.bench.invalidate()
        self.workbench.restored(name)

    # ---------------------------------------------------------------- palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        if screen is not self.workbench:
            yield from super().get_system_commands(screen)
            return
        # Textual's own "Keys" would list the keys a second time next to ours (help screen, ?)
        yield from (command for command in super().get_system_commands(screen) if command.title != "Keys")
        for command in COMMANDS:
            if command.action in ("help", "quit"):
                continue
            title = f"{command.title} ({key_label(command.keys)})" if command.keys else command.title
            # the palette reads help as markup: `vector [d_model]` would lose its bracket
            yield SystemCommand(title, escape(command.help),
                                lambda action=command.action: self.workbench.run_command(action))
        yield SystemCommand("Keys (?)", "show every key", self.workbench.help)


def run_app(args: argparse.Namespace) -> int:
    """Entry point of `mechscope` with no sub-command; returns the exit code (2 when the model failed
    to load, after printing why once the screen is gone)."""
    attach = getattr(args, "attach", None)

    def factory(progress: Callable[[str, float | None], None]) -> Any:
        if attach:
            # An attached workbench never imports torch: the model lives in the server.
            progress(f"connecting to the server {attach}", None)
            from mechscope.serve import connect

            return connect(attach)  # named user:pid, so two workbenches of one user differ
        # torch and transformers load here, in the loader thread, after the first paint
        progress("importing PyTorch and transformers", None)
        from mechscope.backends import load_engine, model_settings

        return load_engine(model_settings(args), getattr(args, "backend", None),
                           progress)

    source = f"attached: {attach}" if attach else args.model
    app = MechscopeApp(factory, session_name=getattr(args, "session", None), source=source)
    return_code = app.run()
    if app.load_error is not None:
        import sys

        print(f"error: {app.load_error}", file=sys.stderr)
        return 2
    return int(return_code or 0)
