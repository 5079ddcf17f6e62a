"""Every session write the workbench makes, in one place; a failing or missing session never stops the UI.

The recorder writes what a request carried (never what the inputs are now), keeps one status that
cannot contradict itself (saved / not saved: reason / not recording), and keeps the writes that
failed so they can be retried once the disk works again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.requests.kinds import Outcome
from mechscope.workbench.stack import Change, Entry, diff_entries

Status = Literal["saved", "not saved", "not recording"]


@dataclass(frozen=True)
class Unsaved:
    """A write that failed: `what` names it for the user, `retry` writes it again."""

    what: str
    retry: Callable[[], None]


class SessionRecorder:
    """Wraps a `mechscope.sessions.Session`; with no session every call is a no-op."""

    def __init__(self, session: Any = None, reason: str | None = None) -> None:
        self.session = session
        self.status: Status = "saved" if session is not None else "not recording"
        self.reason = reason  # why not saved / not recording (None when saved)
        self.warning: str | None = None  # shown beside "saved" (e.g. resumed on another model)
        self.unsaved: list[Unsaved] = []
        self._last_prompt: tuple[str, str | None] | None = None
        self._last_metric: Metric | None = None
        self._recorded: dict[int, Intervention | None] = {}  # id -> as the log holds it
        self.current: Callable[[], tuple[Entry, ...]] | None = None  # the list as it is now
        self._last_set: Any = None  # the PromptSet of the latest prompt_set event

    @property
    def name(self) -> str | None:
        return getattr(self.session, "name", None) if self.session is not None else None

    @property
    def saved(self) -> bool:
        return self.status == "saved"

    def describe(self) -> str:
        """One line for the header; never says saved and not saved at once."""
        if self.session is None:
            return self.reason or "not recording"
        lost = ""
        if self.unsaved:
            shown = ", ".join(u.what for u in self.unsaved[:3])
            more = f" and {len(self.unsaved) - 3} more" if len(self.unsaved) > 3 else ""
            lost = f" · unwritten: {shown}{more} (Retry saving)"
        if self.status == "saved":
            return f"session {self.name} saved" + (f" ({self.warning})" if self.warning else "") + lost
        return f"session {self.name} NOT SAVED: {self.reason}{lost}"

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
                    recorder.warning = session.warnings[-1]
                return recorder, session.state()
            return cls(Session.create(name=name, engine=engine)), None
        except Exception as exc:  # a broken session folder: work on, unrecorded, and say why
            return cls(None, f"session not recorded: {exc}"), None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def used_intervention_ids(self) -> int:
        """The largest intervention id the session ever used (removed ones included), so ids stay unique."""
        if self.session is None:
            return 0
        return max((int(event.get("id", 0)) for event in self.session.events
                    if event.kind == "intervention"), default=0)

    def remember_state(self, clean: str, corrupted: str | None, metric: Metric | None,
                       interventions: list[tuple[int, Intervention]]) -> None:
        """What a resumed session already holds, so it is not recorded again."""
        self._last_prompt = (clean, corrupted or None)
        self._last_metric = metric
        self._recorded = dict(interventions)

    # -- writing ------------------------------------------------------------------------------

    def _write(self, what: str, write: Callable[[], None], keep: bool) -> bool:
        """Run one write; on failure say why and, when `keep`, remember it for `retry_unsaved`."""
        if self.session is None:
            return False
        try:
            write()
        except Exception as exc:  # a disk error must not take the workbench down
            self.status, self.reason = "not saved", f"{exc}"[:200]
            if keep:
                self.unsaved.append(Unsaved(what, write))
            return False
        self.status, self.reason = "saved", None
        return True

    def retry_unsaved(self) -> int:
        """Write the kept failed writes again, oldest first; returns how many are still unsaved."""
        pending, self.unsaved = self.unsaved, []
        for index, item in enumerate(pending):
            if not self._write(item.what, item.retry, keep=False):
                self.unsaved = pending[index:]
                break
        return len(self.unsaved)

    def prompt_and_metric(self, clean: str, corrupted: str | None, metric: Metric | None) -> None:
        """The prompts and metric a request carried, when the log does not already end on them."""
        corrupted = corrupted or None

        def prompt() -> None:
            self.session.record_prompt(clean, corrupted)
            self._last_prompt = (clean, corrupted)

        def metric_event() -> None:
            self.session.record_metric(metric)
            self._last_metric = metric

        if (clean, corrupted) != self._last_prompt:
            self._write("prompt", prompt, keep=False)  # the run event carries them too
        if metric is not None and metric != self._last_metric:
            self._write("metric", metric_event, keep=False)

    def changes(self, changes: list[Change]) -> None:
        """Record edits of the list. After a failed one the log's list is out of step: from then on
        each call (and Retry saving) writes the difference between the log's list and `current()`."""
        if self.session is None:
            return
        if any(u.what == "intervention list" for u in self.unsaved):
            self._write("intervention list", self._resync, keep=False)
            if self.saved:
                self.unsaved = [u for u in self.unsaved if u.what != "intervention list"]
            return
        for change in changes:
            if not self._write(f"intervention {change.action}", functools.partial(self._change, change),
                               keep=False):
                self.unsaved.append(Unsaved("intervention list", self._resync))
                return

    def _change(self, change: Change) -> None:
        self.session.record_intervention(change.action, change.id, intervention=change.intervention,
                                         enabled=change.enabled)
        if change.action == "removed":
            self._recorded.pop(change.id, None)
        elif change.intervention is not None:
            self._recorded[change.id] = change.intervention
        elif (before := self._recorded.get(change.id)) is not None and change.enabled is not None:
            self._recorded[change.id] = before.with_enabled(change.enabled)

    def _resync(self) -> None:
        """Write what turns the log's intervention list into the current one."""
        if self.current is None:
            return
        logged = tuple(Entry(i, iv) for i, iv in self._recorded.items() if iv is not None)
        for change in diff_entries(logged, self.current()):
            self._change(change)

    def recorded_intervention(self, entry_id: int) -> Intervention | None:
        """The intervention the log holds under `entry_id` (None if unknown)."""
        return self._recorded.get(entry_id)

    def work(self, outcome: Outcome, what: str, keep: bool = True) -> None:
        """A piece of work: exactly the outcome's request and its summary (a `request` event).
        `keep`: retry it after a failed write (a later run supersedes a lost run, so runs are not kept)."""
        self._write(what, lambda: self.session.record_outcome(outcome), keep=keep)

    def reference_prompts(self, prompts: tuple[str, ...]) -> None:
        self._write("reference prompts", lambda: self.session.record_reference_prompts(prompts), keep=True)

    def effect_scale(self, scale: str) -> None:
        self._write("effect scale", lambda: self.session.record_effect_scale(scale), keep=True)

    def feature_label(self, sae_folder: str, feature: int, label: str) -> None:
        self._write(f"feature {feature} label",
                    lambda: self.session.record_feature_label(sae_folder, feature, label), keep=True)

    def note(self, text: str) -> None:
        self._write("note", lambda: self.session.record_note(text), keep=True)

    def vector(self, name: str, array: Any) -> None:
        self._write(f"vector {name}", lambda: self.session.save_vector(name, array), keep=True)

    def prompt_set(self, pset: Any) -> None:
        """The prompt set now in use (a `PromptSet`), when it is not the one the log last holds."""
        if pset is None or pset == self._last_set:
            return

        def write() -> None:
            self.session.record_prompt_set(pset)
            self._last_set = pset

        self._write("prompt set", write, keep=True)

    def remember_prompt_set(self, pset: Any) -> None:
        """The prompt set a resumed session already holds, so it is not recorded again."""
        self._last_set = pset
