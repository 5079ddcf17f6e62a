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
        shown = app.bench.selected, tuple(e.intervention for e in app.bench.edits.stack.entries)
        app.bench.recorder.close()
    return shown, Session.open(session).state().interventions


async def test_keys_in_a_burst_act_like_keys_one_by_one():
    from mechscope.engine.interventions import HeadAblation

    keys = "j l space j space h m"  # on the tiny model's 3 x 4 grid, from L0.H0
    expected = (HeadAblation(1, 1), HeadAblation(2, 1), HeadAblation(2, 0, mode="mean"))
    apart = await state_after(keys, together=False, session="apart")
    together = await state_after(keys, together=True, session="together")
    assert apart[0] == ((2, 0), expected)
    assert together == apart  # each key acted on the head the keys before it reached, and was recorded so
    assert tuple(iv for _, iv in together[1]) == expected


async def test_a_move_and_an_ablation_in_one_burst_ablate_the_head_reached():
    from mechscope.engine.interventions import HeadAblation

    for index, (keys, head) in enumerate((("l space", 1), ("l l l space", 3), ("l l h space", 1))):
        (selected, ablated), _ = await state_after(keys, together=True, session=f"burst-{index}")
        assert selected == (0, head) and ablated == (HeadAblation(0, head),)


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


# ---------------------------------------------------------------- sweep header, defaults (items 1, 7)

def plain_bench():
    from mechscope.workbench.controller import Workbench
    from mechscope.workbench.state import Inputs

    return Workbench(Inputs("When Mary and John went to the store, John gave a drink to",
                            "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"))


def sweep_result(base: float, source: float):
    import numpy as np

    from mechscope.engine.results import SweepResult

    values = np.array([[0.5, -1.0], [2.0, 0.0]], dtype=np.float32)  # [layer, head]
    return SweepResult("head", values, base, source, ["L0", "L1"], ["0", "1"], True, 0.1)


def test_denoising_header_names_the_patched_run_the_source_and_the_normalisation():
    bench = plain_bench()
    request = bench.sweeps.start("head", "denoising")
    header = bench.sweeps.header(request, sweep_result(-5.485, 6.120))
    assert "head denoising · on the unedited model" in header
    assert "patched run corrupted -5.485 · from clean +6.120 · gap +11.605" in header
    noising = bench.sweeps.header(bench.sweeps.start("head", "noising"), sweep_result(6.120, -5.485))
    assert "patched run clean +6.120 · from corrupted -5.485" in noising


async def test_sweep_view_shows_the_header_and_normalised_cells():
    from mechscope.tui.widgets.views import SweepView

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        bench = app.bench
        request = bench.sweeps.start("head", "denoising")
        app.workbench.part(SweepView, SweepView).show(sweep_result(-5.485, 6.120), running=False,
                                                      header=bench.sweeps.header(request, sweep_result(-5.485, 6.120)))
        await pilot.pause()
        text = str(app.workbench.query_one("#sweep-summary").render())
        assert "metric clean" not in text
        assert "patched run corrupted -5.485 · from clean +6.120" in text
        assert "L1.H0" in text and "+2.000  (+0.17 of the gap)" in text  # 2 / 11.605


def test_every_sweep_entry_point_follows_one_rule_and_the_header_says_so():
    from mechscope.engine.interventions import HeadAblation

    bench = plain_bench()
    bench.edits.add(HeadAblation(0, 1))
    assert bench.sweeps.on_top_default() is False
    for kind in ("head", "attn", "mlp", "resid", "atp"):
        request = bench.sweeps.start(kind, "denoising")
        assert request.interventions == ()
        assert "on the unedited model (1 active intervention not applied)" in \
            bench.sweeps.header(request)
    on_top = bench.sweeps.start("attn", "noising", on_top=True)
    assert on_top.interventions == (HeadAblation(0, 1),)
    assert "on top of 1 intervention: zero L0.H1" in bench.sweeps.header(on_top)


