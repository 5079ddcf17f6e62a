"""What a session records is what ran: the inputs of every recorded run, sweep and generation equal
the inputs the engine received, even when the user edits while the work is in flight, and replay
reproduces the session."""

from __future__ import annotations

import dataclasses

from mechscope.engine.interventions import ActivationPatch, HeadAblation
from mechscope.sessions import Session
from mechscope.sessions.replaying import replay
from tests.workbench.helpers import IOI, LoggingEngine, drive, recorded_bench, run, work

SWAPPED = IOI.corrupted.replace("Mary and John", "John and Mary")  # same length in tokens


def recorded_inputs(kind: str) -> list[dict]:
    """The inputs of every recorded event of `kind`, in the engine-call form."""
    keys = {"run": ("prompt", "corrupted", "metric", "interventions", "top_k"),
            "sweep": ("sweep_kind", "clean", "corrupt", "metric", "direction"),
            "generate": ("prompt", "corrupted", "interventions")}[kind]
    names = {"sweep_kind": "sweep"}  # the engine call's name for the request's field
    return [{names.get(key, key): request[key] for key in keys} for request in work(kind)]


def assert_recorded_is_what_ran(engine: LoggingEngine) -> None:
    for kind in ("run", "sweep", "generate"):
        received = engine.received(kind)
        for recorded in recorded_inputs(kind):
            assert recorded in received, f"recorded {kind} never ran: {recorded}"
    steps = replay(Session.open("study"), engine.inner)
    assert steps and all(step.matches for step in steps), [s.detail for s in steps if not s.matches]


def test_typing_while_a_run_is_in_flight():
    engine = LoggingEngine()
    bench = recorded_bench(engine)
    drive(bench, engine, bench.next_run())
    in_flight = bench.edits.ablate("zero")
    typed = dataclasses.replace(IOI, clean=IOI.clean + " her")
    bench.edit(typed)  # the key press lands before the run finishes...
    outcome = run(engine, in_flight)
    assert bench.accept(outcome) is None  # ...so its result is not the current one, nor recorded
    assert bench.run.request.interventions == ()
    drive(bench, engine, bench.next_run())
    runs = recorded_inputs("run")
    assert [r["prompt"] for r in runs] == [IOI.clean, typed.clean]
    assert runs[-1] == engine.received("run")[-1]
    assert runs[-1]["interventions"] == [HeadAblation(0, 0).to_dict()]
    assert_recorded_is_what_ran(engine)


def test_toggling_an_intervention_during_a_generation():
    engine = LoggingEngine()
    bench = recorded_bench(engine)
    drive(bench, engine, bench.edits.ablate("zero"))
    request = bench.generations.start()
    bench.accept(run(engine, bench.generations.latest.baseline))
    drive(bench, engine, bench.edits.toggle(bench.edits.stack.entries[0].id))  # off while the intervened lane runs
    bench.accept(run(engine, request))
    generated = recorded_inputs("generate")
    assert generated == [engine.received("generate")[-1]]
    assert generated[0]["interventions"] == [HeadAblation(0, 0).to_dict()]  # what it ran with
    assert Session.open("study").state().interventions == [(1, HeadAblation(0, 0, enabled=False))]
    assert_recorded_is_what_ran(engine)


def test_editing_the_corrupted_prompt_after_adding_a_patch():
    engine = LoggingEngine()
    bench = recorded_bench(engine)
    bench.select(1, 1)
    drive(bench, engine, bench.edits.patch_selected())
    drive(bench, engine, bench.set_inputs(dataclasses.replace(IOI, corrupted=SWAPPED)))
    runs = recorded_inputs("run")
    assert runs[-1]["corrupted"] == SWAPPED
    assert runs[-1]["interventions"] == [ActivationPatch("L1.H1", SWAPPED).to_dict()]  # followed the edit
    assert runs[-1] == engine.received("run")[-1]
    assert Session.open("study").state().interventions == [(1, ActivationPatch("L1.H1", SWAPPED))]
    assert_recorded_is_what_ran(engine)


def test_changing_the_metric_during_a_sweep():
    engine = LoggingEngine()
    bench = recorded_bench(engine)
    drive(bench, engine, bench.next_run())
    sweep = bench.sweeps.start("head")
    drive(bench, engine, bench.set_inputs(dataclasses.replace(IOI, target=" John", foil=" Mary")))
    drive(bench, engine, sweep)  # finishes after the metric changed
    sweeps = recorded_inputs("sweep")
    assert sweeps == engine.received("sweep")
    assert sweeps[0]["metric"]["target"] == " Mary"  # the metric it ran with, not the one typed since
    assert bench.sweeps.staleness("head") == "metric changed"
    assert bench.sweeps.values("head") is None  # not shown as current on the grid
    assert_recorded_is_what_ran(engine)
