"""Handlers of path patching: one sender into chosen receivers, and every sender into one receiver."""

from __future__ import annotations

from typing import Any

import numpy as np

from mechscope.engine.results import PathPatchResult, SweepResult
from mechscope.requests.kinds import PathPatchRequest, PathSweepRequest
from mechscope.requests.registry import (
    NUMBER,
    Handler,
    OnPartial,
    ShouldStop,
    Summary,
    handles,
    need,
)
from mechscope.requests.single import SweepHandler
from mechscope.requests.tolerance import Tolerance, metric_problems

_METRICS = ("base_metric", "patched_metric", "source_metric")


@handles(PathPatchRequest, needs=("sweep", "attention_inputs"))
class PathPatchHandler(Handler):
    """The three metrics (base, path patched, source) are what a session keeps."""

    def run(self, engine: Any, request: PathPatchRequest, on_partial: OnPartial | None,
            should_stop: ShouldStop | None) -> Any:
        on_top = {"interventions": request.interventions} if request.interventions else {}
        return engine.path_patch(request.sender, request.receivers, request.clean, request.corrupt,
                                 request.metric, direction=request.direction, should_stop=should_stop, **on_top)

    def summarise(self, result: Any) -> Summary:
        return Summary({"sender": str(result.sender), "receivers": [str(r) for r in result.receivers],
                        **{key: float(getattr(result, key)) for key in _METRICS}})

    def check(self, request: PathPatchRequest, summary: Summary) -> None:
        for key in _METRICS:
            need(summary.data, key, NUMBER, "a number")

    def compare(self, recorded: Summary, recomputed: Summary, tolerance: Tolerance) -> list[str]:
        problems: list[str] = []
        for key in _METRICS:
            problems += metric_problems(key.replace("_", " "), recorded.data[key], recomputed.data[key], tolerance)
        return problems

    def describe(self, summary: Summary) -> str:
        """`L9.H9 → 3 receivers: base +3.1000, patched +2.4000 (effect -0.7000), source -1.2000`."""
        data = summary.data
        receivers = data.get("receivers") or []
        into = receivers[0] if len(receivers) == 1 else f"{len(receivers)} receivers"
        effect = data["patched_metric"] - data["base_metric"]
        return (f"{data.get('sender', '?')} → {into}: base {data['base_metric']:+.4f}, patched "
                f"{data['patched_metric']:+.4f} (effect {effect:+.4f}), source {data['source_metric']:+.4f}")

    def restore(self, request: PathPatchRequest, summary: Summary) -> Any:
        data = summary.data
        return PathPatchResult(request.sender, tuple(request.receivers), float(data["base_metric"]),
                               float(data["patched_metric"]), float(data["source_metric"]))


@handles(PathSweepRequest, needs=("sweep", "attention_inputs"))
class PathSweepHandler(SweepHandler):
    """Kept, compared and shown like a head sweep: a [layer, head] grid (NaN from the receiver's layer on)."""

    def run(self, engine: Any, request: PathSweepRequest, on_partial: OnPartial | None,  # type: ignore[override]
            should_stop: ShouldStop | None) -> Any:
        on_top = {"interventions": request.interventions} if request.interventions else {}
        return engine.path_sweep(request.receiver, request.clean, request.corrupt, request.metric,
                                 direction=request.direction, on_progress=on_partial, should_stop=should_stop,
                                 **on_top)

    def needs_of(self, request: Any) -> tuple[str, ...]:
        return self.needs

    def restore_key(self, request: PathSweepRequest) -> str:  # type: ignore[override]
        return f"path sweep {request.receiver}"

    def restore(self, request: PathSweepRequest, summary: Summary) -> Any:  # type: ignore[override]
        values = np.asarray(summary.arrays["values"], dtype=np.float32)  # [layer, head]
        data = summary.data
        source = data.get("source_metric")
        return SweepResult("head", values, float(data["base_metric"]),
                           float("nan") if source is None else float(source),
                           [str(x) for x in data.get("row_labels") or range(values.shape[0])],
                           [str(x) for x in data.get("col_labels") or range(values.shape[1])],
                           bool(data.get("complete", True)), 0.0)
