"""What resuming a session restores: the state its events fold into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mechscope.sessions.events import Event, work_kind

if TYPE_CHECKING:
    from mechscope.engine.interventions import Intervention
    from mechscope.engine.metric import Metric


@dataclass
class SessionState:
    """What resuming a session restores: the folded result of its events."""

    clean: str = ""
    corrupted: str | None = None
    metric: Metric | None = None
    interventions: list[tuple[int, Intervention]] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    reference_prompts: list[str] | None = None
    last_run: Event | None = None
    last_sweep: Event | None = None
    last_generate: Event | None = None
    notes: list[str] = field(default_factory=list)
    effect_scale: str = "delta"  # how sweeps were shown when the session stopped
    feature_labels: dict[str, dict[int, str]] = field(default_factory=dict)  # SAE folder -> feature -> name
    prompt_set: dict[str, Any] | None = None  # the latest prompt_set event's payload (name, source, rows)
    work: dict[str, Event] = field(default_factory=dict)  # request kind -> its latest work event
    outcomes: list[Any] = field(default_factory=list)  # Outcomes rebuilt from the record, oldest first

    @property
    def last_outcome(self) -> dict[str, Any] | None:
        """The last run's recorded outcome (top_ids, top_tokens, top_probs, metric, baseline_metric)."""
        return None if self.last_run is None else self.last_run["outcome"]

    @property
    def next_intervention_id(self) -> int:
        return max((ident for ident, _ in self.interventions), default=0) + 1


class StateBuilder:
    """Folds events into a SessionState; raises ValueError (before changing anything) on a bad event."""

    def __init__(self) -> None:
        self.clean = ""
        self.corrupted: str | None = None
        self.metric: dict | None = None
        self.interventions: dict[int, Intervention] = {}
        self.vector_files: dict[str, str] = {}
        self.reference_prompts: list[str] | None = None
        self.last: dict[str, Event] = {}
        self.notes: list[str] = []
        self.effect_scale = "delta"
        self.feature_labels: dict[str, dict[int, str]] = {}
        self.prompt_sets: dict[int, dict[str, Any]] = {}  # seq -> prompt_set payload
        self.prompt_set: dict[str, Any] | None = None

    def apply(self, event: Event) -> None:
        kind, payload = event.kind, event.payload
        if kind == "prompt":
            self.clean, self.corrupted = payload["clean"], payload["corrupted"]
        elif kind == "metric":
            self.metric = payload["metric"]
        elif kind == "intervention":
            self._apply_intervention(payload)
        elif kind in ("vector", "reference_prompts", "note", "effect_scale", "feature_label"):
            self._apply_setting(kind, payload)
        elif kind == "prompt_set":
            self.prompt_sets[event.seq] = payload
            self.prompt_set = payload
        elif kind in ("set_run", "set_sweep"):
            rows = self.prompt_sets.get(payload["set"])
            if rows is None:
                raise ValueError(f"{kind} names prompt set {payload['set']}, which no earlier "
                                 "prompt_set event recorded")
            if kind == "set_run" and len(payload["values"]) != len(rows["rows"]):
                raise ValueError(f"set_run has {len(payload['values'])} values for a set of "
                                 f"{len(rows['rows'])} rows")
        if kind == "run":
            self.clean, self.corrupted, self.metric = (payload["prompt"], payload["corrupted"],
                                                       payload["metric"])
        if kind == "request":
            self._apply_inputs(payload["request"])
        work = work_kind(event)
        if work is not None:
            self.last[work] = event

    def _apply_setting(self, kind: str, payload: dict[str, Any]) -> None:
        """Workbench state a later event may change: vectors, reference prompts, notes, how effects
        show, feature names."""
        if kind == "vector":
            self.vector_files[payload["name"]] = payload["file"]
        elif kind == "reference_prompts":
            self.reference_prompts = list(payload["prompts"])
        elif kind == "note":
            self.notes.append(payload["text"])
        elif kind == "effect_scale":
            self.effect_scale = payload["scale"]
        else:
            self._apply_label(payload)

    def _apply_label(self, payload: dict[str, Any]) -> None:
        """A feature's name ("" takes it away), per SAE folder."""
        labels = dict(self.feature_labels.get(payload["sae_folder"], {}))
        if payload["label"]:
            labels[payload["feature"]] = payload["label"]
        else:
            labels.pop(payload["feature"], None)
        self.feature_labels = {**self.feature_labels, payload["sae_folder"]: labels}

    def _apply_inputs(self, data: dict[str, Any]) -> None:
        """A request that was the live run sets the prompts and metric, as a prompt event would."""
        from mechscope.requests.kinds import request_from_dict
        from mechscope.requests.registry import handler_for

        request = request_from_dict(data)
        inputs = handler_for(request).inputs(request)
        if inputs is not None:
            clean, corrupted, metric = inputs
            self.clean, self.corrupted = clean, corrupted
            self.metric = None if metric is None else metric.to_dict()

    def _apply_intervention(self, payload: dict[str, Any]) -> None:
        from mechscope.engine.interventions import Intervention

        action, ident = payload["action"], payload["id"]
        if action == "added":
            if ident in self.interventions:
                raise ValueError(f"intervention id {ident} is added twice")
            self.interventions[ident] = Intervention.from_dict(payload["intervention"])
            return
        if ident not in self.interventions:
            raise ValueError(f"intervention id {ident} is {action} but was never added (or was removed)")
        if action == "changed":
            self.interventions[ident] = Intervention.from_dict(payload["intervention"])
        elif action == "toggled":
            self.interventions[ident] = self.interventions[ident].with_enabled(payload["enabled"])
        else:
            del self.interventions[ident]

    def state(self, tensors: dict[str, np.ndarray]) -> SessionState:
        from mechscope.engine.metric import Metric

        return SessionState(
            clean=self.clean,
            corrupted=self.corrupted,
            metric=None if self.metric is None else Metric.from_dict(self.metric),
            interventions=list(self.interventions.items()),
            vectors={name: tensors[file].copy() for name, file in self.vector_files.items()},
            reference_prompts=None if self.reference_prompts is None else list(self.reference_prompts),
            last_run=self.last.get("run"),
            last_sweep=self.last.get("sweep"),
            last_generate=self.last.get("generate"),
            notes=list(self.notes),
            effect_scale=self.effect_scale,
            feature_labels={folder: dict(labels) for folder, labels in self.feature_labels.items()},
            prompt_set=self.prompt_set,
            work=dict(self.last),
        )


def copy_builder(builder: StateBuilder) -> StateBuilder:
    """A shallow copy to dry-run an event against (apply mutates only top-level containers)."""
    copy = StateBuilder()
    copy.__dict__.update({k: (v.copy() if isinstance(v, (dict, list)) else v)
                          for k, v in builder.__dict__.items()})
    return copy
