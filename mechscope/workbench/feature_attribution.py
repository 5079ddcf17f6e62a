"""The features tab's attribution: which SAE features of the clean prompt move the metric (the latest
`FeatureAttributionRequest` and its outcome)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from mechscope.engine.features.results import FeatureAttribution
from mechscope.requests.kinds import FeatureAttributionRequest, Outcome
from mechscope.workbench.features import Picked

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench

TOP_N = 20  # candidates the table lists
VERIFY = 10  # of which ablated exactly


class FeatureAttributionState:
    """The attribution last asked for (`issued`), the outcome shown, and one line when it failed."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.issued: FeatureAttributionRequest | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None

    def request(self) -> FeatureAttributionRequest | None:
        """Attribute the current metric on the clean prompt, with the active interventions, to the
        features of the tab's SAE; None (and `error`) without a folder, a prompt or a metric."""
        bench = self.bench
        folder = bench.features.folder
        metric = bench.metric()
        if folder is None:
            self.error = "feature attribution needs an SAE: choose its folder first"
        elif not bench.inputs.clean.strip():
            self.error = "feature attribution needs a prompt"
        elif metric is None or not metric.measurable:
            self.error = bench.inputs.metric()[1] or "feature attribution needs a metric with a target token"
        else:
            self.error = None
            self.issued = FeatureAttributionRequest(bench.inputs.clean, folder, None, metric, bench.interventions(),
                                                    TOP_N, VERIFY, bench.inputs.corrupted or None)
            return self.issued
        return None

    def accept(self, outcome: Outcome) -> None:
        """Keep and record the outcome of the last request issued; an older one is dropped, and a
        stopped one leaves the table shown as it was."""
        if outcome.request != self.issued or outcome.cancelled:
            return
        self.outcome = outcome
        if outcome.ok:
            self.error = None
            self.bench.recorder.work(outcome, "feature attribution")
        else:
            self.error = f"feature attribution failed: {outcome.error}"

    def restore(self, outcome: Outcome) -> None:
        self.issued = cast(FeatureAttributionRequest, outcome.request)
        self.outcome = outcome

    @property
    def result(self) -> FeatureAttribution | None:
        outcome = self.outcome
        return outcome.result if outcome is not None and outcome.ok else None

    def unpickable(self) -> str | None:
        """Why no row of the table can be picked now (no table, or one read on another prompt or
        SAE, so its tokens and features are not the tab's), None when one can."""
        result, outcome = self.result, self.outcome
        if result is None or outcome is None:
            return "no feature attribution shown: run it first"
        request = cast(FeatureAttributionRequest, outcome.request)
        if request.prompt != self.bench.inputs.clean or request.sae_folder != self.bench.features.folder:
            return "the attribution shown ran on another prompt or SAE: run it again"
        return None if len(result.features) else "the attribution lists no feature"

    def row(self, text: str) -> Picked:
        """The table's row numbered `text`; ValueError saying why there is none."""
        problem, result, outcome = self.unpickable(), self.result, self.outcome
        if problem is not None or result is None or outcome is None:
            raise ValueError(problem)
        rows = len(result.features)
        try:
            rank = int(text.strip())
        except ValueError:
            raise ValueError(f"a row number, 1..{rows}; got {text.strip()!r}") from None
        if not 1 <= rank <= rows:
            raise ValueError(f"a row number, 1..{rows}; got {rank}")
        return Picked(cast(FeatureAttributionRequest, outcome.request).prompt, int(result.positions[rank - 1]),
                      int(result.features[rank - 1]), float(result.activations[rank - 1]))

    def staleness(self) -> str | None:
        """None when the attribution shown ran on the current inputs, else what changed since."""
        if self.outcome is None:
            return None
        request = cast(FeatureAttributionRequest, self.outcome.request)
        bench = self.bench
        changed = [what for what, differs in (
            ("prompt", request.prompt != bench.inputs.clean),
            ("metric", request.metric != bench.metric()),
            ("interventions", request.interventions != bench.interventions()),
            ("SAE", request.sae_folder != bench.features.folder)) if differs]
        return f"{', '.join(changed)} changed since" if changed else None
