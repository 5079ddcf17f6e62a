"""A resumed session's sweeps, read back from its events and tensors (read-only), for the grid."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from mechscope.engine.interventions import Intervention, Metric
from mechscope.engine.results import SweepResult
from mechscope.requests.kinds import SweepRequest
from mechscope.workbench.state import SweepState


class RecordedSession(Protocol):
    def __iter__(self) -> Any: ...
    def tensor(self, event: Any) -> np.ndarray: ...


def recorded_sweeps(session: RecordedSession | None) -> dict[str, SweepState]:
    """The latest recorded sweep of each kind, as the state a finished sweep leaves (kind -> state).

    A sweep whose matrix cannot be read back is skipped: the grid then says "not computed"."""
    sweeps: dict[str, SweepState] = {}
    if session is None:
        return sweeps
    events: Iterable[Any] = [event for event in session if event.kind == "sweep"]
    for event in events:
        try:
            values = np.asarray(session.tensor(event), dtype=np.float32)  # [layer, head] or [layer, pos]
            metric = Metric.from_dict(event["metric"])
            on_top = tuple(Intervention.from_dict(d) for d in event.get("interventions", None) or ())
            request = SweepRequest(event["sweep"], event["clean"], event["corrupt"], metric,
                                   event.get("direction", "noising"), on_top)
        except (KeyError, TypeError, ValueError):
            continue
        source = event.get("source_metric")
        result = SweepResult(event["sweep"], values, float(event["base_metric"]),
                             float("nan") if source is None else float(source),
                             [str(x) for x in event.get("row_labels", None) or range(values.shape[0])],
                             [str(x) for x in event.get("col_labels", None) or range(values.shape[1])],
                             bool(event["complete"]), 0.0)
        sweeps[request.sweep_kind] = SweepState(request, result, done=True)
    return sweeps
