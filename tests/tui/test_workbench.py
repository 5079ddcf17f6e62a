"""Pilot tests of the workbench on a tiny random model: interventions, undo, palette, errors, bad input."""

from __future__ import annotations

import numpy as np

from mechscope.engine.errors import InterventionError, LoadError
from mechscope.engine.interventions import HeadAblation, HeadScale
from mechscope.engine.results import GeneratedToken
from mechscope.screens.help import HelpScreen
from mechscope.screens.load_error import LoadErrorScreen
from mechscope.tui.app import COMMANDS, IOI_PAIR, TYPING_DEBOUNCE_S, MechscopeApp, key_label
from mechscope.tui.type_ahead import FOCUS_WAIT_S
from mechscope.tui.widgets.head_grid import HeadGrid
from mechscope.tui.widgets.interventions import InterventionList
from mechscope.tui.widgets.views import GenerationView, shown_continuation
from tests.tui.helpers import CountingEngine, make_app, screen_text, settle


def text_of(app, selector: str) -> str:
    rendered = app.query_one(selector).render()
    return getattr(rendered, "plain", str(rendered))


async def test_first_start_runs_the_ioi_pair():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        values = app.bench.inputs
        assert values == IOI_PAIR
        result = app.bench.result
        assert result is not None
        assert result.tokens[1] == " Mary" and len(result.tokens) == 14
        assert result.metric_info.target_pieces == (" Mary",)
        predictions = text_of(app, "#predictions")
        assert f"logit diff {result.metric:+.3f}" in predictions
        assert "13·to" in text_of(app, "#tokens")
        assert "tiny-llama" in text_of(app, "#title-model")
        assert "3 layers × 4 heads" in text_of(app, "#title-model")
        assert "session" in text_of(app, "#title-session")
        grid = app.query_one(HeadGrid)
        assert grid.values.shape == (3, 4)
        np.testing.assert_array_equal(grid.values, result.attribution.heads)


async def test_toggling_an_ablation_changes_predictions_and_off_restores_baseline_exactly():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        baseline = app.bench.result.prediction
        await pilot.press("down", "right", "space")  # zero-ablate L1.H1
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadAblation(1, 1, mode="zero")]
        ablated = app.bench.result
        assert not np.array_equal(ablated.prediction.logits, baseline.logits)
        assert ablated.metric != baseline.metric
        np.testing.assert_array_equal(ablated.baseline.logits, baseline.logits)
        predictions = text_of(app, "#predictions")
        assert f"{baseline.metric:+.3f} → {ablated.metric:+.3f}" in predictions
        assert app.query_one(HeadGrid).marks == {(1, 1): "x"}

        # Off from the interventions list: the run without it equals the baseline bit for bit.
        app.query_one(InterventionList).focus()
        await pilot.press("space")
        await settle(pilot)
        assert app.bench.edits.stack.entries[0].intervention.enabled is False
        np.testing.assert_array_equal(app.bench.result.prediction.logits, baseline.logits)
        assert app.bench.result.metric == baseline.metric
        assert [t.id for t in app.bench.result.top] == [t.id for t in baseline.top]
        assert app.query_one(HeadGrid).marks == {}
        assert "[ ] zero L1.H1" in str(app.query_one(InterventionList).get_option_at_index(0).prompt)

        # Space on the grid again removes nothing new: it re-enables the disabled twin.
        app.query_one(HeadGrid).focus()
        await pilot.press("space")
        await settle(pilot)
        assert len(app.bench.edits.stack.entries) == 1 and app.bench.edits.stack.entries[0].intervention.enabled
        np.testing.assert_array_equal(app.bench.result.prediction.logits, ablated.prediction.logits)
        await pilot.press("space")
        await settle(pilot)
        assert app.bench.edits.stack.entries == ()
        np.testing.assert_array_equal(app.bench.result.prediction.logits, baseline.logits)


async def test_grid_cursor_moves_with_arrows_and_hjkl_and_stays_inside():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        assert grid.cursor == (0, 0)
        await pilot.press("j", "j", "l", "right", "right")
        assert grid.cursor == (2, 3)
        await pilot.press("down", "l", "k", "h", "left")
        assert grid.cursor == (1, 1)
        await pilot.press("up", "up", "up")
        assert grid.cursor == (0, 1)
        assert "L0.H1" in text_of(app, "#status-bar")


