"""The Workbench controller: owns the inputs and the live run, and holds the parts that own the
intervention list, sweeps, generation, the pin, steering vectors, the prompt set and features.

Commands update state and return the request to run next (or None). `accept(outcome)` stores an
outcome and records exactly the request it carries; an outcome whose request no longer matches the
inputs (the user typed while it ran) is not shown as current and not recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from mechscope.engine.interventions import (
    Intervention,
)
from mechscope.engine.metric import Metric
from mechscope.engine.results import RunResult
from mechscope.engine.views import Views
from mechscope.requests.kinds import (
    AddVectorRequest,
    BuildVectorRequest,
    FeatureActivationsRequest,
    FeatureAttributionRequest,
    FeatureCardRequest,
    GenerateRequest,
    Outcome,
    PathSweepRequest,
    ReferencePromptsRequest,
    Request,
    RunRequest,
    SweepRequest,
    ValidateRequest,
)
from mechscope.workbench.feature_attribution import FeatureAttributionState
from mechscope.workbench.features import FeatureTab
from mechscope.workbench.generation import Generations
from mechscope.workbench.intervention_edits import InterventionEdits
from mechscope.workbench.pin import PinnedRun
from mechscope.workbench.recorder import SessionRecorder
from mechscope.workbench.sets import PromptSets
from mechscope.workbench.state import Generation, GenerationSettings, Inputs, Lane, SweepState
from mechscope.workbench.sweeps import Sweeps
from mechscope.workbench.typed_values import check_position, parse_position, parse_reference_prompts
from mechscope.workbench.vectors import SteeringVectors

__all__ = ["Generation", "GenerationSettings", "Inputs", "Lane", "SweepState", "Workbench"]

class Workbench:
    """The UI-free state of one workbench; the TUI renders it and runs the requests it returns."""

    def __init__(self, inputs: Inputs, recorder: SessionRecorder | None = None, *, top_k: int = 10,
                 generation: GenerationSettings | None = None) -> None:
        self.inputs = inputs
        self.recorder = recorder or SessionRecorder()
        self.edits = InterventionEdits(self)  # the intervention list and the edits waiting for a dry run
        self.recorder.current = self.edits.resolved_entries
        self.top_k = top_k
        self.selected: tuple[int, int] | None = None
        self.run: Outcome | None = None  # the latest shown run (its request and result)
        self.run_error: str | None = None  # the latest run failed: `run` is the last good one
        self.attention: dict[str, tuple[np.ndarray, list[str]]] = {}  # address -> ([query, key], tokens)
        self.error: str | None = None  # one line for the status bar, cleared by the next success
        self.info = ""
        self._issued_run: RunRequest | None = None
        self._issued_attention: RunRequest | None = None
        self.metric_position = -1  # the token the metric reads (-1: the last)
        self.reference_prompts: tuple[str, ...] | None = None  # what mean ablations average over (None: the engine's)
        self.sweeps = Sweeps(self)  # the latest sweep of each kind and the scale grids show
        self.generations = Generations(self, generation)
        self.pinned = PinnedRun(self)  # the run deltas are shown against
        self.vectors = SteeringVectors(self)
        self.sets = PromptSets(self)  # the prompt set and its set-level results
        self.features = FeatureTab(self)  # the SAE folder the features tab reads, its latest outcome
        self.feature_attribution = FeatureAttributionState(self)  # which features move the metric
        # What each request type's outcome does to this state (and what it records): the only
        # place outcomes are told apart, by the type of the request they carry.
        self._acceptors: dict[type, Callable[[Outcome], Request | None]] = {
            RunRequest: self._accept_run, SweepRequest: self.sweeps.accept, PathSweepRequest: self.sweeps.accept,
            GenerateRequest: self.generations.accept, ValidateRequest: self.edits.accept_check,
            ReferencePromptsRequest: self._accept_reference, BuildVectorRequest: self.vectors.accept,
            AddVectorRequest: self.vectors.accept, FeatureActivationsRequest: self.features.accept,
            FeatureCardRequest: self.features.accept_card,
            FeatureAttributionRequest: self.feature_attribution.accept,
            **dict.fromkeys(self.sets.request_types(), self.sets.accept),
        }
        # How an outcome read back from a session is shown again (nothing is recorded).
        self._restorers: dict[type, Callable[[Outcome], None]] = {
            SweepRequest: self.sweeps.restore, PathSweepRequest: self.sweeps.restore,
            FeatureActivationsRequest: self.features.restore, FeatureCardRequest: self.features.restore_card,
            FeatureAttributionRequest: self.feature_attribution.restore, **self.sets.restorers(),
        }

    # -- derived state --------------------------------------------------------------------------

    @property
    def result(self) -> RunResult | None:
        return None if self.run is None else self.run.result

    def metric(self) -> Metric | None:
        """The inputs' metric, read at the chosen position."""
        metric = self.inputs.metric()[0]
        if metric is None or metric.position == self.metric_position:
            return metric
        return dataclasses.replace(metric, position=self.metric_position)

    def interventions(self) -> tuple[Intervention, ...]:
        """The enabled interventions, resolved, in list order: what the next request carries."""
        return self.edits.interventions()

    def n_tokens(self) -> int | None:
        """Tokens of the clean prompt, when the shown run is of it."""
        result = self.result
        if result is None or result.prompt != self.inputs.clean:
            return None
        return len(result.tokens)

    def is_current(self, request: RunRequest) -> bool:
        """The request was built from the inputs and interventions as they are now."""
        return (request.prompt == self.inputs.clean
                and request.corrupted == (self.inputs.corrupted or None)
                and request.metric == self.metric()
                and request.interventions == self.interventions()
                and request.top_k == self.top_k)

    @property
    def result_is_current(self) -> bool:
        return self.run is not None and self.run_error is None \
            and self.is_current(cast(RunRequest, self.run.request))

    # -- inputs ---------------------------------------------------------------------------------

    def edit(self, inputs: Inputs) -> None:
        """The user is typing: from now on runs of the old inputs are superseded; `next_run` runs
        the new ones once the typing pauses."""
        self.inputs = inputs

    def set_inputs(self, inputs: Inputs) -> RunRequest | None:
        """The user edited an input and it should run now."""
        self.edit(inputs)
        return self.next_run()

    def select(self, layer: int, head: int) -> None:
        self.selected = (layer, head)

    def views(self) -> Views:
        attention = () if self.selected is None else (f"L{self.selected[0]}.H{self.selected[1]}",)
        return Views(attention=attention, sinks=True, logit_lens=True,
                     attribution=self.metric() is not None, stats=True)

    def run_request(self) -> RunRequest:
        return RunRequest(prompt=self.inputs.clean, corrupted=self.inputs.corrupted or None,
                          metric=self.metric(), interventions=self.interventions(),
                          views=self.views(), top_k=self.top_k)

    def next_run(self) -> RunRequest | None:
        """The live run for the current state; None for an empty prompt or one already issued."""
        if not self.inputs.clean.strip():
            self._issued_run = None
            return None
        request = self.run_request()
        if request == self._issued_run:
            return None
        self._issued_run = request
        return request

    def invalidate(self) -> None:
        """Inputs the requests do not show changed (a vector's values): the next run is issued anew."""
        self._issued_run = None

    def attention_request(self) -> RunRequest | None:
        """A light run for the selected head's pattern (the cursor moved to a head not in the result)."""
        if self.selected is None or not self.inputs.clean.strip():
            return None
        address = f"L{self.selected[0]}.H{self.selected[1]}"
        self._issued_attention = RunRequest(prompt=self.inputs.clean, corrupted=self.inputs.corrupted or None,
                                            interventions=self.interventions(),
                                            views=Views(attention=(address,)), top_k=1)
        return self._issued_attention

    def set_metric_position(self, text: str) -> RunRequest | None:
        """`-1` (last token) or any position of the prompt; an error (and no run) otherwise."""
        problem = self.position_error(text)
        if problem:
            self.error = problem
            return None
        position = parse_position(text)
        self.metric_position = position
        self.error = None
        self.info = "metric at the last token" if position == -1 else f"metric at position {position}"
        return self.next_run()

    def position_error(self, text: str) -> str | None:
        """For a dialog: the error `set_metric_position` would give, without changing anything."""
        try:
            position = parse_position(text)
        except ValueError as exc:
            return str(exc)
        return check_position(position, self.n_tokens())

    def set_reference_prompts(self, text: str) -> ReferencePromptsRequest | None:
        """The request that makes mean ablations average over these prompts (one per line)."""
        try:
            prompts = parse_reference_prompts(text)
        except ValueError as exc:
            self.error = str(exc)
            return None
        self.error = None
        return ReferencePromptsRequest(prompts)

    # -- outcomes -------------------------------------------------------------------------------

    def accept(self, outcome: Outcome) -> Request | None:
        """Store an outcome and record exactly its request; returns the request to run next, if any."""
        acceptor = self._acceptors.get(type(outcome.request))
        if acceptor is None:
            return None
        earlier = self.error
        follow_up = acceptor(outcome)
        if outcome.ok and self.error is earlier and self.run_error is None \
                and not self.is_attention_request(outcome.request):
            self.error = None  # work that succeeded clears an earlier error line (a failed run's stays)
        return follow_up

    def _accept_reference(self, outcome: Outcome) -> RunRequest | None:
        request = cast(ReferencePromptsRequest, outcome.request)
        if not outcome.ok:
            self.error = None if outcome.cancelled else f"reference prompts not set: {outcome.error}"
            return None
        self.reference_prompts = request.prompts
        self.recorder.reference_prompts(request.prompts)
        self.info = f"mean ablation now averages over {self.sets.mean_origin()}"
        self.invalidate()  # mean ablations changed: the same inputs run again
        return self.next_run()

    def is_attention_request(self, request: Request) -> bool:
        """The light run `attention_request` made (its outcome fills `attention`, never `run`)."""
        views: Views | None = getattr(request, "views", None)
        return request is self._issued_attention or (
            views is not None and getattr(request, "top_k", None) == 1 and not views.logit_lens
            and len(views.attention) == 1)

    def _accept_run(self, outcome: Outcome) -> RunRequest | None:
        request = cast(RunRequest, outcome.request)
        if self.is_attention_request(request):
            if outcome.ok and self.is_attention_current(request):
                address = request.views.attention[0]
                result = outcome.result
                if address in result.attention:
                    self.attention[address] = (result.attention[address], result.tokens)
            elif outcome.error:
                self.error = f"attention failed: {outcome.error}"
            return None
        if outcome.cancelled or not self.is_current(request):
            return None  # superseded: the inputs changed while it ran
        if not outcome.ok:
            self.run_error = outcome.error
            self.error = f"run failed: {outcome.error}"
            self._issued_run = None  # the same inputs may be retried
            return None
        self.run = outcome
        self.run_error = None
        self.error = None
        self.attention = {}
        self.edits.sync_followers()
        self.recorder.prompt_and_metric(request.prompt, request.corrupted, request.metric)
        self.recorder.work(outcome, "run", keep=False)  # a later run supersedes a lost one
        return None

    def is_attention_current(self, request: RunRequest) -> bool:
        return request.prompt == self.inputs.clean and request.interventions == self.interventions() \
            and request.corrupted == (self.inputs.corrupted or None)

    # -- sessions ---------------------------------------------------------------------------------

    def restore(self, clean: str, corrupted: str | None, metric: Metric | None,
                interventions: list[tuple[int, Intervention]]) -> None:
        """Put a resumed session's prompts, metric and interventions back (recorded already)."""
        self.inputs = Inputs(clean, corrupted or "", metric.target if metric is not None else "",
                             (metric.foil or "") if metric is not None else "",
                             metric.kind if metric is not None else "logit_diff")
        self.metric_position = metric.position if metric is not None else -1
        self.edits.restore(interventions, corrupted)
        self.recorder.remember_state(clean, corrupted, metric, interventions)
        self.run = None
        self.run_error = None
        self.pinned.outcome = None
        self.sweeps.clear()
        self.generations.latest = None
        self._issued_run = None

    def restore_session(self, state: Any) -> None:
        """Put back everything a resumed session's state holds (`SessionState`): prompts, metric,
        interventions, steering norms, reference prompts, the prompt set and its row, and every
        outcome the session's handlers rebuilt (sweeps, set runs, set sweeps, estimates, detectors,
        massive activations). Nothing is recorded again."""
        self.restore(state.clean or "", state.corrupted, state.metric, list(state.interventions))
        for name, values in (state.vectors or {}).items():
            self.vectors.remember(name, values)
        if state.reference_prompts:
            self.reference_prompts = tuple(state.reference_prompts)
        self.sweeps.use_effect_scale(state.effect_scale)
        self.features.restore_labels(getattr(state, "feature_labels", None) or {})
        self.sets.restore(state.prompt_set)
        for outcome in state.outcomes:
            self.restore_outcome(outcome)

    def restore_outcome(self, outcome: Outcome) -> None:
        """Show a recorded outcome again (kinds that are not shown again are ignored)."""
        restorer = self._restorers.get(type(outcome.request))
        if restorer is not None and outcome.ok:
            restorer(outcome)

    def switch_recorder(self, recorder: SessionRecorder) -> None:
        self.recorder.close()
        self.recorder = recorder
        recorder.current = self.edits.resolved_entries
