"""Pilot tests: the sweep dialog's component (q / k / v), and Q, senders → this head, in the grid."""

from __future__ import annotations

import numpy as np
from textual.widgets import Input, Select

from mechscope.screens.sweep_options import SweepOptionsScreen
from mechscope.tui.app import IOI_PAIR
from mechscope.tui.commands import key_of
from tests.tui.helpers import make_app, screen_text, settle


def recorded(app, kind):
    return [event["request"] for event in app.bench.recorder.session.events
            if event.kind == "request" and event["request"]["kind"] == kind]


async def test_sweep_dialog_patches_each_heads_key():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("W")
        await settle(pilot)
        assert isinstance(app.screen, SweepOptionsScreen)
        app.screen.query_one("#sweep-head-input", Select).value = "k"
        await pilot.press("ctrl+s")
        await settle(pilot)
        state = app.bench.sweeps.states["head"]
        assert state.request.head_input == "k"
        expected = app.engine.sweep("head", IOI_PAIR.clean, IOI_PAIR.corrupted, state.request.metric,
                                    head_input="k")
        np.testing.assert_allclose(state.result.values, expected.values, rtol=1e-5, atol=1e-6)
        assert "head key noising" in screen_text(app)
        assert "KV head shared by 2 query heads" in screen_text(app)  # the tiny Llama: 4 heads, 2 KV heads
        assert recorded(app, "sweep")[-1]["head_input"] == "k"


async def test_senders_into_the_selected_heads_query_fill_the_grid():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "right")  # L2.H1
        await settle(pilot)
        assert app.bench.selected == (2, 1)
        await pilot.press(key_of("path_sweep"))
        await settle(pilot)
        field = app.screen.query_one("#ask-input", Input)
        field.value = "x"
        await pilot.press("enter")
        await settle(pilot)
        assert "q, k or v" in screen_text(app)  # the dialog stays open with the rule
        field.value = "q denoising"
        await pilot.press("enter")
        await settle(pilot)
        state = app.bench.sweeps.states["head"]
        assert state.request.receiver == "L2.H1.q" and state.request.direction == "denoising"
        expected = app.engine.path_sweep("L2.H1.q", IOI_PAIR.clean, IOI_PAIR.corrupted, state.request.metric,
                                         direction="denoising")
        np.testing.assert_allclose(state.result.values, expected.values, rtol=1e-5, atol=1e-6)
        assert "senders → L2.H1.q denoising" in screen_text(app)
        assert "path patching senders → L2.H1.q" in screen_text(app)  # the view names the sweep
        assert app.screen.grid_part.metric == "patching"
        assert recorded(app, "path_sweep")[-1]["receiver"] == "L2.H1.q"
