"""A pinned run: the result deltas are shown against until it is unpinned (held by `Workbench.pinned`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from mechscope.engine.results import RunResult
from mechscope.requests.kinds import Outcome, RunRequest

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench


@dataclass(frozen=True)
class PinDeltas:
    """The current run against the pinned one: the metric change and each top token's probability change."""

    metric: float | None  # current - pinned (None when either has no metric or they read different ones)
    pinned_metric: float | None
    probs: tuple[float, ...]  # per top token of the current run: p(now) - p(pinned), in [0, 1] units
    same_prompt: bool


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits)  # [vocab]
    weights = np.exp(shifted)
    return weights / weights.sum()


def reads_the_same_metric(result: RunResult, pinned: RunResult) -> bool:
    """Both metrics are one quantity: the same kind of the same target and foil tokens, read at the
    same position (or each at its prompt's last token)."""
    now, then = result.metric_info, pinned.metric_info
    if now is None or then is None:
        return False
    both_last = now.position == len(result.tokens) - 1 and then.position == len(pinned.tokens) - 1
    return ((now.kind, now.target_ids, now.foil_ids) == (then.kind, then.target_ids, then.foil_ids)
            and (now.position == then.position or both_last))


def pin_deltas(result: RunResult, pinned: RunResult) -> PinDeltas:
    pinned_probs = softmax(pinned.logits)  # [vocab]
    probs = tuple(float(t.prob - pinned_probs[t.id]) for t in result.top)
    metric = None
    if reads_the_same_metric(result, pinned) and result.metric is not None and pinned.metric is not None:
        metric = float(result.metric - pinned.metric)
    return PinDeltas(metric, pinned.metric, probs, result.token_ids == pinned.token_ids)


class PinnedRun:
    """The run pinned as the baseline for deltas (`outcome`; None: deltas are against no interventions)."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.outcome: Outcome | None = None

    def pin(self) -> bool:
        """Pin the current result: deltas are shown against it until `unpin`."""
        bench = self.bench
        if bench.run is None or not bench.result_is_current:
            bench.error = "nothing to pin: wait for the current run to finish"
            return False
        self.outcome = bench.run
        bench.error = None
        count = len(cast(RunRequest, bench.run.request).interventions)
        bench.info = f"pinned this result ({count} intervention{'s' if count != 1 else ''}): Δ is now against the pin"
        return True

    def unpin(self) -> None:
        """Show deltas against the run without interventions again; an earlier error line gives way to saying so."""
        if self.outcome is None:
            self.bench.info = "nothing pinned"
            return
        self.bench.info = "unpinned: Δ is against no interventions"
        self.bench.error = None
        self.outcome = None

    def label(self) -> str:
        """How the pinned run reads in a pane's subtitle."""
        if self.outcome is None:
            return ""
        ivs = cast(RunRequest, self.outcome.request).interventions
        what = "no interventions" if not ivs else ", ".join(iv.label for iv in ivs[:2]) + (
            f" +{len(ivs) - 2}" if len(ivs) > 2 else "")
        return f"Δ vs PINNED ({what})"

    def deltas(self) -> PinDeltas | None:
        """The current result against the pinned one; None when either is missing."""
        result = self.bench.result
        if self.outcome is None or result is None:
            return None
        return pin_deltas(result, self.outcome.result)
