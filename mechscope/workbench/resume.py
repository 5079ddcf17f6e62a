"""A resumed session's sweeps, read back from its record (read-only), for the grid."""

from __future__ import annotations

from typing import Any, Protocol, cast

from mechscope.requests.kinds import Outcome, SweepRequest
from mechscope.workbench.state import SweepState


class RecordedSession(Protocol):
    def restored_outcomes(self) -> Any: ...


def recorded_sweeps(session: RecordedSession | None) -> dict[str, SweepState]:
    """The latest recorded sweep of each kind, as the state a finished sweep leaves (kind -> state).

    A sweep whose record cannot be read back is skipped: the grid then says "not computed".
    (`Workbench.restore_session` puts these back together with everything else a session holds.)"""
    sweeps: dict[str, SweepState] = {}
    if session is None:
        return sweeps
    for outcome in cast(list[Outcome], list(session.restored_outcomes())):
        if outcome.request.kind == SweepRequest.kind:
            request = cast(SweepRequest, outcome.request)
            sweeps[request.sweep_kind] = SweepState(request, outcome.result, done=True)
    return sweeps