async def test_palette_runs_an_action():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Zero-ablate head")
        await pilot.pause(0.3)  # the palette searches asynchronously
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadAblation(0, 0)]
        assert app.bench.result.metric != app.bench.result.baseline.metric


async def test_palette_offers_every_action():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for command in COMMANDS:
            if command.action not in ("help", "quit"):
                assert any(title.startswith(command.title) for title in titles), command.title


async def test_scale_asks_the_factor():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("j", "s")
        await pilot.pause()
        await pilot.press("x", "enter")  # not a number: the dialog stays and says why
        await pilot.pause()
        assert "not a number" in screen_text(app)
        await pilot.press("backspace", "0", ".", "5", "enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadScale(1, 0, factor=0.5)]
        await pilot.press("s")  # again on the same head: the factor is changed, not duplicated
        await pilot.pause()
        await pilot.press("3", "enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadScale(1, 0, factor=3.0)]
        assert app.query_one(HeadGrid).marks == {(1, 0): "s"}


async def test_enter_edits_the_selected_heads_intervention():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space", "enter")
        await pilot.pause()
        app.screen.query_one("#field-mode").value = "mean"
        app.screen.query_one("#field-mode").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadAblation(0, 0, mode="mean")]


async def test_engine_error_shows_in_status_bar_and_app_keeps_running():
    engine = CountingEngine()
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        good_metric = app.bench.result.metric
        engine.fail_with = InterventionError("zero L1.H99: head 99 is out of range 0..3")
        await pilot.press("space")
        await settle(pilot)
        assert "run failed: zero L1.H99: head 99 is out of range 0..3" in text_of(app, "#status-bar")
        assert app.is_running
        engine.fail_with = None
        await pilot.press("u")
        await settle(pilot)
        assert "failed" not in text_of(app, "#status-bar")
        assert app.bench.result.metric == good_metric


async def test_unexpected_worker_exception_is_reported_not_fatal():
    engine = CountingEngine()
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engine.fail_with = RuntimeError("CUDA out of memory")
        await pilot.press("space")
        await settle(pilot)
        assert "RuntimeError: CUDA out of memory" in text_of(app, "#status-bar")
        assert app.is_running


async def test_empty_prompt_gives_a_message_and_no_engine_call():
    engine = CountingEngine()
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        calls = len(engine.calls)
        await pilot.press("slash")
        app.query_one("#clean").value = ""
        await pilot.press("enter")
        await settle(pilot)
        assert len(engine.calls) == calls
        assert "empty prompt: type a prompt to run the model" in text_of(app, "#prompt-notes")
        await pilot.press("g")  # focus is in the prompt: g is typed, not generate
        await settle(pilot)
        assert app.query_one("#clean").value == "g"


async def test_overlong_prompt_shows_truncation():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.query_one("#clean").value = "When Mary " * 200
        app.query_one("#clean").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.bench.result.truncated_from == 401
        assert "prompt truncated: 401 tokens cut to 256 (model context 256)" in text_of(app, "#prompt-notes")


async def test_multi_token_target_shows_pieces_and_which_counts():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.query_one("#target").value = " Maryland"
        app.query_one("#target").focus()
        await pilot.press("enter")
        await settle(pilot)
        notes = text_of(app, "#prompt-notes")
        assert "target ' Maryland' is 3 tokens [' Mary', 'l', 'and']; only ' Mary' counts" in notes


async def test_typing_is_debounced():
    engine = CountingEngine()
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        calls = len(engine.calls)
        await pilot.press("slash", "end", *" Mary")
        assert len(engine.calls) == calls  # nothing ran while typing
        await pilot.pause(0.5)
        await settle(pilot)
        assert len(engine.calls) == calls + 1
        assert app.bench.result.prompt == IOI_PAIR.clean + " Mary"


async def test_model_that_fails_to_load_shows_error_screen():
    def broken(progress):
        progress("reading config", 0.1)
        raise LoadError("/nope is not a model folder, .gguf file or cached hub id")

    app = MechscopeApp(broken, source="/nope")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, LoadErrorScreen)
        assert "/nope is not a model folder" in screen_text(app)
        await pilot.press("q")
        await pilot.pause(FOCUS_WAIT_S + 0.1)  # a screen with nothing to focus gets its keys after this
    assert app.return_code == 2


