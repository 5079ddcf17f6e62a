"""Workbench defects of issue 10 seen by a new user: hotkeys typed into fields, dialogs, marks, sizes."""

from __future__ import annotations

from contextlib import asynccontextmanager

from textual.widgets import Input, TextArea

from mechscope.tui.app import IOI_PAIR
from mechscope.tui.widgets.head_grid import HeadGrid
from tests.tui.helpers import make_app, screen_text, settle


async def press_each(pilot, *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await pilot.pause()


async def test_keys_never_type_into_a_field_reached_without_entering_it():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "1", "tab", "tab", "tab", "3", "question_mark", "escape", "g")
        await settle(pilot)
        await press_each(pilot, "2", "tab", "tab", "tab", "5", "v", "escape", "z")
        await press_each(pilot, "3", "tab", "g", "o")  # a tab switch left no focus: Tab then letters
        await press_each(pilot, "shift+tab", "shift+tab", "x", "backspace")  # back into the fields
        await settle(pilot)
        assert app.query_one("#clean", Input).value == IOI_PAIR.clean
        assert app.query_one("#foil", Input).value == IOI_PAIR.foil
        assert app.query_one("#corrupted", Input).value == IOI_PAIR.corrupted
        await press_each(pilot, "escape", "slash", "end", "x")  # deliberately entered: letters type
        assert app.query_one("#clean", Input).value == IOI_PAIR.clean + "x"


async def test_a_field_reached_with_tab_is_entered_with_enter():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.query_one("#target", Input).focus()
        await pilot.pause()
        assert "enter or click to edit" in screen_text(app)
        await press_each(pilot, "g")
        assert app.query_one("#target", Input).value == IOI_PAIR.target
        await press_each(pilot, "enter", "end", "s")
        assert app.query_one("#target", Input).value == IOI_PAIR.target + "s"


async def test_every_focusable_pane_shows_a_focus_cue():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        looks = lambda widget: (str(widget.styles.border_top), str(widget.styles.background))  # noqa: E731
        seen = 0
        for _ in range(9):
            focused = app.focused
            assert focused is not None
            focused_look = looks(focused)
            await press_each(pilot, "tab")
            if app.focused is not focused:
                assert looks(focused) != focused_look, f"{focused!r} looks the same focused and not"
                seen += 1
        assert seen >= 8


async def test_a_too_small_terminal_says_so_and_acts_on_nothing():
    from mechscope.screens.too_small import TooSmallScreen

    app = make_app(record=False)
    async with app.run_test(size=(60, 20)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, TooSmallScreen)
        assert "terminal too small: 80×24 needed" in screen_text(app)
        await press_each(pilot, "space", "g", "w", "slash", "x", "ctrl+p")
        await settle(pilot)
        assert isinstance(app.screen, TooSmallScreen)
        assert app.bench.edits.stack.entries == () and app.bench.generations.latest is None and not app.bench.sweeps.states
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert not isinstance(app.screen, TooSmallScreen)
        await press_each(pilot, "space")
        await settle(pilot)
        assert len(app.bench.edits.stack.entries) == 1
        await pilot.resize_terminal(40, 12)
        await settle(pilot)
        assert "terminal too small: 80×24 needed (now 40×12)" in screen_text(app)


async def test_a_form_stays_open_on_a_value_the_engine_refuses_with_the_error_beside_the_field():
    from mechscope.screens.edit_intervention import EditInterventionScreen

    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "plus", "enter")  # add a head ablation (the first kind offered)
        assert isinstance(app.screen, EditInterventionScreen)
        for field, typed, reason in (("head", "-1", "head -1 is out of range 0..3"),
                                     ("layer", "99", "layer 99 is out of range 0..2"),
                                     ("head", "abc", "head: 'abc' is not a whole number"),
                                     ("head", "", "head: empty: type a value"),
                                     ("positions", "x", "positions: 'x' is not a whole number")):
            for name, value in (("layer", "0"), ("head", "1"), ("positions", "")):
                app.screen.query_one(f"#field-{name}", Input).value = value
            app.screen.query_one(f"#field-{field}", Input).value = typed
            app.screen.query_one(f"#field-{field}", Input).focus()
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, EditInterventionScreen), typed
            beside = str(app.screen.query_one(f"#error-{field}").render())
            assert reason in beside, (typed, beside)
            assert app.screen.query_one(f"#field-{field}", Input).has_class("-invalid")
        assert app.bench.edits.stack.entries == ()
        app.screen.query_one("#field-positions", Input).value = ""
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, EditInterventionScreen)
        assert [e.intervention.label for e in app.bench.edits.stack.entries] == ["zero L0.H1"]


