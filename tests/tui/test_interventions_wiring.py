"""Pilot tests of every way the workbench creates interventions: steering, knockouts, components, neurons."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file
from textual.widgets import Input

from mechscope.engine.interventions import (
    AttentionKnockout,
    ComponentAblation,
    HeadAblation,
    NeuronClamp,
    SteeringVector,
)
from mechscope.engine.testing import tiny_engine
from mechscope.engine.views import Views
from mechscope.screens.choose import ChooseScreen
from mechscope.screens.edit_intervention import EditInterventionScreen
from mechscope.screens.steering import SteeringScreen
from mechscope.sessions import Session
from mechscope.tui.app import IOI_PAIR
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.tui.widgets.interventions import InterventionList
from mechscope.tui.widgets.views import AttentionMap
from tests.tui.helpers import make_app, screen_text, settle

POSITIVE = "I love this. It is wonderful"
NEGATIVE = "I hate this. It is awful"


def status(app) -> str:
    return str(app.query_one("#status-bar").render())


def list_lines(app) -> list[str]:
    options = app.query_one(InterventionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


def direct_run(engine, interventions):
    """The same request the workbench makes, straight to the engine (the values the UI must show)."""
    from mechscope.engine.metric import Metric

    return engine.run(IOI_PAIR.clean, interventions=interventions, corrupted=IOI_PAIR.corrupted,
                      metric=Metric("logit_diff", IOI_PAIR.target, IOI_PAIR.foil))


async def fill(pilot, **fields: str) -> None:
    """Set the inputs of the dialog on top (by id), then let it settle."""
    for field_id, value in fields.items():
        pilot.app.screen.query_one(f"#{field_id}", Input).value = value
    await pilot.pause()


async def test_build_steering_vector_steers_toggles_off_exactly_and_is_saved():
    engine = tiny_engine("llama")
    app = make_app(engine, session_name="steer-study")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        baseline = app.bench.result.prediction
        await pilot.press("j", "v")  # layer 1 is selected: the dialog proposes it
        await pilot.pause()
        assert isinstance(app.screen, SteeringScreen)
        assert app.screen.text("positive") == POSITIVE and app.screen.text("negative") == NEGATIVE
        assert app.screen.text("layer") == "1" and app.screen.text("name") == "love-hate"
        await fill(pilot, **{"steer-coeff": "6"})
        await pilot.press("ctrl+s")
        await settle(pilot)

        expected = tiny_engine("llama").build_steering_vector("check", 1, [POSITIVE], [NEGATIVE])
        np.testing.assert_allclose(engine.vectors["love-hate"], expected, rtol=1e-6)
        steer = SteeringVector(1, "love-hate", 6.0, "all")
        assert [e.intervention for e in app.bench.edits.stack.entries] == [steer]
        steered = app.bench.result
        assert not np.array_equal(steered.prediction.logits, baseline.logits)
        np.testing.assert_allclose(steered.prediction.logits,
                                   direct_run(engine, [steer]).prediction.logits, atol=1e-5)
        added = 6 * float(np.linalg.norm(expected))  # the vector's norm beside the residual entering L1
        resid = float(np.median(steered.stats.resid_norm[0][1:]))
        warning = ": LARGER than the residual" if added > resid else ""
        assert list_lines(app) == [f"[x] steer L1 love-hate x6 (|Δ| {added:.3g} vs median resid {resid:.3g} "
                                   f"after pos 0{warning})"]
        assert "steer L1 love-hate x6" in status(app)

        app.query_one(InterventionList).focus()
        await pilot.press("space")  # off: the baseline comes back bit for bit
        await settle(pilot)
        np.testing.assert_array_equal(app.bench.result.prediction.logits, baseline.logits)
        assert app.bench.result.metric == app.bench.result.baseline.metric

    state = Session.open("steer-study").state()
    np.testing.assert_array_equal(state.vectors["love-hate"], engine.vectors["love-hate"])
    assert state.interventions == [(1, steer.with_enabled(False))]

    resumed = make_app(tiny_engine("llama"), session_name="steer-study")
    async with resumed.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        resid = float(np.median(resumed.bench.result.stats.resid_norm[0][1:]))
        # the list was drawn before the resumed session's first run: it says the residual once the run is in
        assert list_lines(resumed) == [f"[ ] steer L1 love-hate x6 (|Δ| {added:.3g} vs median resid {resid:.3g} "
                                       f"after pos 0{': LARGER than the residual' if added > resid else ''})"]


async def test_steering_dialog_refuses_bad_fields_and_positions_last_steers_only_the_last_token():
    engine = tiny_engine("llama")
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause()
        await fill(pilot, **{"steer-layer": "7"})
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "layer: 7 is out of range 0..2" in screen_text(app)
        await fill(pilot, **{"steer-layer": "2", "steer-positions": "last", "steer-coeff": "x"})
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "coefficient: not a number: 'x'" in screen_text(app)
        await fill(pilot, **{"steer-coeff": "-3"})
        app.screen.query_one("#steer-coeff", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        steer = SteeringVector(2, "love-hate", -3.0, "last")
        assert [e.intervention for e in app.bench.edits.stack.entries] == [steer]
        result = app.bench.result
        np.testing.assert_allclose(result.prediction.logits,
                                   direct_run(engine, [steer]).prediction.logits, atol=1e-5)
        # Only the last position is steered: the residual norms of every earlier position are unchanged.
        unsteered = engine.run(IOI_PAIR.clean, views=Views(stats=True)).stats.resid_norm  # [layer, pos]
        steered = result.stats.resid_norm
        np.testing.assert_allclose(steered[:, :-1], unsteered[:, :-1], rtol=1e-5)
        np.testing.assert_allclose(steered[:2], unsteered[:2], rtol=1e-5)  # layers before the vector
        assert abs(steered[2, -1] - unsteered[2, -1]) > 1e-3
        assert result.metric != result.baseline.metric


async def test_load_vector_from_files_and_bad_files_go_to_the_status_bar(tmp_path):
    engine = tiny_engine("llama")
    width = engine.info.d_model
    good = np.linspace(-1, 1, width, dtype=np.float32)
    np.save(tmp_path / "good.npy", good)
    save_file({"honesty": (2 * good).reshape(1, -1)}, str(tmp_path / "honest.safetensors"))
    np.save(tmp_path / "narrow.npy", np.ones(3, dtype=np.float32))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01not a header")

    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)

        async def load(path: str, name: str = "", coeff: str = "4.0") -> None:
            await pilot.press("V")
            await pilot.pause()
            assert isinstance(app.screen, SteeringScreen)
            await fill(pilot, **{"steer-path": path, "steer-name": name, "steer-coeff": coeff})
            await pilot.press("ctrl+s")
            await settle(pilot)

        await load(str(tmp_path / "good.npy"))  # the name defaults to the file's stem
        np.testing.assert_array_equal(engine.vectors["good"], good)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [SteeringVector(0, "good", 4.0)]
        assert app.bench.result.metric != app.bench.result.baseline.metric

        await load(str(tmp_path / "honest.safetensors"), coeff="1")
        np.testing.assert_array_equal(engine.vectors["honest"], 2 * good)
        assert len(app.bench.edits.stack.entries) == 2

        for file, message in (("narrow.npy", "steering vector 'narrow' has width 3, the model needs 32"),
                              ("pickled.npy", "pickled.npy is not a readable .npy array"),
                              ("broken.safetensors", "broken.safetensors is not a readable .safetensors")):
            await load(str(tmp_path / file))
            assert message in status(app), status(app)
            assert len(app.bench.edits.stack.entries) == 2 and app.is_running
        assert "narrow" not in engine.vectors and "pickled" not in engine.vectors

        await pilot.press("V")
        await pilot.pause()
        await fill(pilot, **{"steer-path": str(tmp_path / "missing.npy")})
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "file: no such file" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert len(app.bench.edits.stack.entries) == 2


async def test_knockout_from_the_attention_map_zeroes_the_cell_and_rows_still_sum_to_one():
    engine = tiny_engine("llama")
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        baseline_pattern = app.bench.result.attention["L0.H0"].copy()
        await pilot.press("K")  # focuses the attention map; its cursor starts on the last query
        await settle(pilot)
        attention_map = app.query_one(AttentionMap)
        assert attention_map.has_focus and attention_map.cursor == (13, 0)
        assert "query 13" in str(app.query_one("#attention-caption").render())
        await pilot.press("up", "right", "right", "k")  # edge 12 -> 2 of L0.H0
        await settle(pilot)
        knockout = AttentionKnockout(0, 0, 12, 2)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [knockout]
        pattern = app.bench.result.attention["L0.H0"]
        assert baseline_pattern[12, 2] > 0 and pattern[12, 2] == 0.0
        np.testing.assert_allclose(pattern.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(pattern[:12], baseline_pattern[:12])  # other queries untouched
        assert attention_map.values[12, 2] == 0.0 and attention_map.marks == {(12, 2): "×"}
        assert app.query_one(HeadGrid).marks == {(0, 0): "k"}
        assert app.bench.result.metric == pytest.approx(direct_run(engine, [knockout]).metric, abs=1e-5)

        await pilot.press("enter")  # the same edge again: the knockout goes, the pattern comes back
        await settle(pilot)
        assert app.bench.edits.stack.entries == ()
        np.testing.assert_array_equal(app.bench.result.attention["L0.H0"], baseline_pattern)

        await pilot.press("home", "pageup", "pageup", "left", "left", "left", "k")  # edge 0 -> 0
        await settle(pilot)
        assert attention_map.cursor == (0, 0)
        assert app.bench.edits.stack.entries == ()
        assert "not added: knockout L0.H0 0->0: the first token attends only to itself" in status(app)
        await pilot.press("escape")
        assert app.query_one(HeadGrid).has_focus


async def test_knockout_by_positions_from_the_palette():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("j", "l")  # L1.H1
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Knock out attention edge by")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        app.screen.query_one("#ask-input", Input).value = "9,3"
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [AttentionKnockout(1, 1, 9, 3)]
        assert app.bench.result.attention["L1.H1"][9, 3] == 0.0


async def test_component_ablation_and_neuron_clamp_forms_change_the_metric():
    engine = tiny_engine("llama")
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        base_metric = app.bench.result.baseline.metric
        await pilot.press("j", "A")  # attention of layer 1
        await pilot.pause()
        assert isinstance(app.screen, EditInterventionScreen)
        await fill(pilot, **{"field-mode": "mean"})
        app.screen.query_one("#field-mode", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        attn = ComponentAblation(1, "attn", "mean")
        assert [e.intervention for e in app.bench.edits.stack.entries] == [attn]
        assert app.bench.result.metric != base_metric
        assert app.bench.result.metric == pytest.approx(direct_run(engine, [attn]).metric, abs=1e-5)

        await pilot.press("j", "M")  # MLP of layer 2, resampled from the corrupted prompt
        await pilot.pause()
        await fill(pilot, **{"field-mode": "resample"})
        app.screen.query_one("#field-mode", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        mlp = ComponentAblation(2, "mlp", "resample")

        await pilot.press("N")
        await pilot.pause()
        await fill(pilot, **{"field-neuron": "999", "field-value": "8"})
        app.screen.query_one("#field-value", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        # the engine refuses it: the form stays open with the reason under the field
        assert "clamp L2.N999=8: neuron 999 is out of range 0..63" in str(app.screen.query_one("#error-neuron").render())
        assert [e.intervention for e in app.bench.edits.stack.entries] == [attn, mlp]

        await fill(pilot, **{"field-neuron": "5", "field-value": "8"})
        app.screen.query_one("#field-value", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        clamp = NeuronClamp(2, 5, 8.0)
        stack = [attn, mlp, clamp]
        assert [e.intervention for e in app.bench.edits.stack.entries] == stack
        assert app.bench.result.metric == pytest.approx(direct_run(engine, stack).metric, abs=1e-5)
        assert app.bench.result.metric != direct_run(engine, stack[:2]).metric
        assert list_lines(app) == ["[x] mean L1.attn (ref)", "[x] resample L2.mlp", "[x] clamp L2.N5=8"]
        assert "[resample L2.mlp, clamp L2.N5=8]" in status(app)  # the selected layer's edits
        grid = app.query_one(HeadGrid)
        assert grid.row_marks == {1, 2}  # layers with a whole-layer edit are flagged on the grid
        assert [grid.render_line(y).text[:3] for y in (1, 2, 3)] == ["L0 ", "L1*", "L2*"]
        await pilot.press("X")  # remove them all
        await settle(pilot)
        assert grid.row_marks == set()
        assert grid.render_line(2).text[:3] == "L1 "


async def test_resample_key_ablates_from_the_corrupted_prompt():
    engine = tiny_engine("llama")
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("j", "j", "l", "R")
        await settle(pilot)
        ablation = HeadAblation(2, 1, mode="resample")
        assert [e.intervention for e in app.bench.edits.stack.entries] == [ablation]
        assert app.query_one(HeadGrid).marks == {(2, 1): "r"}
        assert app.bench.result.metric == pytest.approx(direct_run(engine, [ablation]).metric, abs=1e-5)
        assert app.bench.result.metric != app.bench.result.baseline.metric


async def test_add_intervention_chooses_a_kind_and_fills_its_form():
    engine = tiny_engine("llama")
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("plus")
        await pilot.pause()
        assert isinstance(app.screen, ChooseScreen)
        await pilot.press("down", "down", "down", "down", "down", "enter")  # neuron clamp
        await pilot.pause()
        assert isinstance(app.screen, EditInterventionScreen)
        assert app.screen.title_text == "add neuron clamp"
        await fill(pilot, **{"field-value": "-4"})
        app.screen.query_one("#field-value", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [NeuronClamp(0, 0, -4.0)]

        await pilot.press("plus")  # a steering vector with none built yet: the build dialog opens
        await pilot.pause()
        await pilot.press("end", "up", "enter")  # steering vector, just above q/k/v patching
        await pilot.pause()
        assert isinstance(app.screen, SteeringScreen)
        await pilot.press("escape")
        await settle(pilot)
        assert len(app.bench.edits.stack.entries) == 1


async def test_editing_to_an_impossible_value_is_refused():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space", "enter")
        await pilot.pause()
        await fill(pilot, **{"field-head": "99"})
        app.screen.query_one("#field-head", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadAblation(0, 0)]
        # the dry run refuses it before the form closes: the reason stays beside the field
        assert "zero L0.H99: head 99 is out of range 0..3" in str(app.screen.query_one("#error-head").render())


async def test_workbench_keys_are_inert_and_hidden_under_the_sessions_screen():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        shown = {b.binding.key for b in app.screen.active_bindings.values() if b.binding.show}
        assert {"space", "v", "K", "plus"} <= shown  # the workbench footer lists the new actions
        await pilot.press("S")
        await pilot.pause()
        assert app.screen is not app.workbench
        actions = {b.binding.action for b in app.screen.active_bindings.values()}
        assert not any(action.split("(")[0] in ("ablate", "build_vector", "knockout", "generate")
                       for action in actions)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert not any("Zero-ablate" in title or "steering" in title for title in titles)
        await pilot.press("v", "g", "K")
        await settle(pilot)
        assert app.bench.edits.stack.entries == () and app.screen is not app.workbench
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.workbench
