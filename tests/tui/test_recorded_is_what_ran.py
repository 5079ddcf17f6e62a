"""Through the TUI: keys pressed while engine work is in flight never make the session record
inputs other than those the engine received."""

from __future__ import annotations

import threading

from mechscope.engine.interventions import HeadAblation
from mechscope.sessions import Session
from mechscope.sessions.replaying import replay
from tests.tui.helpers import make_app, settle
from tests.workbench.helpers import LoggingEngine


class Gate:
    """Holds an engine's `held` calls ("run", "generate") until `release()`, like a slow model."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.held: set[str] = set()
        self.opened = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def run(self, *args, **kwargs):
        if "run" in self.held:
            self.opened.wait(10)
        return self.engine.run(*args, **kwargs)

    def generate(self, *args, **kwargs):
        if "generate" in self.held:
            self.opened.wait(10)
        return self.engine.generate(*args, **kwargs)


class GatedEngine(LoggingEngine):
    """Logs each call as it arrives, then holds the `held` ones until `release()`: the log is the
    order the engine received the calls in, whichever held call's thread wakes first."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate(self.inner)
        self.inner = self.gate
        self.held = self.gate.held

    def release(self) -> None:
        self.held.clear()
        self.gate.opened.set()


def recorded(kind: str, keys: tuple[str, ...]) -> list[dict]:
    """The fields `keys` of every recorded request of request kind `kind`."""
    return [{key: e["request"][key] for key in keys} for e in Session.open("study").events
            if e.kind == "request" and e["request"]["kind"] == kind]


def assert_replays(engine: GatedEngine) -> None:
    steps = replay(Session.open("study"), engine.inner)
    assert steps and all(step.matches for step in steps), [s.detail for s in steps if not s.matches]


async def test_typing_while_a_run_is_in_flight_records_what_ran():
    engine = GatedEngine()
    app = make_app(engine, session_name="study")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engine.held.add("run")
        await pilot.press("space")  # ablate L0.H0: the run waits in its worker
        await pilot.pause()
        await pilot.press("slash", "end", "!")  # typed while it runs
        engine.release()
        await pilot.pause(0.5)  # the typing debounce
        await settle(pilot)
        assert app.bench.result.prompt.endswith("to!")
    runs = recorded("run", ("prompt", "corrupted", "metric", "interventions", "top_k"))
    assert all(run in engine.received("run") for run in runs)
    assert runs[-1] == engine.received("run")[-1] and runs[-1]["prompt"].endswith("to!")
    assert not any(run["interventions"] and not run["prompt"].endswith("!") for run in runs)
    assert_replays(engine)


async def test_toggling_during_a_generation_records_what_it_ran_with():
    engine = GatedEngine()
    app = make_app(engine, session_name="study")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        engine.held.add("generate")
        await pilot.press("g")
        await pilot.pause()
        await pilot.press("u")  # the ablation goes while the generation runs
        await pilot.pause()
        engine.release()
        await settle(pilot)
        assert app.bench.edits.stack.entries == ()
        assert app.query_one("#gen-intervened-box").border_subtitle == "stale: g to rerun"
    generated = recorded("generate", ("prompt", "corrupted", "interventions"))
    assert generated == [engine.received("generate")[-1]]
    assert generated[0]["interventions"] == [HeadAblation(0, 0).to_dict()]
    assert_replays(engine)
