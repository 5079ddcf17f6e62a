"""Every session write the workbench makes, in one place; a failing or missing session never stops the UI."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mechscope.tui.state import Change


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Run a recording call; on failure remember one line for the header instead of raising."""

    @functools.wraps(method)
    def wrapper(self: SessionRecorder, *args: Any, **kwargs: Any) -> None:
        if self.session is None:
            return
        try:
            method(self, *args, **kwargs)
            self.saved = True
        except Exception as exc:  # a disk error must not take the workbench down
            self.saved = False
            self.error = f"session not saved: {exc}"

    return wrapper


class SessionRecorder:
    """Wraps a `mechscope.sessions.Session`; with no session every call is a no-op."""

    def __init__(self, session: Any = None, error: str | None = None) -> None:
        self.session = session
        self.error = error
        self.saved = session is not None
        self._last_prompt: tuple[str, str] | None = None
        self._last_metric: Any = None

    @property
    def name(self) -> str | None:
        return getattr(self.session, "name", None) if self.session is not None else None

    @classmethod
    def start(cls, name: str | None, engine: Any) -> tuple[SessionRecorder, Any]:
        """Resume session `name` if it exists, else create it (a generated name when None).

        Returns the recorder and the resumed session's state (None for a new session).
        """
        try:
            from mechscope.sessions import Session
        except ImportError:
            return cls(None, "sessions unavailable"), None
        try:
            if name is not None and Session.resolve(name).is_dir():
                session = Session.open(name)
                session.bind_engine(engine)
                recorder = cls(session)
                if session.warnings:
                    recorder.error = session.warnings[-1]
                return recorder, session.state()
            return cls(Session.create(name=name, engine=engine)), None
        except Exception as exc:  # a broken session folder: work on, unrecorded, and say why
            return cls(None, f"session not recorded: {exc}"), None

    def used_intervention_ids(self) -> int:
        """The largest intervention id the session ever used (removed ones included), so ids stay unique."""
        if self.session is None:
            return 0
        return max((int(event.get("id", 0)) for event in self.session.events
                    if event.kind == "intervention"), default=0)

    def remember_state(self, clean: str, corrupted: str, metric: Any) -> None:
        """What a resumed session already holds, so it is not recorded again."""
        self._last_prompt = (clean, corrupted)
        self._last_metric = metric

    @_guarded
    def prompt_and_metric(self, clean: str, corrupted: str, metric: Any) -> None:
        """Record the prompts and the metric if they changed since the last record."""
        if (clean, corrupted) != self._last_prompt:
            self.session.record_prompt(clean, corrupted or None)
            self._last_prompt = (clean, corrupted)
        if metric is not None and metric != self._last_metric:
            self.session.record_metric(metric)
            self._last_metric = metric

    @_guarded
    def changes(self, changes: list[Change]) -> None:
        for change in changes:
            self.session.record_intervention(change.action, change.id,
                                             intervention=change.intervention,
                                             enabled=change.enabled)

    @_guarded
    def run(self, clean: str, corrupted: str, metric: Any, interventions: list, result: Any) -> None:
        self.session.record_run(clean, corrupted or None, metric, interventions, result)

    @_guarded
    def sweep(self, result: Any, clean: str, corrupted: str, metric: Any, direction: str) -> None:
        self.session.record_sweep(result, clean, corrupted, metric, direction)

    @_guarded
    def generate(self, prompt: str, corrupted: str, interventions: list, params: dict,
                 tokens: list) -> None:
        self.session.record_generate(prompt, interventions, params, tokens, corrupted=corrupted or None)

    @_guarded
    def note(self, text: str) -> None:
        self.session.record_note(text)

    @_guarded
    def vector(self, name: str, array: Any) -> None:
        self.session.save_vector(name, array)
