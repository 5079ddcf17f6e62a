"""The App's side of an attached engine: whose job holds the server, and reconnecting when it goes away."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from textual import work
from textual.message import Message
from textual.worker import get_current_worker

from mechscope.engine.errors import MechscopeError
from mechscope.requests.kinds import Request, RunRequest

UNREACHABLE = "engine unreachable — reconnecting"
RECONNECT_EVERY_S = 1.0


@dataclass
class EngineWaiting(Message):
    """Our job waits behind another client's: one line saying whose job runs and how far it is."""

    text: str


@dataclass
class EngineLost(Message):
    """A job failed because the server went away; `request` is the one to rerun once it is back."""

    request: Request | None


@dataclass
class EngineReconnecting(Message):
    attempt: int


@dataclass
class EngineBack(Message):
    """The server answers again (`restarted`: a new server process, which holds none of our vectors)."""

    restarted: bool


class AttachedMixin:
    """Mixed into the App: install with `attach_remote(engine)` once a `RemoteEngine` is loaded."""

    _lost_request: Request | None = None
    _reconnecting: bool = False
    _waiting_text: str | None = None

    def attach_remote(self, engine: Any) -> None:
        """Route the client's waiting frames and lost connections into App messages (thread-safe)."""
        from mechscope.serve.client import describe_wait

        app: Any = self

        def on_wait(frame: dict) -> None:
            running = frame.get("running")
            # Only another client's job is news: a frame sent before the queue picked our job up
            # names none, and our own live run ahead of our attention request is no wait to report.
            if isinstance(running, dict) and running.get("client") != engine.client_name:
                app.post_message(EngineWaiting(describe_wait(frame)))

        engine.on_wait = on_wait
        engine.on_unreachable = lambda request: app.post_message(EngineLost(request))

    def on_engine_waiting(self, message: EngineWaiting) -> None:
        app: Any = self
        if not self._reconnecting:
            self._waiting_text = message.text
            app.workbench.say(message.text)

    def on_finished(self, message: Message) -> None:
        """An outcome came back (the screen handled it first): drop a wait note nothing replaced."""
        app: Any = self
        if self._waiting_text is not None and app.bench.info == self._waiting_text:
            app.workbench.say("done")
        self._waiting_text = None

    def on_engine_lost(self, message: EngineLost) -> None:
        app: Any = self
        if message.request is not None:
            self._lost_request = message.request
        app.workbench.show_error(UNREACHABLE)
        if not self._reconnecting:
            self._reconnecting = True
            self.reconnect_engine()

    def on_engine_reconnecting(self, message: EngineReconnecting) -> None:
        app: Any = self
        app.workbench.show_error(f"{UNREACHABLE} (attempt {message.attempt})")

    @work(thread=True, exclusive=True, exit_on_error=False, group="reconnect")
    def reconnect_engine(self) -> None:
        """Try the server every second until it answers (or the App closes)."""
        app: Any = self
        engine = app.engine
        pid_before = engine.server_pid
        worker = get_current_worker()
        attempt = 0
        while not worker.is_cancelled:
            time.sleep(RECONNECT_EVERY_S)
            attempt += 1
            try:
                engine.reconnect()
            except MechscopeError:
                app.post_message(EngineReconnecting(attempt))
                continue
            app.post_message(EngineBack(restarted=engine.server_pid != pid_before))
            return

    def on_engine_back(self, message: EngineBack) -> None:
        """Put our vectors back on a restarted server, then rerun what failed (the live run at least)."""
        app: Any = self
        self._reconnecting = False
        bench = app.bench
        bench.error = None
        if message.restarted and bench.recorder.session is not None:
            state = bench.recorder.session.state()
            for name, array in (state.vectors or {}).items():
                try:
                    app.engine.add_vector(name, array)
                except MechscopeError as exc:
                    app.workbench.show_error(f"cannot restore vector {name}: {exc}")
        app.workbench.say("engine reconnected")
        lost, self._lost_request = self._lost_request, None
        bench.invalidate()
        if lost is not None and lost.kind != RunRequest.kind:  # the live run is issued anew below
            app.workbench.submit(lost)
        app.workbench.submit(bench.next_run())
