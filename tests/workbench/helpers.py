"""Helpers for Workbench tests without a terminal: an engine that logs what it received, a driver."""

from __future__ import annotations

from typing import Any

from mechscope.engine.testing import tiny_engine
from mechscope.requests import Outcome, Request, execute
from mechscope.sessions import Session
from mechscope.workbench.controller import Inputs, Workbench
from mechscope.workbench.recorder import SessionRecorder

IOI = Inputs(
    clean="When Mary and John went to the store, John gave a drink to",
    corrupted="When Mary and John went to the store, Mary gave a drink to",
    target=" Mary",
    foil=" John",
)


def call_inputs(prompt: str, corrupted: str | None, metric: Any, interventions: Any) -> dict[str, Any]:
    """The inputs of an engine call in the form a session event stores them."""
    return {"prompt": prompt, "corrupted": corrupted or None,
            "metric": None if metric is None else metric.to_dict(),
            "interventions": [iv.to_dict() for iv in interventions]}


class LoggingEngine:
    """A real tiny engine that keeps the inputs of every run, sweep and generate it received."""

    def __init__(self, family: str = "llama") -> None:
        self.inner = tiny_engine(family)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, prompt, interventions=(), views=None, metric=None, corrupted=None, top_k=10,
            should_stop=None):
        interventions = list(interventions)
        self.calls.append(("run", {**call_inputs(prompt, corrupted, metric, interventions), "top_k": top_k}))
        return self.inner.run(prompt, interventions=interventions, views=views, metric=metric,
                              corrupted=corrupted, top_k=top_k, should_stop=should_stop)

    def sweep(self, kind, clean, corrupt, metric, direction="noising", on_progress=None, should_stop=None,
              interventions=()):
        interventions = list(interventions)
        on_top = {"interventions": [iv.to_dict() for iv in interventions]} if interventions else {}
        self.calls.append(("sweep", {"sweep": kind, "clean": clean, "corrupt": corrupt,
                                     "metric": metric.to_dict(), "direction": direction, **on_top}))
        return self.inner.sweep(kind, clean, corrupt, metric, direction=direction,
                                on_progress=on_progress, should_stop=should_stop, interventions=interventions)

    def generate(self, prompt, interventions=(), max_new_tokens=20, temperature=0.0, seed=0,
                 corrupted=None, on_token=None, should_stop=None):
        interventions = list(interventions)
        inputs = call_inputs(prompt, corrupted, None, interventions)
        del inputs["metric"]
        self.calls.append(("generate", inputs))
        return self.inner.generate(prompt, interventions=interventions, max_new_tokens=max_new_tokens,
                                   temperature=temperature, seed=seed, corrupted=corrupted,
                                   on_token=on_token, should_stop=should_stop)

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [inputs for k, inputs in self.calls if k == kind]


def recorded_bench(engine: Any, name: str = "study", inputs: Inputs = IOI) -> Workbench:
    bench = Workbench(inputs, SessionRecorder(Session.create(name=name, engine=engine)))
    bench.select(0, 0)
    return bench


def run(engine: Any, request: Request | None) -> Outcome | None:
    """Execute a request the way a worker does (the Workbench may have moved on meanwhile)."""
    return None if request is None else execute(engine, request)


def drive(bench: Workbench, engine: Any, request: Request | None) -> None:
    """Execute a request and every follow-up the Workbench asks for, accepting each outcome."""
    while request is not None:
        request = bench.accept(execute(engine, request))


def events(name: str = "study") -> list[Any]:
    return list(Session.open(name).events)


def work(kind: str, name: str = "study") -> list[dict[str, Any]]:
    """Every recorded piece of work of request kind `kind`: its request as `request_to_dict` wrote
    it, with the recorded outcome summary under "outcome"."""
    return [{**event["request"], "outcome": event["outcome"]} for event in events(name)
            if event.kind == "request" and event["request"]["kind"] == kind]
