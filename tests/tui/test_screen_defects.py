"""The screen never misleads (issue 19): keys in a burst, sweep headers, key hints, number mode, the set
tab's rows, sweep defaults, steering norms, and the smaller items."""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from mechscope.sessions.store import Session
from tests.tui.helpers import make_app, settle

CHARS = {"space": " ", "minus": "-", "tab": None}


def burst(app, keys: str) -> None:
    """Keys as a terminal delivers a paste or a fast typist: all queued before the first is handled."""
    for key in keys.split():
        char = CHARS.get(key, key if len(key) == 1 else None)
        app.post_message(events.Key(key, char))


async def one_by_one(pilot, keys: str) -> None:
    for key in keys.split():
        await pilot.press(key)
        await settle(pilot)


async def state_after(keys: str, *, together: bool, session: str) -> tuple:
    app = make_app(session_name=session)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        if together:
            burst(app, keys)
        else:
            await one_by_one(pilot, keys)
        await settle(pilot)
        shown = app.bench.selected, tuple(e.intervention for e in app.bench.stack.entries)
        app.bench.recorder.close()
    return shown, Session.open(session).state().interventions


async def test_keys_in_a_burst_act_like_keys_one_by_one():
    keys = "j l space j space h m"  # L1.H1 zero, L2.H1 zero (the tiny model has 2 layers: stays L1), L1.H0 mean
    apart = await state_after(keys, together=False, session="apart")
    together = await state_after(keys, together=True, session="together")
    assert together == apart
    assert len(apart[0][1]) >= 2


async def steering_fields(keys: str, *, together: bool) -> dict[str, str]:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        dialog = app.screen
        name = dialog.query_one("#steer-name", Input)
        name.value = ""
        name.focus()
        await pilot.pause()
        if together:
            burst(app, keys)
        else:
            for key in keys.split():
                await pilot.press(key)
        await settle(pilot)
        return {field.id: field.value for field in dialog.query(Input)}


async def test_steering_dialog_typed_in_a_burst_fills_the_same_fields():
    keys = "j o h n minus m a r y tab 1 5"
    apart = await steering_fields(keys, together=False)
    together = await steering_fields(keys, together=True)
    assert apart["steer-name"] == "john-mary" and apart["steer-layer"].endswith("15")
    assert together == apart