@asynccontextmanager
async def dialog_opened_by(key: str, kind: type):
    """A workbench on the tiny model with the dialog `key` opens (of type `kind`) on top."""
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, key)
        assert isinstance(app.screen, kind)
        yield app, pilot


def beside(app, field: str) -> str:
    """The error line under a form's field, '' while it is hidden."""
    error = app.screen.query_one(f"#error-{field}")
    return str(error.render()) if error.display else ""


async def test_generation_settings_show_each_problem_beside_its_field():
    from mechscope.screens.generation_options import GenerationOptionsScreen

    async with dialog_opened_by("G", GenerationOptionsScreen) as (app, pilot):
        fields = {name: app.screen.query_one(f"#gen-{name}", Input)
                  for name in ("max_new_tokens", "temperature", "seed")}
        fields["max_new_tokens"].value, fields["temperature"].value = "999", "nan"
        fields["seed"].focus()
        await press_each(pilot, "enter")
        assert isinstance(app.screen, GenerationOptionsScreen)
        assert beside(app, "max_new_tokens") == "max new tokens must be in 1..512, got 999"
        assert "temperature must be a finite number" in beside(app, "temperature")
        assert beside(app, "seed") == ""
        assert [name for name, field in fields.items() if field.has_class("-invalid")] == ["max_new_tokens",
                                                                                          "temperature"]
        assert app.screen.focused is fields["max_new_tokens"]  # the first field to fix
        fields["max_new_tokens"].value = "12"
        await press_each(pilot, "enter")
        assert beside(app, "max_new_tokens") == "" and not fields["max_new_tokens"].has_class("-invalid")
        assert app.screen.focused is fields["temperature"] and "finite" in beside(app, "temperature")
        fields["temperature"].value = "0.7"
        await press_each(pilot, "enter")
        assert not isinstance(app.screen, GenerationOptionsScreen)
        settings = app.bench.generations.settings
        assert (settings.max_new_tokens, settings.temperature, settings.seed) == (12, 0.7, 0)


async def test_the_steering_dialog_shows_a_fields_problem_beside_it_and_the_rest_under_the_form():
    from mechscope.screens.steering import SteeringScreen

    async with dialog_opened_by("v", SteeringScreen) as (app, pilot):
        layer = app.screen.query_one("#steer-layer", Input)
        layer.value = "7"
        await press_each(pilot, "ctrl+s")
        assert beside(app, "layer") == "layer: 7 is out of range 0..2"
        assert layer.has_class("-invalid") and app.screen.focused is layer
        assert str(app.screen.query_one("#steer-error").render()) == ""
        layer.value = "1"
        app.screen.query_one("#steer-negative", TextArea).clear()
        await press_each(pilot, "ctrl+s")  # no negative prompt: a problem of no one field
        assert beside(app, "layer") == "" and not layer.has_class("-invalid")
        assert "type at least one positive and one negative prompt" in str(app.screen.query_one("#steer-error").render())


async def test_an_edge_out_of_range_keeps_the_knockout_dialog_open():
    from mechscope.screens.ask_value import AskValueScreen

    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.workbench.run_command("knockout_at")
        await pilot.pause()
        app.screen.query_one("#ask-input", Input).value = "99,0"
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, AskValueScreen)
        assert "position 99 is outside the prompt (14 tokens)" in screen_text(app)


async def test_the_steering_dialog_keeps_what_was_typed_and_the_palette_lists_keys_once():
    from textual.command import CommandPalette
    from textual.widgets import TextArea

    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "v")
        app.screen.query_one("#steer-name", Input).value = "calm"
        app.screen.query_one("#steer-coeff", Input).value = "2.5"
        app.screen.query_one("#steer-positive", TextArea).text = "I am calm"
        await press_each(pilot, "escape", "v")
        assert app.screen.query_one("#steer-name", Input).value == "calm"
        assert app.screen.query_one("#steer-coeff", Input).value == "2.5"
        assert app.screen.query_one("#steer-positive", TextArea).text == "I am calm"
        await press_each(pilot, "escape")
        titles = [command.title for command in app.get_system_commands(app.workbench)]
        assert sum(title.startswith("Keys") for title in titles) == 1
        assert not isinstance(app.screen, CommandPalette)


