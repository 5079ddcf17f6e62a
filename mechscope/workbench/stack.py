"""The workbench's intervention list with stable ids and an undo history (pure data, no widgets)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mechscope.engine.interventions import HeadAblation, HeadScale, Intervention


@dataclass(frozen=True)
class Entry:
    """One intervention in the list; `id` stays the same through edits and toggles."""

    id: int
    intervention: Intervention


@dataclass(frozen=True)
class Change:
    """One recorded edit: what a session event needs (action added|changed|toggled|removed)."""

    action: str
    id: int
    intervention: Intervention | None = None
    enabled: bool | None = None


def diff_entries(before: tuple[Entry, ...], after: tuple[Entry, ...]) -> list[Change]:
    """The changes that turn `before` into `after`, in a replayable order."""
    old = {e.id: e.intervention for e in before}
    new = {e.id: e.intervention for e in after}
    changes: list[Change] = []
    for entry_id in old:
        if entry_id not in new:
            changes.append(Change("removed", entry_id))
    for entry_id, intervention in new.items():
        if entry_id not in old:
            changes.append(Change("added", entry_id, intervention))
        elif old[entry_id] != intervention:
            if old[entry_id].with_enabled(intervention.enabled) == intervention:
                changes.append(Change("toggled", entry_id, enabled=intervention.enabled))
            else:
                changes.append(Change("changed", entry_id, intervention))
    return changes


def head_of(intervention: Intervention) -> tuple[int, int] | None:
    """The (layer, head) an intervention targets, if it targets a single head."""
    head = getattr(intervention, "head", None)
    if head is not None and hasattr(intervention, "layer"):
        return int(intervention.layer), int(head)
    address = getattr(intervention, "address", None)
    if isinstance(address, str):
        from mechscope.engine.addresses import parse_address

        parsed = parse_address(address)
        if parsed.site == "head":
            return parsed.layer, int(parsed.head)  # type: ignore[arg-type]
    return None


def head_mark(intervention: Intervention) -> str:
    """One character marking a head on the grid: x zero, m mean, r resample, s scale, p patch, k knockout."""
    if isinstance(intervention, HeadAblation):
        return {"zero": "x", "mean": "m", "resample": "r"}[intervention.mode]
    if isinstance(intervention, HeadScale):
        return "s"
    return {"activation_patch": "p", "attention_knockout": "k"}.get(intervention.kind, "*")


def layer_of(intervention: Intervention) -> int | None:
    """The layer of an intervention that acts on a whole layer (attn, mlp, neuron, residual), else None."""
    if head_of(intervention) is not None:
        return None
    try:
        return int(intervention.start_layer)
    except (AttributeError, ValueError):
        return None


class InterventionStack:
    """The current interventions plus every earlier version of the list, for undo."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.history: list[tuple[Entry, ...]] = []
        self.next_id = max((e.id for e in self.entries), default=0) + 1

    def enabled(self) -> list[Intervention]:
        """The interventions a run applies, in list order."""
        return [e.intervention for e in self.entries if e.intervention.enabled]

    def get(self, entry_id: int) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def _commit(self, entries: tuple[Entry, ...]) -> list[Change]:
        changes = diff_entries(self.entries, entries)
        if changes:
            self.history.append(self.entries)
            self.entries = entries
        return changes

    def add(self, intervention: Intervention) -> list[Change]:
        entry = Entry(self.next_id, intervention)
        self.next_id += 1
        return self._commit((*self.entries, entry))

    def replace(self, entry_id: int, intervention: Intervention) -> list[Change]:
        return self._commit(tuple(
            Entry(e.id, intervention) if e.id == entry_id else e for e in self.entries))

    def set_enabled(self, entry_id: int, enabled: bool) -> list[Change]:
        return self._commit(tuple(
            Entry(e.id, e.intervention.with_enabled(enabled)) if e.id == entry_id else e
            for e in self.entries))

    def remove(self, entry_id: int) -> list[Change]:
        return self._commit(tuple(e for e in self.entries if e.id != entry_id))

    def clear(self) -> list[Change]:
        return self._commit(())

    def undo(self) -> list[Change] | None:
        """Go back one change; None when there is nothing to undo."""
        if not self.history:
            return None
        previous = self.history.pop()
        changes = diff_entries(self.entries, previous)
        self.entries = previous
        return changes

    def on_head(self, layer: int, head: int) -> list[Entry]:
        return [e for e in self.entries if head_of(e.intervention) == (layer, head)]

    def on_layer(self, layer: int) -> list[Entry]:
        """Interventions on layer `layer` as a whole (not on one of its heads)."""
        return [e for e in self.entries if layer_of(e.intervention) == layer]

    def toggle_head(self, make: Intervention) -> list[Change]:
        """Space/m on the grid: remove an identical intervention on the head, else add it enabled.

        An existing, disabled twin is re-enabled rather than duplicated; an ablation with another
        mode on the same head is changed to this one.
        """
        target = head_of(make)
        for entry in self.entries:
            if head_of(entry.intervention) != target:
                continue
            if entry.intervention.with_enabled(True) == make.with_enabled(True):
                if entry.intervention.enabled:
                    return self.remove(entry.id)
                return self.set_enabled(entry.id, True)
        for entry in self.entries:
            # A different ablation mode on the same head replaces the old one: a head has one output.
            if (head_of(entry.intervention) == target and type(entry.intervention) is type(make)
                    and isinstance(make, HeadAblation)):
                return self.replace(entry.id, make.with_enabled(True))
        return self.add(make)

    def layer_marks(self) -> set[int]:
        """Layers with an enabled intervention on the layer as a whole (attn, mlp, neuron, residual)."""
        return {layer for e in self.entries if e.intervention.enabled
                and (layer := layer_of(e.intervention)) is not None}

    def head_marks(self) -> dict[tuple[int, int], str]:
        """(layer, head) -> the marks of every enabled intervention on that head, in list order, e.g.
        `ms` for mean + scale; past two, the first and `+` (the list and status line say the rest)."""
        marks: dict[tuple[int, int], str] = {}
        for entry in self.entries:
            if not entry.intervention.enabled:
                continue
            head = head_of(entry.intervention)
            if head is not None:
                mark = head_mark(entry.intervention)
                if mark not in marks.get(head, ""):
                    marks[head] = marks.get(head, "") + mark
        return {head: mark if len(mark) <= 2 else mark[0] + "+" for head, mark in marks.items()}