async def test_ui_is_usable_while_loading():
    import threading

    release = threading.Event()
    engine = CountingEngine()

    def slow(progress):
        progress("converting the demo model", 0.5)
        release.wait(10)
        return engine

    app = MechscopeApp(slow, source="demo")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.1)
        assert "converting the demo model 50%" in text_of(app, "#title-model")
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("slash", "end", "!")
        assert app.query_one("#clean").value.endswith("to!")
        release.set()
        await settle(pilot)
        assert app.bench.result is not None and app.bench.result.prompt.endswith("to!")


async def test_help_lists_every_key():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        listed = [key for key, _ in app.screen.keys]
        for command in COMMANDS:
            assert key_label(command.keys) in listed
        assert "a * after a layer label" in screen_text(app)  # the grid's marks are explained
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_patch_needs_a_corrupted_prompt():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.query_one("#corrupted").value = ""
        await pilot.pause(TYPING_DEBOUNCE_S + 0.2)  # let the run the edit schedules finish first
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert app.bench.edits.stack.entries == ()
        assert "corrupted prompt" in text_of(app, "#status-bar")


async def test_cycle_grid_metric_shows_sink_scores():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        grid = app.query_one(HeadGrid)
        assert grid.metric_name == "sink"
        np.testing.assert_array_equal(grid.values, app.bench.result.sink_scores)


async def test_head_patching_sweep_streams_into_grid_and_sweep_tab():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        sweep = app.bench.sweeps.states["head"].result
        assert sweep.complete and sweep.values.shape == (3, 4)
        grid = app.query_one(HeadGrid)
        assert grid.metric_name == "patching"
        np.testing.assert_array_equal(grid.values, sweep.values)
        summary = text_of(app, "#sweep-summary")
        assert "head patching  3/3 layers  complete" in summary
        assert app.query_one("#views").active == "tab-sweep"


async def test_grid_hides_a_sweep_once_the_prompt_changes():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        assert np.isfinite(grid.values).all()
        app.query_one("#clean").value = IOI_PAIR.clean.replace("drink", "book")
        app.query_one("#clean").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert grid.metric_name == "patching"
        assert np.isnan(grid.values).all()  # the sweep was for the other prompt
        assert grid.border_subtitle == "prompts changed: rerun the sweep"
        app.query_one("#clean").value = IOI_PAIR.clean
        await pilot.press("enter")
        await settle(pilot)
        np.testing.assert_array_equal(grid.values, app.bench.sweeps.states["head"].result.values)  # back to its inputs


async def test_generation_side_by_side():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await settle(pilot)
        baseline, intervened = app.bench.generations.latest.tokens["baseline"], app.bench.generations.latest.tokens["intervened"]
        assert len(baseline) == len(intervened) > 0
        assert [t.id for t in baseline] == [t.id for t in intervened]  # no interventions yet
        shown = text_of(app, "#gen-baseline")
        assert shown == IOI_PAIR.clean + "".join(shown_continuation(t.text).plain for t in baseline)


def test_generated_line_breaks_and_control_characters_show():
    """A continuation of newlines must not look empty, and no control character reaches the terminal."""
    assert shown_continuation("a\nb").plain == "a↵\nb"
    assert shown_continuation("\t\x1b[2J ok").plain == "→\\x1b[2J ok"
    assert shown_continuation("·Mary é").plain == "·Mary é"


async def test_a_generation_lane_follows_its_newest_token():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("g")  # the generate tab, with a generation of its own
        await settle(pilot)
        view = app.query_one(GenerationView)
        view.reset("prompt")
        for i in range(60):
            view.append("baseline", GeneratedToken(i, "\n", 0.9))
        await settle(pilot)
        box = app.query_one("#gen-baseline-box")
        assert box.max_scroll_y > 0 and box.scroll_y == box.max_scroll_y  # the newest line is in view
        assert text_of(app, "#gen-baseline").count("↵") == 60
        box.scroll_home(animate=False)
        await settle(pilot)
        view.append("baseline", GeneratedToken(1, "more", 0.9))
        await settle(pilot)
        assert box.scroll_y == 0  # scrolled back to read: left where the reader put it


async def test_attention_view_follows_the_cursor():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert text_of(app, "#attention-caption").startswith("L0.H0")
        await pilot.press("j", "l")
        await pilot.pause(0.3)  # the cursor debounce
        await settle(pilot)
        assert text_of(app, "#attention-caption").startswith("L1.H1")
        pattern, _ = app.bench.attention["L1.H1"]
        assert pattern.shape == (14, 14)
        np.testing.assert_allclose(pattern.sum(axis=1), 1.0, atol=1e-5)
