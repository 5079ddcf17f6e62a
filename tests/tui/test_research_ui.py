"""Pilot tests of the research commands: KL and metric position, the sweep dialog, the pinned
baseline, reference prompts, generation settings and exports, each recorded as it ran."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from textual.widgets import Checkbox, Input, Select, TextArea

from mechscope.engine.interventions import HeadAblation
from mechscope.engine.metric import Metric
from mechscope.engine.testing import tiny_engine
from mechscope.screens.generation_options import GenerationOptionsScreen
from mechscope.screens.sweep_options import SweepOptionsScreen
from mechscope.tui.app import IOI_PAIR
from mechscope.tui.widgets.predictions import PredictionsPane
from tests.tui.helpers import make_app, screen_text, settle


def events(app, kind):
    """Every recorded request of request kind `kind` (as `request_to_dict` wrote it) and every
    setting event of that kind."""
    found = []
    for event in app.bench.recorder.session.events:
        if event.kind == "request":
            if event["request"]["kind"] == kind:
                found.append(event["request"])
        elif event.kind == kind:
            found.append(event)
    return found


def pane_text(app) -> str:
    rendered = app.query_one(PredictionsPane).render()
    return getattr(rendered, "plain", str(rendered))


async def test_kl_metric_and_metric_position_from_the_ui():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.query_one("#metric-kind", Select).value = "kl"
        await settle(pilot)
        assert app.bench.result.metric == pytest.approx(0.0, abs=1e-6)
        assert "KL(clean‖run)" in pane_text(app)
        await pilot.press("P")
        await settle(pilot)
        field = app.screen.query_one("#ask-input", Input)
        field.value = "99"
        await pilot.press("enter")
        await settle(pilot)
        assert "outside the prompt" in screen_text(app)  # the dialog stays open with the engine's rule
        field.value = "5"
        await pilot.press("enter")
        await settle(pilot)
        assert app.bench.metric_position == 5
        await pilot.press("space")  # an intervention, so KL moves away from 0
        await settle(pilot)
        expected = app.engine.run(IOI_PAIR.clean, [HeadAblation(0, 0)], metric=Metric("kl", " Mary", position=5),
                                  corrupted=IOI_PAIR.corrupted)
        assert app.bench.result.metric == pytest.approx(expected.metric, abs=1e-6)
        assert events(app, "run")[-1]["metric"] == {"kind": "kl", "target": " Mary", "foil": "", "position": 5}


async def test_sweep_dialog_runs_denoising_on_top_of_interventions_and_says_so():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("down", "space")  # zero L1.H0
        await settle(pilot)
        await pilot.press("W")
        await settle(pilot)
        assert isinstance(app.screen, SweepOptionsScreen)
        app.screen.query_one("#sweep-kind", Select).value = "attn"
        app.screen.query_one("#sweep-direction", Select).value = "denoising"
        assert app.screen.query_one("#sweep-on-top", Checkbox).value is False  # the rule: unedited unless asked
        app.screen.query_one("#sweep-on-top", Checkbox).value = True
        await pilot.press("ctrl+s")
        await settle(pilot)
        state = app.bench.sweeps.states["attn"]
        assert state.request.direction == "denoising" and state.request.interventions == (HeadAblation(1, 0),)
        expected = app.engine.sweep("attn", IOI_PAIR.clean, IOI_PAIR.corrupted, state.request.metric,
                                    direction="denoising", interventions=[HeadAblation(1, 0)])
        np.testing.assert_allclose(state.result.values, expected.values, rtol=1e-5, atol=1e-6)
        text = screen_text(app)
        assert "attention-output patching" in text
        assert "attn denoising · on top of 1 intervention: zero L1.H0" in text
        sweep = events(app, "sweep")[-1]
        assert sweep["sweep_kind"] == "attn" and sweep["direction"] == "denoising"
        assert sweep["interventions"] == [HeadAblation(1, 0).to_dict()]
        await pilot.press("w")  # the plain key keeps its head noising sweep
        await settle(pilot)
        assert app.bench.sweeps.states["head"].request.direction == "noising"
        assert "head noising" in screen_text(app)


async def test_pinned_baseline_labels_every_delta():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space")  # zero L0.H0
        await settle(pilot)
        pinned = app.bench.result
        await pilot.press("b")
        await settle(pilot)
        assert app.query_one(PredictionsPane).border_subtitle == "Δ vs PINNED (zero L0.H0)"
        assert "Δpin +0.000" in pane_text(app)
        await pilot.press("down", "space")  # and zero L1.H0
        await settle(pilot)
        now = app.bench.result
        assert f"Δpin {now.metric - pinned.metric:+.3f}" in pane_text(app)
        assert f"pin {pinned.metric:+.3f} → {now.metric:+.3f}" in pane_text(app)
        await pilot.press("b")
        await settle(pilot)
        assert app.query_one(PredictionsPane).border_subtitle == "Δ vs no interventions"
        assert "Δpin" not in pane_text(app)


async def test_reference_prompts_dialog_sets_and_records_them():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("m")  # mean-ablate L0.H0
        await settle(pilot)
        await pilot.press("F")
        await settle(pilot)
        area = app.screen.query_one("#ref-text", TextArea)
        area.text = "   \n"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert "at least one" in screen_text(app)
        area.text = "The cat sat on the mat\nA dog ran home"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert list(app.engine.reference_prompts) == ["The cat sat on the mat", "A dog ran home"]
        assert events(app, "reference_prompts")[-1]["prompts"] == ["The cat sat on the mat", "A dog ran home"]
        expected = app.engine.run(IOI_PAIR.clean, [HeadAblation(0, 0, mode="mean")], metric=app.bench.metric(),
                                  corrupted=IOI_PAIR.corrupted)
        assert app.bench.result.metric == pytest.approx(expected.metric)


async def test_generation_settings_dialog_validates_and_generate_uses_them():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("G")
        await settle(pilot)
        assert isinstance(app.screen, GenerationOptionsScreen)
        app.screen.query_one("#gen-max_new_tokens", Input).value = "4"
        app.screen.query_one("#gen-temperature", Input).value = "inf"
        app.screen.query_one("#gen-seed", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, GenerationOptionsScreen) and "finite" in screen_text(app)
        app.screen.query_one("#gen-temperature", Input).value = "0.5"
        app.screen.query_one("#gen-seed", Input).value = "7"
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        request = app.bench.generations.latest.request
        assert (request.max_new_tokens, request.temperature, request.seed) == (4, 0.5, 7)
        generated = events(app, "generate")[-1]
        assert (generated["max_new_tokens"], generated["temperature"], generated["seed"]) == (4, 0.5, 7)


async def test_export_sweep_csv_from_the_ui(tmp_path):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
        await pilot.press("enter")  # the first choice: sweep as CSV
        await settle(pilot)
        field = app.screen.query_one("#ask-input", Input)
        assert field.value == "sweep-head-noising.csv"
        field.value = str(tmp_path / "nofolder" / "x.csv")
        await pilot.press("enter")
        await settle(pilot)
        assert "no such folder" in screen_text(app)
        field.value = str(tmp_path / "s.csv")
        await pilot.press("enter")
        await settle(pilot)
        rows = list(csv.DictReader((tmp_path / "s.csv").open()))
        values = app.bench.sweeps.states["head"].result.values
        assert len(rows) == values.size
        assert rows[5]["label"] == f"L{5 // values.shape[1]}.H{5 % values.shape[1]}"
        assert float(rows[5]["delta_metric"]) == pytest.approx(values.reshape(-1)[5])
        assert "exported sweep csv" in screen_text(app)


async def test_resuming_a_session_brings_its_reference_prompts_back():
    app = make_app(session_name="refs")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("F")
        await settle(pilot)
        app.screen.query_one("#ref-text", TextArea).text = "One two three\nFour five six"
        await pilot.press("ctrl+s")
        await settle(pilot)
    engine = tiny_engine("llama")
    resumed = make_app(engine, session_name="refs")
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert list(engine.reference_prompts) == ["One two three", "Four five six"]
        assert resumed.bench.reference_prompts == ("One two three", "Four five six")


async def test_palette_sweep_entries_run_their_kind_and_direction():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.workbench)}
        assert {"Sweep: head denoising", "Sweep: MLP output per layer", "Pin baseline / unpin (b)",
                "Export… (e)"} <= titles
        app.workbench.run_command("sweep_with('head','denoising')")
        await settle(pilot)
        request = app.bench.sweeps.states["head"].request
        assert (request.sweep_kind, request.direction, request.interventions) == ("head", "denoising", ())
        assert "head denoising · on the" in screen_text(app)


async def sweep_an_ioi_set(app, pilot):
    """Load a 3-row IOI set (L) and run its head sweep (H); the finished sweep."""
    await pilot.press("L")
    await settle(pilot)
    app.screen.query_one("#ask-input", Input).value = "ioi 3"
    await pilot.press("enter")
    await settle(pilot)
    await pilot.press("H")
    await settle(pilot)
    return app.bench.sets.sweep.result


async def test_export_set_sweep_csv_from_the_ui_equals_export_sweep_of_the_session(tmp_path):
    """The set sweep H ran is exported from the screen, cell for cell what `export-sweep` writes from
    the session (to float32 precision: the session keeps float32 arrays). Before, the export said
    "no sweep to export yet"."""
    from mechscope.cli import main

    app = make_app(session_name="set-export")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
        await pilot.press("down", "down", "enter")  # set sweep as CSV, before any set sweep ran
        await settle(pilot)
        assert "no set sweep to export yet" in (app.bench.error or "")
        result = await sweep_an_ioi_set(app, pilot)
        await pilot.press("e")
        await settle(pilot)
        await pilot.press("down", "down", "enter")
        await settle(pilot)
        field = app.screen.query_one("#ask-input", Input)
        assert field.value == "sweep-set-noising.csv"
        field.value = str(tmp_path / "ui.csv")
        await pilot.press("enter")
        await settle(pilot)
        assert "exported set sweep csv" in screen_text(app)
    rows = list(csv.DictReader((tmp_path / "ui.csv").open()))
    mean = result.per_row.mean(axis=0)  # [layer, head]
    assert len(rows) == mean.size and rows[7]["label"] == f"L{7 // mean.shape[1]}.H{7 % mean.shape[1]}"
    assert float(rows[7]["delta_metric"]) == pytest.approx(mean.reshape(-1)[7])
    assert float(rows[7]["base_metric"]) == pytest.approx(float(np.mean(result.base_metric)))
    assert main(["export-sweep", "set-export", "-o", str(tmp_path / "cli.csv")]) == 0
    recorded = list(csv.DictReader((tmp_path / "cli.csv").open()))  # from the session's float32 arrays
    assert [row.keys() for row in recorded] == [row.keys() for row in rows]
    for ui_row, cli_row in zip(rows, recorded, strict=True):
        assert [ui_row[k] for k in ("kind", "direction", "layer", "head", "label")] == \
            [cli_row[k] for k in ("kind", "direction", "layer", "head", "label")]
        for key in ("delta_metric", "normalised_effect", "base_metric", "source_metric"):
            assert float(ui_row[key]) == pytest.approx(float(cli_row[key]), rel=1e-5, abs=1e-6)


async def test_set_sweep_matrix_as_safetensors_and_a_path_that_cannot_be_written(tmp_path):
    """The set sweep's mean grid as safetensors, in export-sweep's layout. A path the dialog accepts but
    the disk refuses (a link into a missing folder) leaves one error line and the app running; before,
    safetensors' own error ended the app."""
    from safetensors.numpy import load_file

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        result = await sweep_an_ioi_set(app, pilot)
        (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "missing" / "x.safetensors")
        for target in ("dangling.safetensors", "set.safetensors"):
            await pilot.press("e")
            await settle(pilot)
            await pilot.press("down", "down", "down", "enter")  # set sweep matrix as safetensors
            await settle(pilot)
            field = app.screen.query_one("#ask-input", Input)
            assert field.value == "sweep-set-noising.safetensors"
            field.value = str(tmp_path / target)
            await pilot.press("enter")
            await settle(pilot)
            if target.startswith("dangling"):
                assert app.bench.error.startswith("not exported: No such file or directory")
        assert "exported set sweep safetensors" in screen_text(app)
    saved = load_file(str(tmp_path / "set.safetensors"))
    np.testing.assert_allclose(saved["values"], result.per_row.mean(axis=0).astype(np.float32), rtol=1e-6)
