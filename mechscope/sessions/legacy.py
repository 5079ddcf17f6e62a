"""The request and outcome summary an older work event stands for (run, sweep, generate, set_run,
set_sweep, written before work was recorded as `request` events), so old sessions replay, export and
resume through the same handlers as new ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mechscope.engine.interventions import Intervention
from mechscope.engine.metric import Metric
from mechscope.engine.prompt_sets import PromptSet
from mechscope.requests.kinds import (
    GenerateRequest,
    Request,
    RunRequest,
    RunSetRequest,
    SweepRequest,
    SweepSetRequest,
)
from mechscope.requests.registry import Summary
from mechscope.sessions.events import Event

Tensor = Callable[[Event], np.ndarray]
PromptSetOf = Callable[[int], PromptSet]


def _enabled(dicts: list[dict[str, Any]]) -> tuple[Intervention, ...]:
    """The interventions that ran: old events list disabled ones too, which never ran."""
    return tuple(iv for iv in (Intervention.from_dict(d) for d in dicts) if iv.enabled)


def _metric(data: dict[str, Any] | None) -> Metric | None:
    return None if data is None else Metric.from_dict(data)


def _run(event: Event, tensor: Tensor, prompt_set: PromptSetOf) -> tuple[Request, Summary]:
    request = RunRequest(event["prompt"], event["corrupted"], _metric(event["metric"]),
                         _enabled(event["interventions"]), top_k=event["top_k"])
    return request, Summary(dict(event["outcome"]))


def _sweep(event: Event, tensor: Tensor, prompt_set: PromptSetOf) -> tuple[Request, Summary]:
    metric = _metric(event["metric"])
    if metric is None:
        raise ValueError("a sweep event without a metric")
    request = SweepRequest(event["sweep"], event["clean"], event["corrupt"], metric, event["direction"],
                           _enabled(event.get("interventions") or []))
    values = np.asarray(tensor(event), dtype=np.float32)  # [layer, head|pos]
    data = {"sweep": event["sweep"], "base_metric": event["base_metric"],
            "source_metric": event["source_metric"], "complete": event["complete"],
            "row_labels": list(event.get("row_labels") or []),
            "col_labels": list(event.get("col_labels") or [])}
    return request, Summary(data, {"values": values})


def _generate(event: Event, tensor: Tensor, prompt_set: PromptSetOf) -> tuple[Request, Summary]:
    params = event["params"]
    request = GenerateRequest(event["prompt"], event["corrupted"], _enabled(event["interventions"]),
                              params["max_new_tokens"], params["temperature"], params["seed"])
    return request, Summary({"token_ids": list(event["token_ids"]), "tokens": list(event["tokens"])})


def _set_run(event: Event, tensor: Tensor, prompt_set: PromptSetOf) -> tuple[Request, Summary]:
    request = RunSetRequest(prompt_set(event["set"]), event["metric_kind"],
                            _enabled(event["interventions"]), event["prompt"])
    return request, Summary({"values": list(event["values"]), "baseline": list(event["baseline"])})


def _set_sweep(event: Event, tensor: Tensor, prompt_set: PromptSetOf) -> tuple[Request, Summary]:
    request = SweepSetRequest(prompt_set(event["set"]), event["metric_kind"], event["direction"],
                              event["source"])
    return request, Summary({"base_metric": event["base_metric"], "complete": event["complete"]},
                            {"mean": np.asarray(tensor(event), dtype=np.float32)})  # [layer, head]


READERS: dict[str, Callable[[Event, Tensor, PromptSetOf], tuple[Request, Summary]]] = {
    "run": _run, "sweep": _sweep, "generate": _generate, "set_run": _set_run, "set_sweep": _set_sweep,
}


def legacy_outcome(event: Event, tensor: Tensor, prompt_set: PromptSetOf) -> tuple[Request, Summary]:
    """The request an older work event recorded and its outcome summary; ValueError when the event
    cannot stand for one (a sweep without a metric)."""
    return READERS[event.kind](event, tensor, prompt_set)
