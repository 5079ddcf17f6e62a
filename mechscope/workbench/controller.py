"""The Workbench controller: owns the inputs, the intervention stack, the live run and the parts that
hold sweeps, generation, the pin, steering vectors, the prompt set and features.

Commands update state and return the request to run next (or None). `accept(outcome)` stores an
outcome and records exactly the request it carries; an outcome whose request no longer matches the
inputs (the user typed while it ran) is not shown as current and not recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    HeadAblation,
    Intervention,
    SteeringVector,
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
from mechscope.workbench.pin import PinnedRun
from mechscope.workbench.recorder import SessionRecorder
from mechscope.workbench.sets import PromptSets
from mechscope.workbench.stack import Change, Entry, InterventionStack
from mechscope.workbench.state import Generation, GenerationSettings, Inputs, Lane, SweepState
from mechscope.workbench.sweeps import Sweeps
from mechscope.workbench.typed_values import check_position, parse_position, parse_reference_prompts
from mechscope.workbench.vectors import SteeringVectors

__all__ = ["Generation", "GenerationSettings", "Inputs", "Lane", "SweepState", "Workbench"]

@dataclass(frozen=True)
class _Check:
    """An intervention waiting for the engine's dry run, and what to do with it once accepted."""

    request: ValidateRequest
    intervention: Intervention
    replace_id: int | None
    toggle: bool
    follows: bool


def positions_note(intervention: Intervention) -> str:
    """` @3,4` or ` @last` when an intervention acts on some positions only ("" for all of them)."""
    positions = getattr(intervention, "positions", None)
    if positions is None or positions == "all":
        return ""
    if isinstance(positions, str):
        return f" @{positions}"
    return " @" + ",".join(str(p) for p in positions)


