"""The intervention list as the user edits it: the stack, the patches that follow the corrupted prompt,
and the edits waiting for the engine's dry run.

Each command changes the list, records the change and returns the live run it calls for (or the
`ValidateRequest` an edit waits on), through the Workbench that holds this part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechscope.engine.interventions import (
    ActivationPatch,
    AttentionKnockout,
    HeadAblation,
    Intervention,
    SteeringVector,
)
from mechscope.requests.kinds import Outcome, Request, RunRequest, ValidateRequest
from mechscope.workbench.stack import Change, Entry, InterventionStack

if TYPE_CHECKING:
    from mechscope.workbench.controller import Workbench


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


class InterventionEdits:
    """The Workbench's intervention list: what it holds, how it reads, and the commands that edit it."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.stack = InterventionStack()
        self.follows: set[int] = set()  # ids of patches whose source is the corrupted prompt
        self._checks: list[_Check] = []

    # -- what the list runs as ------------------------------------------------------------------

    def resolved(self, entry: Entry) -> Intervention:
        """The intervention an entry runs as: a following patch takes the corrupted prompt now."""
        intervention = entry.intervention
        if entry.id in self.follows and isinstance(intervention, ActivationPatch):
            return dataclasses.replace(intervention, source_prompt=self.bench.inputs.corrupted)
        return intervention

    def resolved_entries(self) -> tuple[Entry, ...]:
        return tuple(Entry(e.id, self.resolved(e)) for e in self.stack.entries)

    def interventions(self) -> tuple[Intervention, ...]:
        """The enabled interventions, resolved, in list order."""
        return tuple(iv for e in self.stack.entries if (iv := self.resolved(e)).enabled)

    def label(self, entry: Entry) -> str:
        """An entry as the list shows it: a patch says where its source comes from."""
        intervention = self.resolved(entry)
        label = intervention.label + positions_note(intervention)
        if getattr(intervention, "mode", None) == "mean":  # the label says what the mean is over
            label += f" ({self.bench.sets.mean_origin(short=True)})"
        if isinstance(intervention, ActivationPatch):
            if entry.id in self.follows:
                return f"{label} ← corrupted"
            source = intervention.source_prompt
            return f"{label} ← pinned {source[:24]!r}" + ("…" if len(source) > 24 else "")
        return label

    def list_label(self, entry: Entry) -> str:
        """An entry as the interventions list shows it: a steering vector adds its norm beside the residual's."""
        intervention = self.resolved(entry)
        note = self.bench.vectors.note(intervention) if isinstance(intervention, SteeringVector) else ""
        return self.label(entry) + note

    def knockout_marks(self, layer: int, head: int) -> dict[tuple[int, int], str]:
        """(query, key) -> mark for the enabled knockouts on one head."""
        return {(iv.query_pos, iv.key_pos): "×" for iv in self.interventions()
                if isinstance(iv, AttentionKnockout) and (iv.layer, iv.head) == (layer, head)}

    # -- commands ---------------------------------------------------------------------------------

    def _changed(self, changes: list[Change] | None) -> RunRequest | None:
        if not changes:
            return None
        self.bench.recorder.changes(changes)
        return self.bench.next_run()

    def toggle_head(self, make: Intervention, follows: bool = False) -> RunRequest | None:
        before = {e.id for e in self.stack.entries}
        changes = self.stack.toggle_head(make)
        for change in changes:
            if follows and change.action == "added" and change.id not in before:
                self.follows.add(change.id)
        return self._changed(changes)

    def ablate(self, mode: str) -> RunRequest | None:
        bench = self.bench
        if bench.selected is None:
            return None
        if mode == "resample" and not bench.inputs.corrupted.strip():
            bench.error = "resample ablation needs a corrupted prompt"
            return None
        return self.toggle_head(HeadAblation(*bench.selected, mode=mode))  # type: ignore[arg-type]

    def patch_selected(self) -> RunRequest | None:
        """`p`: patch the selected head from the corrupted prompt, following later edits of it."""
        bench = self.bench
        if bench.selected is None:
            return None
        if not bench.inputs.corrupted.strip():
            bench.error = "p patches from the corrupted prompt: type one first"
            return None
        layer, head = bench.selected
        patch = ActivationPatch(f"L{layer}.H{head}", bench.inputs.corrupted)
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
                and intervention.source_prompt == self.bench.inputs.corrupted
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
            self.bench.info = "no interventions to remove"
        return self._changed(changes)

    def undo(self) -> RunRequest | None:
        bench = self.bench
        changes = self.stack.undo()
        if changes is None:
            bench.error = "nothing to undo"
            return None
        bench.error = None
        bench.info = "undone"
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
        inputs = self.bench.inputs
        if not inputs.clean.strip() or not intervention.enabled:
            return None
        others = tuple(self.resolved(e) for e in self.stack.entries
                       if e.intervention.enabled and e.id != replace_id)
        return ValidateRequest(inputs.clean, inputs.corrupted or None, (*others, intervention))

    def _apply(self, intervention: Intervention, replace_id: int | None, toggle: bool,
               follows: bool) -> RunRequest | None:
        if replace_id is not None:
            return self.replace(replace_id, intervention, follows or None)
        if toggle:
            return self.toggle_head(intervention)
        return self.add(intervention)

    def toggle_feature_ablation(self) -> Request | None:
        """Ablate the features tab's selected feature at its selected token, or take that ablation away."""
        ablation = self.bench.features.edit("ablate")
        if ablation is None:
            self.bench.error = "no feature selected: read an SAE's features first (features tab)"
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

    def toggle_knockout(self, layer: int, head: int, query: int, key: int) -> Request | None:
        knockout = AttentionKnockout(layer, head, query, key)
        if knockout in self.interventions():
            return self.toggle_head(knockout)  # switching it off needs no check
        return self.propose(knockout, toggle=True)

    # -- outcomes and sessions ------------------------------------------------------------------

    def accept_check(self, outcome: Outcome) -> RunRequest | None:
        """A dry run's outcome: the edit it checked applies, or the error line says why not."""
        request = outcome.request
        check = next((c for c in self._checks if c.request is request), None)
        if check is None:
            return None
        self._checks.remove(check)
        if not outcome.ok:
            if outcome.error:
                prefix = "not added" if check.replace_id is None else "not changed"
                self.bench.error = f"{prefix}: {outcome.error}"
            return None
        if check.replace_id is not None and self.stack.get(check.replace_id) is None:
            return None  # deleted while it was being checked
        self.bench.error = None
        return self._apply(check.intervention, check.replace_id, check.toggle, check.follows)

    def sync_followers(self) -> None:
        """Record a following patch's new source before a run that used it, so the log's list is what ran."""
        recorder = self.bench.recorder
        changes = []
        for entry in self.stack.entries:
            if entry.id not in self.follows:
                continue
            resolved = self.resolved(entry)
            if recorder.recorded_intervention(entry.id) not in (None, resolved):
                changes.append(Change("changed", entry.id, resolved))
        if changes:
            recorder.changes(changes)

    def restore(self, interventions: list[tuple[int, Intervention]], corrupted: str | None) -> None:
        """A resumed session's list (recorded already); a head patch from the corrupted prompt follows
        it, as `p` made it."""
        self.stack = InterventionStack(Entry(int(i), iv) for i, iv in interventions)
        self.stack.next_id = max(self.stack.next_id, self.bench.recorder.used_intervention_ids() + 1)
        self.follows = {i for i, iv in interventions if isinstance(iv, ActivationPatch)
                        and iv.source_prompt == (corrupted or "") and iv.positions is None}