# ---------------------------------------------------------------- key hints (item 3)

def test_key_of_names_the_key_bound_to_every_action():
    from mechscope.tui.commands import COMMANDS, key_label, key_of

    for command in COMMANDS:
        if command.keys:
            assert key_of(command.action) == key_label(command.keys).split(" / ")[0]
    assert (key_of("set_numbers"), key_of("prompt_set"), key_of("set_sweep"), key_of("estimate")) == \
        ("O", "L", "H", "Z")


def test_set_tab_hints_name_the_bound_keys_and_are_separated():
    from mechscope.engine.prompt_sets import PromptRow, PromptSet
    from mechscope.tui.commands import key_of
    from mechscope.tui.widgets.set_view import estimate_text, summary_text, sweep_text

    bench = plain_bench()
    assert f"no prompt set: {key_of('prompt_set')} loads" in summary_text(bench.sets).plain
    bench.sets.pset = PromptSet("t", tuple(PromptRow(f"a{i}", f"b{i}", " x", " y") for i in range(3)))
    summary = summary_text(bench.sets).plain
    assert f"set numbers not computed ({key_of('set_numbers')})" in summary and "(T)" not in summary
    results = (sweep_text(bench.sets) + estimate_text(bench.sets)).plain
    assert f"set sweep: not run ({key_of('set_sweep')})\nestimate: not run ({key_of('estimate')})" in results


def test_no_hint_types_a_key_by_hand():
    """Hints in the screens and widgets name keys through key_of, never as a literal like "(T)"."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "mechscope"
    literal = re.compile(r"""["'][^"'\n]*(\([A-Z]\)|(^|[ (])([A-Za-z0-9?]|space|esc) (loads|reruns|runs|cycles|chooses|"""
                         r"""shows|ablates|steps)\b|press [A-Za-z0-9]\b)""")
    found = [f"{path.name}: {m.group(0)}" for folder in ("screens", "tui") for path in (root / folder).rglob("*.py")
             for m in literal.finditer(path.read_text()) if path.name != "commands.py"]
    assert found == []


# ---------------------------------------------------------------- steering norm (item 10)

def test_steering_norm_compares_with_the_median_after_the_first_position_and_warns():
    from types import SimpleNamespace

    import numpy as np

    from mechscope.engine.interventions import SteeringVector

    bench = plain_bench()
    bench.vectors.remember("v", np.full(4, 100.0))  # norm 200
    stats = SimpleNamespace(resid_norm=np.array([[22000.0, 170.0, 160.0, 180.0]]))  # [layer, pos]
    bench.run = SimpleNamespace(result=SimpleNamespace(stats=stats))
    steer = SteeringVector(1, "v", 4.0)
    added, resid = bench.vectors.norm(steer)
    assert (added, resid) == (800.0, 170.0)
    assert bench.vectors.note(steer) == " (|Δ| 800 vs median resid 170 after pos 0: LARGER than the residual)"
    small = SteeringVector(1, "v", 0.5)
    assert bench.vectors.note(small) == " (|Δ| 100 vs median resid 170 after pos 0)"


# ---------------------------------------------------------------- number mode (item 6)

async def test_number_mode_separates_cells_and_shows_exact_values_at_80_columns():
    import re

    import numpy as np

    from mechscope.tui.widgets.head_grid import HeadGrid

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        values = np.array([[-12.06, 0.01, 0.731], [0.92, -0.06, 12345.0]], dtype=np.float32)  # [layer, head]
        grid.set_data(values, ["L0", "L1"], ["0", "1", "2"])
        grid.set_marks({(1, 0): "="})  # a verified estimate cell
        await pilot.press("0")
        await pilot.pause()
        rows = ["".join(segment.text for segment in grid.render_line(y)) for y in (1, 2)]
        cells = [re.findall(r"\S+", row)[1:] for row in rows]  # after the row label
        assert cells == [["-12", ".01", ".73"], [".92", "-.06", "12k"]]  # = shows the exact value
        assert all(re.search(r"\d\s+[-.\d]", row) for row in rows)  # never two numbers run together
        assert grid.border_title == "DLA · L0.H0 -12.06"  # the cursor cell's exact value beside the grid
        await pilot.press("l")
        await pilot.pause()
        assert grid.border_title == "DLA · L0.H1 +0.01"