def test_a_session_error_uses_an_before_a_vowel():
    import pytest

    from mechscope.sessions import Session
    from mechscope.sessions.store import SessionError

    session = Session.create("grammar")
    with pytest.raises(SessionError, match="cannot record an intervention event"):
        session.record("intervention", bogus=float("nan"))


async def test_the_list_shows_positions_and_the_grid_every_mark_of_a_head():
    from mechscope.engine.interventions import HeadAblation, HeadScale

    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "m", "s")
        app.screen.query_one("#ask-input", Input).value = "3"
        await pilot.press("enter")
        await settle(pilot)
        assert [e.intervention for e in app.bench.edits.stack.entries] == [HeadAblation(0, 0, "mean"),
                                                                     HeadScale(0, 0, 3.0)]
        assert app.query_one(HeadGrid).marks[(0, 0)] == "ms"
        await press_each(pilot, "enter")  # edit the scale: positions 12,13 only
        app.screen.query_one("#field-positions", Input).value = "12,13"
        app.screen.query_one("#field-positions", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        lines = app.query_one("#interventions")
        shown = [str(lines.get_option_at_index(i).prompt) for i in range(2)]
        assert shown == ["[x] mean L0.H0 (ref)", "[x] scale L0.H0 x3 @12,13"]
        await press_each(pilot, "p")
        await settle(pilot)
        assert app.query_one(HeadGrid).marks[(0, 0)] == "m+"
        assert "patch L0.H0 ← corrupted" in str(lines.get_option_at_index(2).prompt)


async def test_a_target_without_its_leading_space_is_named_and_T_uses_the_spaced_token():
    import dataclasses

    import numpy as np

    from mechscope.engine.testing import tiny_engine
    from mechscope.workbench.spacing import first_ids

    engine = tiny_engine("llama")
    ids = first_ids(engine.tokenize)
    logits = engine.run(IOI_PAIR.clean).baseline.logits  # [vocab]
    word = next(w for w in ("Mary", "John", "store", "drink", "went", "the", "and", "When", "gave", "to")
                if (pair := ids(w)) is not None and logits[pair[1]] > logits[pair[0]])
    app = make_app(engine, record=False, initial=dataclasses.replace(IOI_PAIR, target=word))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        notes = str(app.query_one("#prompt-notes").render())
        assert f"target {word!r} has no leading space; the model predicts {' ' + word!r}" in notes
        before = app.bench.result.metric
        await press_each(pilot, "T")
        await settle(pilot)
        assert app.query_one("#target", Input).value == " " + word
        assert app.bench.run.request.metric.target == " " + word
        assert "no leading space" not in str(app.query_one("#prompt-notes").render())
        assert not np.isclose(app.bench.result.metric, before)


async def test_the_full_error_is_one_key_away_when_the_status_line_cuts_it():
    from mechscope.engine.errors import InterventionError
    from mechscope.screens.message import MessageScreen
    from tests.tui.helpers import CountingEngine

    engine = CountingEngine()
    app = make_app(engine, record=False)
    long = "zero L0.H0: " + "a very long reason " * 12 + "END"
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        engine.fail_with = InterventionError(long)
        await press_each(pilot, "space")
        await settle(pilot)
        assert "E full message" in str(app.query_one("#status-bar").render())
        assert app.query_one("#predictions").border_title == "predictions (stale: the last run failed)"
        await press_each(pilot, "E")
        assert isinstance(app.screen, MessageScreen)
        assert long in app.screen.text and app.screen.error
        await press_each(pilot, "escape")
        assert not isinstance(app.screen, MessageScreen)
        await pilot.click("#status-bar")
        await pilot.pause()
        assert isinstance(app.screen, MessageScreen)


async def test_views_open_on_what_matters_and_scroll_without_focus():
    from textual.widgets import DataTable

    from mechscope.tui.widgets.heatmap import Heatmap
    from mechscope.tui.widgets.views import AttentionMap

    long_prompt = " ".join(["When Mary and John went to the store, John gave a drink to Mary."] * 3) + \
        " Then John gave a drink to"
    import dataclasses
    app = make_app(record=False, initial=dataclasses.replace(IOI_PAIR, clean=long_prompt,
                                                             corrupted=long_prompt.replace("Then John", "Then Mary")))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        attention = app.query_one(AttentionMap)
        n_tokens = len(app.bench.result.tokens)
        assert attention.cursor == (n_tokens - 1, 0)
        assert attention.scroll_offset.y > 0  # opened on the last query, not on query 0
        lens = app.bench.result.logit_lens
        await press_each(pilot, "2")
        await settle(pilot)
        table = app.query_one("#lens-table", DataTable)
        expected = lens.critical_layer if lens.critical_layer is not None else table.row_count - 1
        assert table.cursor_row == expected
        assert app.query_one(HeadGrid).has_focus
        await press_each(pilot, "shift+home")
        assert table.cursor_row == 0 and app.query_one(HeadGrid).cursor == (0, 0)
        await press_each(pilot, "shift+end")
        assert table.cursor_row == table.row_count - 1
        await press_each(pilot, "1", "shift+home")
        assert attention.cursor == (0, 0)
        await press_each(pilot, "0")
        await pilot.pause()
        assert all(h.show_numbers for h in app.query(Heatmap))
        assert "█" in str(app.query_one(HeadGrid).border_subtitle)  # the colour legend


async def test_resuming_a_session_brings_its_sweep_back_to_the_grid():
    import numpy as np

    app = make_app(session_name="sweeps")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "w")
        await settle(pilot)
        swept = app.bench.sweeps.states["head"].result.values.copy()
        app.bench.recorder.close()
    again = make_app(session_name="sweeps")
    async with again.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        grid = again.query_one(HeadGrid)
        assert grid.metric_name == "patching"
        np.testing.assert_allclose(grid.values, swept, atol=1e-6)
        assert "(from the session)" in str(again.query_one("#sweep-summary").render())
        again.bench.recorder.close()


