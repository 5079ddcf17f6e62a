"""Pilot test of the circuit work over a set: `f` computes the function vector of an in-context set
(AIE grid with its heads marked, accuracy with and without in the set tab, the vector recorded and
usable as a steering vector); the selected head's role table over an IOI set shows beside its pattern;
the name-mover / S-inhibition grids come from the palette command."""

from __future__ import annotations

import numpy as np
from textual.widgets import Input, Static

from mechscope.engine.prompt_sets import PromptRow, PromptSet
from mechscope.screens.ask_value import AskValueScreen
from mechscope.sessions import Session
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.workbench.set_circuits import FV_GRID
from tests.tui.helpers import make_app, screen_text, settle

ICL = PromptSet("icl", (
    PromptRow("Mary: John\nstore: drink\nAlice:", "Mary: drink\nstore: John\nAlice:", " Bob", " Alice"),
    PromptRow("dog: moon\nBob: Alice\nstore:", "dog: Alice\nBob: moon\nstore:", " drink", " store"),
))


async def test_function_vector_key_fills_the_grid_and_registers_the_vector():
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        screen = app.screen
        screen.submit(app.bench.sets.use(ICL))
        await settle(pilot)
        await pilot.press("f")
        assert isinstance(app.screen, AskValueScreen)
        app.screen.query_one("#ask-input", Input).value = "1 3 2"
        await pilot.press("enter")
        await settle(pilot)
        outcome = app.bench.sets.circuits.function_vector
        assert outcome is not None and outcome.ok
        result = outcome.result
        assert screen.grid_part.metric == FV_GRID
        grid = app.query_one(HeadGrid)
        np.testing.assert_allclose(grid.values, result.aie)
        assert {cell for cell, mark in grid.marks.items() if mark == "f"} == set(result.heads)
        assert "function vector 'fv-icl'" in screen_text(app)
        assert f"zero-shot accuracy without {result.accuracy_without:.0%}" in screen_text(app)
        assert "fv-icl" in app.engine.vectors
        session = Session.open(app.bench.recorder.session.path)
        assert session.vector("fv-icl").shape == result.vector.shape
        assert any(e.kind == "request" and e["request"]["kind"] == "function_vector" for e in session.events)


async def test_role_table_beside_the_pattern_and_role_detectors():
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("L")
        app.screen.query_one("#ask-input", Input).value = "ioi 3"
        await pilot.press("enter")
        await settle(pilot)
        screen.grid.focus()
        await pilot.press("down", "right")
        await pilot.pause(0.5)
        await settle(pilot)
        layer, head = app.bench.selected
        roles = app.bench.sets.circuits.roles
        assert roles is not None and (roles.request.layer, roles.request.head) == (layer, head)
        shown = str(screen.query_one("#attention-roles", Static).content)
        assert f"L{layer}.H{head} from role" in shown and "END" in shown and "S2" in shown
        end = roles.result.roles.index("END")
        assert f"{roles.result.mean[end, 0]:.2f}±" in shown

        screen.run_command("role_heads")
        await settle(pilot)
        scores = app.bench.sets.circuits.role_heads
        assert scores is not None and screen.grid_part.metric == "name_mover"
        np.testing.assert_allclose(app.query_one(HeadGrid).values, scores.scores["name_mover"])