# ---------------------------------------------------------------- set tab rows (item 5)

async def test_set_tab_lists_every_row_with_its_numbers_and_enter_picks_a_row():
    import numpy as np

    from mechscope.tui.widgets.set_view import SetRowTable

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        app.screen.query_one("#ask-input", Input).value = "ioi 5"
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("space")  # an intervention, so "with" differs from "without"
        await settle(pilot)
        await pilot.press("O")
        await settle(pilot)
        sets = app.bench.sets
        result = sets.run.result
        table = app.query_one(SetRowTable)
        assert table.row_count == 5
        for index in range(5):
            row = table.get_row(str(index))
            assert str(row[0]) == str(index + 1)
            assert float(str(row[1])) == float(f"{result.baseline[index]:+.3f}")
            assert float(str(row[2])) == float(f"{result.values[index]:+.3f}")
            assert float(str(row[3])) == float(f"{result.values[index] - result.baseline[index]:+.3f}")
        summary = str(app.query_one("#set-numbers").render())
        assert f"Δ {np.mean(result.values - result.baseline):+.3f}" in summary  # on its own line
        assert all(len(line) <= 100 for line in summary.splitlines())
        table.focus()
        table.move_cursor(row=table.get_row_index("3"))
        await pilot.press("enter")
        await settle(pilot)
        assert sets.row == 3 and app.bench.inputs.clean == sets.pset.rows[3].clean


# ---------------------------------------------------------------- smaller items (item 12) and essentials

async def test_addresses_chooser_metric_and_ctrl_c_from_the_keys():
    from mechscope.screens.choose import ChooseScreen
    from mechscope.screens.grid import parse_grid_address

    assert parse_grid_address("L23.H3", 30, 9) == (23, 3)
    assert parse_grid_address("l23 h3", 30, 9) == (23, 3)
    assert parse_grid_address("L23", 30, 9) == (23, None)
    assert parse_grid_address("mlp 5", 30, 9) == (5, None)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("colon")
        app.screen.query_one("#ask-input", Input).value = "L1.H2"
        await pilot.press("enter")
        await settle(pilot)
        assert app.bench.selected == (1, 2)
        await pilot.press("space")
        await settle(pilot)
        assert [e.intervention.head for e in app.bench.edits.stack.entries] == [2]
        await pilot.press("C")
        await settle(pilot)
        assert isinstance(app.screen, ChooseScreen)
        assert [item[0] for item in app.screen.items][:4] == ["attribution", "sink", "patching", "atp"]
        await pilot.press("down", "enter")
        await settle(pilot)
        assert app.workbench.grid_part.metric == "sink"
        app.workbench.run_command("metric_kind")
        await settle(pilot)
        await pilot.press("down", "enter")  # logit diff, then prob
        await settle(pilot)
        assert app.bench.inputs.metric_kind == "prob"
        assert app.bench.run.request.metric.kind == "prob"
    from mechscope.screens.workbench import WorkbenchScreen

    assert any("ctrl+c" in binding.key.split(",") and "cancel" in binding.action
               for binding in WorkbenchScreen.BINDINGS if hasattr(binding, "key"))


async def test_dialogs_wrap_their_descriptions_and_the_header_names_the_server():
    from types import SimpleNamespace

    from mechscope.engine.testing import tiny_engine
    class Attached:
        def __init__(self) -> None:
            self.inner = tiny_engine("llama")
            self.place = SimpleNamespace(name="gpu-box", socket="/tmp/x.sock")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    app = make_app(Attached())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "attached to gpu-box" in str(app.query_one("#title-model").render())
        await pilot.press("L")
        await settle(pilot)
        label = app.screen.query_one("#ask-label")
        assert label.size.height >= 2  # the whole description, wrapped
        await pilot.press("escape")
        await pilot.press("G")
        await settle(pilot)
        hint = [w for w in app.screen.query("Static.dim")][-1]
        assert hint.size.width > 40  # not squeezed into the labels' 16-column width


