"""Replay a session on an engine and compare every recorded outcome with the recomputed one.

Steps are the pieces of work the session recorded (`request` events, and the run / sweep / generate /
set_run / set_sweep events of older sessions, read as the requests they stand for): each is read,
executed with `mechscope.requests.execute` and compared by its request kind's handler under a
`Tolerance` (see `mechscope.requests.tolerance` for the table by dtype and device). `vector` and
`reference_prompts` events are applied to the engine as they come (a failed step only if the engine
refuses them, e.g. a vector of the wrong width); the engine's own vectors and reference prompts are
restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mechscope.requests.registry import Summary, execute, handler_for
from mechscope.requests.tolerance import TOLERANCES, Tolerance, compare_outcomes, tolerance_for
from mechscope.sessions.events import Event, work_kind
from mechscope.sessions.store import Session

__all__ = ["TOLERANCES", "StepResult", "Tolerance", "compare_outcomes", "count_steps", "replay",
           "session_tolerance", "tolerance_for"]


def session_tolerance(session: Session, engine: Any) -> Tolerance:
    """The looser of the tolerances of the recording (manifest) and of the replaying engine."""
    current = tolerance_for(engine.info.device, engine.info.dtype)
    model = session.manifest.get("model")
    if not isinstance(model, dict):
        return current
    return current.looser(tolerance_for(str(model.get("device")), str(model.get("dtype"))))


@dataclass(frozen=True)
class StepResult:
    """One replayed step. `recorded`/`recomputed` are one-line summaries; the dicts hold the numbers."""

    seq: int
    kind: str
    recorded: str
    recomputed: str
    matches: bool
    detail: str = ""
    line: int = 0
    recorded_data: dict[str, Any] = field(default_factory=dict)
    recomputed_data: dict[str, Any] | None = None
    recorded_short: str = ""  # the few words a narrow column shows (top-1 | metric for runs)
    recomputed_short: str = ""
    recorded_summary: Summary | None = None
    recomputed_summary: Summary | None = None
    seconds: float = 0.0  # how long the replayed step took

    @property
    def status(self) -> str:
        return "ok" if self.matches else ("ERROR" if self.recomputed_data is None else "DRIFT")


def count_steps(session: Session, select: Callable[[Event], bool] | None = None) -> int:
    """How many pieces of work replay runs (those `select` keeps)."""
    return sum(1 for event in session.work() if select is None or select(event))


def replay(session: Session, engine: Any, on_step: Callable[[StepResult], object] | None = None,
           should_stop: Callable[[], bool] | None = None,
           tolerance: Tolerance | None = None, select: Callable[[Event], bool] | None = None,
           on_start: Callable[[Event], object] | None = None) -> list[StepResult]:
    """Re-run every piece of work `session` recorded on `engine`; one StepResult per step.

    `select` keeps only some work events (vectors and reference prompts are applied whatever it
    says, so the kept steps run as they were recorded); `on_start` hears of each step before it runs.
    A step that fails (an intervention that does not fit this model...) is a failed step, not an
    exception. `should_stop` is checked between steps and passed to the engine; when it fires the
    engine raises `Cancelled`, which propagates.
    """
    from mechscope.engine.errors import Cancelled, MechscopeError

    tolerance = tolerance or session_tolerance(session, engine)
    saved_vectors = dict(engine.vectors)
    saved_reference = list(engine.reference_prompts)
    steps: list[StepResult] = []
    try:
        for event in session.events:
            if should_stop is not None and should_stop():
                raise Cancelled("replay stopped")
            step: StepResult | None
            if event.kind in ("vector", "reference_prompts"):
                step = _apply_setting(session, engine, event)
            elif work_kind(event) is not None and (select is None or select(event)):
                if on_start is not None:
                    on_start(event)
                step = replay_step(session, engine, event, tolerance, should_stop)
            else:
                step = None
            if step is not None:
                steps.append(step)
                if on_step is not None:
                    on_step(step)
    finally:
        # Through the engine's methods, so a remote engine's server gets its own vectors back too.
        for name in set(engine.vectors) - set(saved_vectors):
            engine.remove_vector(name)
        for name, vector in saved_vectors.items():
            engine.add_vector(name, vector)
        if list(engine.reference_prompts) != saved_reference:
            with contextlib.suppress(MechscopeError):  # a server refuses an empty set: it keeps the replay's
                engine.reference_prompts = saved_reference
    return steps


def replay_step(session: Session, engine: Any, event: Event, tolerance: Tolerance,
                should_stop: Callable[[], bool] | None = None) -> StepResult:
    """Read one work event's request, execute it and compare its outcome with the recorded one."""
    from mechscope.engine.errors import Cancelled

    kind = str(work_kind(event))
    try:
        request, recorded = session.outcome(event)
        handler = handler_for(request)
        kind = request.kind
        recorded_line, recorded_short = handler.describe(recorded), handler.short(recorded)
    except Exception as exc:  # a record this version cannot read as a request is a failed step
        return StepResult(event.seq, kind, "-", "-", False, f"error: {_one_line(exc)}", event.line,
                          {}, None)

    def failed(message: str, seconds: float = 0.0) -> StepResult:
        return StepResult(event.seq, kind, recorded_line, "-", False, f"error: {message}", event.line,
                          recorded.data, None, recorded_short, "-", recorded, None, seconds)

    try:
        to_run = handler.for_replay(engine, request, recorded)
    except Exception as exc:  # a request that cannot run here (past the context...) fails the step
        return failed(_one_line(exc))
    outcome = execute(engine, to_run, should_stop=should_stop)
    if outcome.cancelled:
        raise Cancelled("replay stopped")
    if not outcome.ok:
        return failed(str(outcome.error), outcome.seconds)
    try:
        recomputed = handler.summarise(outcome.result)
        problems = handler.compare(recorded, recomputed, tolerance)
    except Exception as exc:  # a recorded summary of the wrong shape: the step cannot match
        return failed(f"cannot compare: {_one_line(exc)}", outcome.seconds)
    return StepResult(event.seq, kind, recorded_line, handler.describe(recomputed), not problems,
                      "; ".join(problems), event.line, recorded.data, recomputed.data, recorded_short,
                      handler.short(recomputed), recorded, recomputed, outcome.seconds)


def _apply_setting(session: Session, engine: Any, event: Event) -> StepResult | None:
    """Load a vector or reference prompts into the engine; a failed step if this engine refuses them."""
    from mechscope.engine.errors import MechscopeError

    try:
        if event.kind == "vector":
            engine.add_vector(event["name"], session.tensor(event))
        else:
            engine.set_reference_prompts(event["prompts"])
        return None
    except MechscopeError as exc:
        label = (f"vector {event['name']!r} [{event['shape'][0]}]" if event.kind == "vector"
                 else f"{len(event['prompts'])} reference prompts")
        return StepResult(event.seq, event.kind, label, "-", False, f"error: {_one_line(exc)}",
                          event.line, {}, None, label, "-")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