class Workbench:
    """The UI-free state of one workbench; the TUI renders it and runs the requests it returns."""

    def __init__(self, inputs: Inputs, recorder: SessionRecorder | None = None, *, top_k: int = 10,
                 generation: GenerationSettings | None = None) -> None:
        self.inputs = inputs
        self.recorder = recorder or SessionRecorder()
        self.recorder.current = self.resolved_entries
        self.stack = InterventionStack()
        self.follows: set[int] = set()  # ids of patches whose source is the corrupted prompt
        self.top_k = top_k
        self.selected: tuple[int, int] | None = None
        self.run: Outcome | None = None  # the latest shown run (its request and result)
        self.run_error: str | None = None  # the latest run failed: `run` is the last good one
        self.attention: dict[str, tuple[np.ndarray, list[str]]] = {}  # address -> ([query, key], tokens)
        self.error: str | None = None  # one line for the status bar, cleared by the next success
        self.info = ""
        self._issued_run: RunRequest | None = None
        self._issued_attention: RunRequest | None = None
        self._checks: list[_Check] = []
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
            GenerateRequest: self.generations.accept, ValidateRequest: self._accept_check,
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

    def n_tokens(self) -> int | None:
        """Tokens of the clean prompt, when the shown run is of it."""
        result = self.result
        if result is None or result.prompt != self.inputs.clean:
            return None
        return len(result.tokens)

    def resolved(self, entry: Entry) -> Intervention:
        """The intervention an entry runs as: a following patch takes the corrupted prompt now."""
        intervention = entry.intervention
        if entry.id in self.follows and isinstance(intervention, ActivationPatch):
            return dataclasses.replace(intervention, source_prompt=self.inputs.corrupted)
        return intervention

    def resolved_entries(self) -> tuple[Entry, ...]:
        return tuple(Entry(e.id, self.resolved(e)) for e in self.stack.entries)

    def interventions(self) -> tuple[Intervention, ...]:
        """The enabled interventions, resolved, in list order: what the next request carries."""
        return tuple(iv for e in self.stack.entries if (iv := self.resolved(e)).enabled)

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

    def label(self, entry: Entry) -> str:
        """An entry as the list shows it: a patch says where its source comes from."""
        intervention = self.resolved(entry)
        label = intervention.label + positions_note(intervention)
        if getattr(intervention, "mode", None) == "mean":  # the label says what the mean is over
            label += f" ({self.sets.mean_origin(short=True)})"
        if isinstance(intervention, ActivationPatch):
            if entry.id in self.follows:
                return f"{label} ← corrupted"
            source = intervention.source_prompt
            return f"{label} ← pinned {source[:24]!r}" + ("…" if len(source) > 24 else "")
        return label

    def list_label(self, entry: Entry) -> str:
        """An entry as the interventions list shows it: a steering vector adds its norm beside the residual's."""
        intervention = self.resolved(entry)
        note = self.vectors.note(intervention) if isinstance(intervention, SteeringVector) else ""
        return self.label(entry) + note

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

    # -- interventions --------------------------------------------------------------------------

    def _changed(self, changes: list[Change] | None) -> RunRequest | None:
        if not changes:
            return None
        self.recorder.changes(changes)
        return self.next_run()

    def toggle_head(self, make: Intervention, follows: bool = False) -> RunRequest | None:
        before = {e.id for e in self.stack.entries}
        changes = self.stack.toggle_head(make)
        for change in changes:
            if follows and change.action == "added" and change.id not in before:
                self.follows.add(change.id)
        return self._changed(changes)

    def ablate(self, mode: str) -> RunRequest | None:
        if self.selected is None:
            return None
        if mode == "resample" and not self.inputs.corrupted.strip():
            self.error = "resample ablation needs a corrupted prompt"
            return None
        return self.toggle_head(HeadAblation(*self.selected, mode=mode))  # type: ignore[arg-type]

    def patch_selected(self) -> RunRequest | None:
        """`p`: patch the selected head from the corrupted prompt, following later edits of it."""
        if self.selected is None:
            return None
        if not self.inputs.corrupted.strip():
            self.error = "p patches from the corrupted prompt: type one first"
            return None
        layer, head = self.selected
        patch = ActivationPatch(f"L{layer}.H{head}", self.inputs.corrupted)
        for entry in self.stack.on_head(layer, head):
            # The following twin of this patch, whatever source it was created with.
            if entry.id in self.follows and isinstance(entry.intervention, ActivationPatch) \
                    and entry.intervention.address == patch.address and entry.intervention.positions is None:
                if entry.intervention.enabled:
                    return self._changed(self.stack.remove(entry.id))
                return self._changed(self.stack.set_enabled(entry.id, True))
        return self.toggle_head(patch, follows=True)

    def add(self, intervention: Intervention) -> RunRequest | None:
        return self._changed(self.stack.add(intervention))

    def replace(self, entry_id: int, intervention: Intervention, follows: bool | None = None) -> RunRequest | None:
        """Replace an entry; an edited patch source pins it unless `follows` says otherwise."""
        entry = self.stack.get(entry_id)
        if entry is None:
            return None
        if follows is None:
            follows = entry_id in self.follows and isinstance(intervention, ActivationPatch) \
                and intervention.source_prompt == self.inputs.corrupted
        if follows:
            self.follows.add(entry_id)
        else:
            self.follows.discard(entry_id)
        return self._changed(self.stack.replace(entry_id, intervention))

    def set_enabled(self, entry_id: int, enabled: bool) -> RunRequest | None:
        return self._changed(self.stack.set_enabled(entry_id, enabled))

    def toggle(self, entry_id: int) -> RunRequest | None:
        entry = self.stack.get(entry_id)
        return None if entry is None else self.set_enabled(entry_id, not entry.intervention.enabled)

    def remove(self, entry_id: int) -> RunRequest | None:
        return self._changed(self.stack.remove(entry_id))

    def clear(self) -> RunRequest | None:
        changes = self.stack.clear()
        if not changes:
            self.info = "no interventions to remove"
        return self._changed(changes)

    def undo(self) -> RunRequest | None:
        changes = self.stack.undo()
        if changes is None:
            self.error = "nothing to undo"
            return None
        self.error = None
        self.info = "undone"
        return self._changed(changes)

    def propose(self, intervention: Intervention, replace_id: int | None = None, toggle: bool = False,
                follows: bool = False) -> Request | None:
        """Add (or replace `replace_id` with) an intervention once the engine's dry run accepts it.

        Returns the ValidateRequest to run (its accepted outcome applies the change), or, when there
        is nothing to check against (no prompt, a disabled intervention), applies it at once.
        """
        request = self.dry_run_request(intervention, replace_id)
        if request is None:
            return self._apply(intervention, replace_id, toggle, follows)
        self._checks.append(_Check(request, intervention, replace_id, toggle, follows))
        return request

    def dry_run_request(self, intervention: Intervention, replace_id: int | None = None) -> ValidateRequest | None:
        """The check `propose` would run for this edit, without queueing it (a dialog asks it first, so a
        value the engine refuses keeps the dialog open); None when there is nothing to check against."""
        if not self.inputs.clean.strip() or not intervention.enabled:
            return None
        others = tuple(self.resolved(e) for e in self.stack.entries
                       if e.intervention.enabled and e.id != replace_id)
        return ValidateRequest(self.inputs.clean, self.inputs.corrupted or None, (*others, intervention))

    def _apply(self, intervention: Intervention, replace_id: int | None, toggle: bool,
               follows: bool) -> RunRequest | None:
        if replace_id is not None:
            return self.replace(replace_id, intervention, follows or None)
        if toggle:
            return self.toggle_head(intervention)
        return self.add(intervention)

    def toggle_feature_ablation(self) -> Request | None:
        """Ablate the features tab's selected feature at its selected token, or take that ablation away."""
        ablation = self.features.edit("ablate")
        if ablation is None:
            self.error = "no feature selected: read an SAE's features first (features tab)"
            return None
        if ablation in self.interventions():
            return self.toggle_head(ablation)  # switching it off needs no check
        return self.propose(ablation, toggle=True)

    def set_feature_edit(self, edit: Intervention) -> RunRequest | None:
        """A clamp or steer of the selected feature (checked by the dialog): it replaces one of the same
        kind on the same feature and tokens, else it is added."""
        for entry in self.stack.entries:
            old = entry.intervention
            if type(old) is type(edit) and old.with_enabled(True) == dataclasses.replace(
                    edit, **{name: getattr(old, name) for name in ("value", "coeff") if hasattr(old, name)}):
                return self.replace(entry.id, edit)
        return self.add(edit)

    def knockout_marks(self, layer: int, head: int) -> dict[tuple[int, int], str]:
        """(query, key) -> mark for the enabled knockouts on one head."""
        return {(iv.query_pos, iv.key_pos): "×" for iv in self.interventions()
                if isinstance(iv, AttentionKnockout) and (iv.layer, iv.head) == (layer, head)}

    def toggle_knockout(self, layer: int, head: int, query: int, key: int) -> Request | None:
        knockout = AttentionKnockout(layer, head, query, key)
        if knockout in self.interventions():
            return self.toggle_head(knockout)  # switching it off needs no check
        return self.propose(knockout, toggle=True)

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
        self._sync_followers()
        self.recorder.prompt_and_metric(request.prompt, request.corrupted, request.metric)
        self.recorder.work(outcome, "run", keep=False)  # a later run supersedes a lost one
        return None

    def is_attention_current(self, request: RunRequest) -> bool:
        return request.prompt == self.inputs.clean and request.interventions == self.interventions() \
            and request.corrupted == (self.inputs.corrupted or None)

    def _sync_followers(self) -> None:
        """Record a following patch's new source before a run that used it, so the log's list is what ran."""
        changes = []
        for entry in self.stack.entries:
            if entry.id not in self.follows:
                continue
            resolved = self.resolved(entry)
            if self.recorder.recorded_intervention(entry.id) not in (None, resolved):
                changes.append(Change("changed", entry.id, resolved))
        if changes:
            self.recorder.changes(changes)

    def _accept_check(self, outcome: Outcome) -> RunRequest | None:
        request = outcome.request
        check = next((c for c in self._checks if c.request is request), None)
        if check is None:
            return None
        self._checks.remove(check)
        if not outcome.ok:
            if outcome.error:
                prefix = "not added" if check.replace_id is None else "not changed"
                self.error = f"{prefix}: {outcome.error}"
            return None
        if check.replace_id is not None and self.stack.get(check.replace_id) is None:
            return None  # deleted while it was being checked
        self.error = None
        return self._apply(check.intervention, check.replace_id, check.toggle, check.follows)

    # -- sessions ---------------------------------------------------------------------------------

    def restore(self, clean: str, corrupted: str | None, metric: Metric | None,
                interventions: list[tuple[int, Intervention]]) -> None:
        """Put a resumed session's prompts, metric and interventions back (recorded already)."""
        self.inputs = Inputs(clean, corrupted or "", metric.target if metric is not None else "",
                             (metric.foil or "") if metric is not None else "",
                             metric.kind if metric is not None else "logit_diff")
        self.metric_position = metric.position if metric is not None else -1
        self.stack = InterventionStack(Entry(int(i), iv) for i, iv in interventions)
        self.stack.next_id = max(self.stack.next_id, self.recorder.used_intervention_ids() + 1)
        # A head patch from the corrupted prompt follows it, as `p` made it.
        self.follows = {i for i, iv in interventions if isinstance(iv, ActivationPatch)
                        and iv.source_prompt == (corrupted or "") and iv.positions is None}
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
        recorder.current = self.resolved_entries