async def test_a_choice_whose_description_wraps_continues_under_its_description():
    """'attribution' wrapped to the start of the next line of the export chooser and read like an item."""
    from textual.widgets import OptionList

    from mechscope.screens.research import EXPORTS

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
        options = app.screen.query_one(OptionList)
        lines = ["".join(segment.text for segment in options.render_line(y)).rstrip()
                 for y in range(options.size.height)]
    titles = [title for _, title, _ in EXPORTS]
    column = max(len(title) for title in titles) + 2
    drawn = [line.strip() for line in lines if line.strip()]
    assert len(drawn) > len(EXPORTS)  # one description does wrap at this width
    assert drawn[0] == "sweep as CSV" + " " * (column - len("sweep as CSV")) + "the latest sweep, one row per cell"
    for line in lines:
        if line.strip() and not any(line.lstrip().startswith(title) for title in titles):
            assert line[:column].strip() == "" and line[column] != " ", line


def test_sweep_csv_labels_keep_the_token():
    import numpy as np

    from mechscope.engine.results import SweepResult
    from mechscope.workbench.exports import sweep_to_csv

    result = SweepResult("resid", np.zeros((1, 3), dtype=np.float32), 1.0, 0.0, ["L0"], ["0", "1", "2"], True, 0.1)
    text = sweep_to_csv(result, tokens=["When", " John", " gave"])
    assert "L0 pos 1:  John" in text or "pos 1: " in text and "John" in text.splitlines()[2]


# ---------------------------------------------------------------- the sweep header at 80x24 (items 1, 7)

def test_the_short_sweep_header_keeps_every_fact_in_two_short_lines():
    from mechscope.engine.interventions import HeadAblation

    bench = plain_bench()
    bench.edits.add(HeadAblation(0, 1))
    request = bench.sweeps.start("head", "denoising")
    short = bench.sweeps.header(request, sweep_result(-5.485, 6.120), short=True)
    assert short == "head denoising · unedited (1 not applied)\ncorrupted -5.485 ← clean +6.120 · gap +11.605"
    assert all(len(line) <= 46 for line in short.splitlines())  # the sweep view's width at 80 columns
    on_top = bench.sweeps.header(bench.sweeps.start("head", "noising", on_top=True), sweep_result(6.12, -5.485),
                                short=True)
    assert on_top.splitlines()[0] == "head noising · on top of 1 intervention"


async def test_after_a_sweep_at_80x24_the_header_facts_and_the_first_rows_are_on_screen():
    from mechscope.tui.widgets.heatmap import Heatmap

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("space")  # an active intervention the sweep does not apply
        await settle(pilot)
        app.workbench.run_command("sweep_with('head','denoising')")
        await settle(pilot)
        result = app.bench.sweeps.states["head"].result
        assert result is not None and result.complete
        summary = app.workbench.query_one("#sweep-summary")
        text = str(summary.render())
        assert text.splitlines()[:2] == [
            "head denoising · unedited (1 not applied)",
            f"corrupted {result.base_metric:+.3f} ← clean {result.source_metric:+.3f} · gap "
            f"{result.source_metric - result.base_metric:+.3f}"]
        sweep_map = app.workbench.query_one("#sweep-map", Heatmap)
        screen_height = app.size.height - 2  # the status line and the footer below
        assert summary.region.bottom <= sweep_map.region.y
        assert sweep_map.region.y + 3 <= screen_height  # the column labels and the first two layers
        rows = ["".join(segment.text for segment in sweep_map.render_line(y)).split() for y in (0, 1, 2)]
        assert rows[0][:2] == ["0", "1"] and rows[1][0] == "L0" and rows[2][0] == "L1"