async def test_byte_tokens_show_their_byte_not_a_replacement_character():
    import dataclasses

    from mechscope.tui.token_labels import byte_label, piece_bytes

    assert piece_bytes("<0xE2>") == b"\xe2" and piece_bytes("Ã") == b"\xc3" and piece_bytes("Ġc") == b" c"
    assert byte_label(b"\xe2\x80") == "<0xE2><0x80>" and byte_label("é".encode()) == "é"
    app = make_app(record=False, initial=dataclasses.replace(IOI_PAIR, clean="naïve — café ✓ and then"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        strip = str(app.query_one("#tokens").render())
        assert "\ufffd" not in strip
        assert "<0xC3>" in strip and "<0xE2>" in strip
        assert "\ufffd" in "".join(app.bench.result.tokens)  # what the engine decodes is unchanged


def test_cell_numbers_fit_their_cell_and_never_read_as_minus_zero():
    from mechscope.tui.widgets.heatmap import cell_number

    assert [cell_number(v, 3) for v in (0.47, -0.47, 3.14, -7.1, 12.6, 123.4, -0.004, 1234.0)] == \
        [".47", "-.5", "3.1", "-7", "13", "123", "0", "1k"]
    assert [cell_number(v, 2) for v in (0.47, 1.0, 0.0)] == [".5", "1", "0"]


async def test_the_grid_and_views_are_marked_stale_after_a_failed_run_or_an_empty_prompt():
    from mechscope.engine.errors import InterventionError
    from tests.tui.helpers import CountingEngine

    engine = CountingEngine()
    app = make_app(engine, record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        views = app.query_one("#views")
        assert not views.has_class("-stale")
        engine.fail_with = InterventionError("zero L0.H0: something went wrong")
        await press_each(pilot, "space")
        await settle(pilot)
        assert views.has_class("-stale") and app.query_one(HeadGrid).has_class("-stale")
        assert views.border_title == "stale: the last run failed (E shows why)"
        engine.fail_with = None
        await press_each(pilot, "u")
        await settle(pilot)
        assert not views.has_class("-stale") and not app.query_one(HeadGrid).has_class("-stale")
        await press_each(pilot, "slash")
        app.query_one("#clean", Input).value = ""
        await press_each(pilot, "enter")
        await settle(pilot)
        assert views.border_title == "stale: the prompt is empty"


async def test_tab_from_a_field_being_edited_enters_the_next_field():
    app = make_app(record=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await press_each(pilot, "slash", "tab", "end", "x")
        assert app.query_one("#corrupted", Input).value == IOI_PAIR.corrupted + "x"
        await press_each(pilot, "escape", "tab", "g")  # from the grid, Tab reaches no field to edit
        assert app.query_one("#corrupted", Input).value == IOI_PAIR.corrupted + "x"
