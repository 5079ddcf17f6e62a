"""Pilot test of the prompt-set path: generate a set, step rows, set numbers, set sweep on the grid,
a verified estimate marked exact, head detectors cycled with c, massive activations in the set tab."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console
from textual.widgets import Input

from mechscope.screens.estimate import EstimateScreen
from mechscope.screens.help import HelpScreen
from mechscope.screens.prompt_set import PromptSetScreen
from mechscope.sessions import Session
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.workbench.sets import ESTIMATE_GRID, EXACT_MARK, SET_SWEEP_GRID
from tests.tui.helpers import make_app, screen_text, settle


def rendered(app, selector: str) -> str:
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(app.query_one(selector).content)
    return console.export_text()


async def fill(app, pilot, text: str) -> None:
    app.screen.query_one("#ask-input", Input).value = text
    await pilot.press("enter")
    await settle(pilot)


async def test_prompt_set_keys_end_to_end():
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("L")
        assert isinstance(app.screen, PromptSetScreen)
        await fill(app, pilot, "ioi 3")
        sets = app.bench.sets
        assert sets.pset is not None and len(sets.pset) == 3
        assert app.bench.inputs.clean == sets.pset.rows[0].clean
        assert app.query_one("#clean", Input).value == sets.pset.rows[0].clean

        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert app.bench.inputs.clean == sets.pset.rows[1].clean
        assert app.bench.result is not None and app.bench.run.request.prompt == sets.pset.rows[1].clean

        await pilot.press("O")
        await settle(pilot)
        assert sets.run is not None and sets.run.ok
        assert f"baseline {np.mean(sets.run.result.baseline):+.3f}" in screen_text(app)

        await pilot.press("H")
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        assert screen.grid_part.metric == SET_SWEEP_GRID
        np.testing.assert_allclose(grid.values, sets.sweep.result.mean, atol=1e-6)

        await pilot.press("Z")
        assert isinstance(app.screen, EstimateScreen)
        await fill(app, pilot, "atp verify 2")
        assert screen.grid_part.metric == ESTIMATE_GRID
        verified = sets.estimate.result.exact
        assert len(verified) == 2
        assert {cell for cell, mark in grid.marks.items() if mark == EXACT_MARK} == set(verified)
        assert "verified by exact patching" in screen_text(app)

        await pilot.press("D")
        await settle(pilot)
        assert screen.grid_part.metric == "previous_token"
        np.testing.assert_allclose(grid.values, sets.detectors.scores["previous_token"])
        await pilot.press("c")
        assert screen.grid_part.metric == "duplicate_token"

        await pilot.press("Y")
        await settle(pilot)
        assert app.query_one("#views").active == "tab-set"
        table = rendered(app, "#set-massive")
        assert "massive activations over 3 prompts" in table and "constant" in table

        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "Induction: on the same repeated random tokens" in text and "= marks a head" in text
        await pilot.press("escape")

        session = app.bench.recorder.session
        kinds = [e["request"]["kind"] if e.kind == "request" else e.kind
                 for e in Session.open(session.name).events]
        assert "prompt_set" in kinds and "run_set" in kinds and "sweep_set" in kinds


def status_line(app) -> str:
    return str(app.screen.query_one("#status-bar").render())


async def test_failing_rows_are_named_then_spaced_or_dropped_and_old_errors_go(tmp_path):
    import json

    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    rows = [{"clean": clean, "corrupted": corrupted, "target": " Mary", "foil": " John"},
            {"clean": clean, "corrupted": corrupted, "target": "Mary", "foil": " John"},
            {"clean": clean, "corrupted": corrupted + " now", "target": " Mary", "foil": " John"}]
    bad_file, good_file, rows_file = tmp_path / "bad.jsonl", tmp_path / "good.jsonl", tmp_path / "rows.jsonl"
    bad_file.write_text("{not json\n")
    good_file.write_text(json.dumps(rows[0]) + "\n")
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        sets = app.bench.sets
        await pilot.press("L")
        await fill(app, pilot, str(bad_file))  # the dialog stays open, the file's problem under the field
        assert isinstance(app.screen, PromptSetScreen)
        assert str(app.screen.query_one("#ask-error").render()).startswith(
            f"prompt set not loaded: {bad_file}:1: invalid JSON")
        await fill(app, pilot, str(good_file))
        assert not isinstance(app.screen, PromptSetScreen)
        assert "prompt set not loaded" not in status_line(app)
        assert "set good: 1 rows" in status_line(app)

        await pilot.press("L")
        await fill(app, pilot, str(rows_file))
        assert app.bench.error is not None and "rows 2, 3" in app.bench.error
        assert "row 2: target 'Mary' is 2 tokens" in app.bench.error and "T fixes spacing in rows 2" in app.bench.error
        assert "row 3: clean is" in rendered(app, "#set-numbers")

        await pilot.press("T")
        await settle(pilot)
        assert sets.pset is not None and sets.pset.rows[1].target == " Mary"
        assert "spacing fixed in rows 2" in rendered(app, "#set-numbers")
        assert [p.row + 1 for p in sets.problems] == [3]

        app.screen.set_tab.drop_failing_rows()
        await settle(pilot)
        assert len(sets.pset) == 2 and sets.problems == []
        assert "dropped rows 3 of 3" in rendered(app, "#set-numbers")
        assert "every row passes the checks" in status_line(app)
        await pilot.press("O")
        await settle(pilot)
        assert sets.run is not None and sets.run.ok and len(sets.run.result.baseline) == 2


async def test_set_and_estimate_dialogs_stay_open_on_what_the_set_commands_refuse():
    """A count or an estimate the set commands refuse used to close the dialog and land in the status bar."""
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        await fill(app, pilot, "ioi 100000")
        assert isinstance(app.screen, PromptSetScreen)
        assert str(app.screen.query_one("#ask-error").render()) == "a set needs 1 to 10000 rows, got 100000"
        await fill(app, pilot, "ioi 3")
        assert app.bench.sets.pset is not None and len(app.bench.sets.pset) == 3
        await pilot.press("Z")
        for text, problem in (("eap-ig steps 0", "steps must be 1 to 64, got 0"),
                              ("atp verify 99", "verify must be auto or 0 to 64, got 99")):
            await fill(app, pilot, text)
            assert isinstance(app.screen, EstimateScreen)
            assert str(app.screen.query_one("#ask-error").render()) == problem
        await fill(app, pilot, "atp verify 2")
        assert not isinstance(app.screen, EstimateScreen)
        assert app.bench.sets.estimate is not None and len(app.bench.sets.estimate.result.exact) == 2