async def test_number_mode_at_80_columns_shows_whole_cells_and_scrolls_to_the_cursor():
    import re

    import numpy as np

    from mechscope.tui.widgets.head_grid import HeadGrid
    from mechscope.tui.widgets.interventions import InterventionList

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        rng = np.random.default_rng(0)
        values = (rng.standard_normal((4, 9)) * np.array([0.01, 0.1, 1, 10, 100, -0.5, -5, 50, 2000])
                  ).astype(np.float32)  # [layer, head]: a demo-sized row of heads, every magnitude
        grid.set_data(values, [f"L{layer}" for layer in range(4)], [str(head) for head in range(9)])
        await pilot.press("0")
        await settle(pilot)
        assert grid.outer_size.width <= 0.45 * 80  # the panes beside the grid keep their room
        assert app.query_one(InterventionList).size.width >= 15

        def shown() -> tuple[list[str], list[list[str]]]:
            lines = ["".join(segment.text for segment in grid.render_line(y)) for y in range(5)]
            return lines[0].split(), [line.split()[1:] for line in lines[1:]]

        header, rows = shown()
        assert 0 < len(header) < 9 and header == [str(head) for head in range(len(header))]
        for row, cells in enumerate(rows):
            assert len(cells) == len(header)  # whole cells only: none cut at the edge, none run together
            for head, cell in enumerate(cells):
                number = float(re.sub(r"([kMG])$", "", cell)) * {"k": 1e3, "M": 1e6, "G": 1e9}.get(cell[-1], 1)
                assert abs(number - values[row, head]) <= max(0.051 * abs(values[row, head]), 0.006)
        for _ in range(8):
            await pilot.press("l")
        await settle(pilot)
        header, rows = shown()
        assert header[-1] == "8" and len(header) == len(rows[0])  # scrolled to the cursor, whole cells
        assert grid.border_title == f"DLA · L0.H8 {float(values[0, 8]):+.4g}"  # its exact value beside the grid
        await pilot.press("h")
        await settle(pilot)
        assert shown()[0][-1] == "8" and grid.border_title == f"DLA · L0.H7 {float(values[0, 7]):+.4g}"


async def test_the_patching_grid_names_its_direction_and_keeps_the_cursor_value_in_its_title():
    from mechscope.tui.widgets.head_grid import HeadGrid

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        for action, direction in (("sweep('head')", "noising"), ("sweep_with('head','denoising')", "denoising")):
            app.workbench.run_command(action)
            await settle(pilot)
            value = float(app.bench.sweeps.states["head"].result.values[0, 0])
            assert app.bench.sweeps.states["head"].request.direction == direction
            assert grid.border_title == f"{direction} · L0.H0 {value:+.4g}"
            assert len(f"{direction} · L29.H8 {-value:+.4g}") <= 34 - 6  # a 9-head grid's border keeps it
            assert f"L0.H0 patching {direction} {value:+.4g}" in str(app.query_one("#status-bar").render())


def test_a_running_set_sweep_counts_the_layers_done():
    import numpy as np

    from mechscope.engine.results import SetSweepResult
    from mechscope.tui.widgets.set_view import sweep_progress

    per_row = np.zeros((3, 4, 2), dtype=np.float32)  # [row, layer, head]
    per_row[:, 2:] = np.nan
    per_row[0, 1, 1] = np.nan  # one row still missing a head of layer 1
    partial = SetSweepResult("s", "noising", per_row, np.zeros(3), np.ones(3), complete=False)
    assert sweep_progress(partial) == "1/4 layers"


async def test_a_set_sweep_opens_the_set_tab_on_its_results():
    from mechscope.tui.widgets.set_view import SetView

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        app.screen.query_one("#ask-input", Input).value = "ioi 8"
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("H")
        await settle(pilot)
        assert app.workbench.tabs.active == "tab-set"
        view = app.query_one(SetView)
        results = app.query_one("#set-results")
        top = results.virtual_region.y - view.scroll_offset.y
        assert view.scroll_offset.y > 0 and 0 <= top < view.scrollable_content_region.height
        assert "set sweep (noising, 8 rows, complete" in str(results.render())


async def test_a_long_grid_title_shortens_so_the_border_keeps_the_cursor_value():
    import numpy as np

    from mechscope.tui.widgets.head_grid import HeadGrid

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        grid.configure(30, 9)  # the demo model's grid
        values = np.full((30, 9), -0.07248, dtype=np.float32)  # [layer, head]
        for name, short in (("set patching", "set mean"), ("estimate", "estimate"), ("previous_token", "prev-token"),
                            ("copy_suppression", "copy-supp")):
            grid.show_metric(name, values)
            await pilot.pause()
            assert grid.border_title == f"{short} · L0.H0 -0.07248"
            assert len(grid.border_title) <= grid.outer_size.width - 6
        await pilot.resize_terminal(120, 40)
        await pilot.press("0")  # number mode: a grid wide enough for the full title
        await settle(pilot)
        assert grid.border_title == "copy suppression · L0.H0 -0.07248"


async def test_number_mode_keeps_the_cursor_row_in_view():
    import numpy as np

    from mechscope.tui.widgets.head_grid import HeadGrid

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        grid = app.query_one(HeadGrid)
        grid.configure(30, 9)  # the demo model's grid
        grid.show_metric("attribution", np.arange(270, dtype=np.float32).reshape(30, 9) / 100)  # [layer, head]
        grid.cursor = (23, 3)
        await settle(pilot)
        for _ in range(2):  # into number mode (a horizontal scrollbar takes a row) and out again
            await pilot.press("0")
            await settle(pilot)
            labels = ["".join(s.text for s in grid.render_line(y)).split()[:1]
                      for y in range(1, grid.scrollable_content_region.height)]
            assert ["L23"] in labels


async def test_set_numbers_scroll_into_view_at_80x24(tmp_path):
    import json

    from mechscope.tui.widgets.set_view import SetRowTable, SetView

    rows = [{"clean": f"When Mary and John went to the store {i}, John gave a drink to",
             "corrupted": f"When Mary and John went to the store {i}, Mary gave a drink to",
             "target": "Mary" if i in (2, 5) else " Mary", "foil": " John"} for i in range(8)]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        app.screen.query_one("#ask-input", Input).value = str(path)
        await pilot.press("enter")
        await settle(pilot)
        assert len(app.bench.sets.problems) == 2  # the set's header now fills a short view
        await pilot.press("O")
        await settle(pilot)
        view = app.query_one(SetView)
        summary = app.query_one("#set-numbers")
        lines = summary.render_lines(summary.region.reset_offset)  # wrapped as on screen
        shown = ["".join(s.text for s in line).strip() for line in lines]
        first = next(i for i, line in enumerate(shown) if line.startswith("logit diff baseline"))
        assert summary.virtual_region.y + first == view.scroll_offset.y  # the numbers at the top
        table = app.query_one(SetRowTable)
        assert table.virtual_region.y < view.scroll_offset.y + view.scrollable_content_region.height


async def test_narrow_panes_keep_their_counts_and_the_status_names_grids_as_their_titles():
    from mechscope.tui.widgets.interventions import InterventionList

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        listing = app.query_one(InterventionList)
        assert listing.border_title == "interventions 1/1"
        listing.styles.width = 18  # as beside the demo model's grid at 80 columns
        await settle(pilot)
        assert listing.border_title == "1/1 interventions"  # the border cuts the end, never the count
        await pilot.press("D")
        await settle(pilot)
        status = str(app.query_one("#status-bar").render())
        assert "grid: previous-token (" in status and "L0.H0 previous-token " in status
        assert "previous_token" not in status
