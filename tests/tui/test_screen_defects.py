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
    request = bench.sweep_with("head", "denoising")
    header = bench.sweep_header(request, sweep_result(-5.485, 6.120))
    assert "head denoising · on the unedited model" in header
    assert "patched run: corrupted -5.485 · patched from: clean +6.120 · gap +11.605" in header
    assert "normalised = cell ÷ gap" in header
    noising = bench.sweep_header(bench.sweep_with("head", "noising"), sweep_result(6.120, -5.485))
    assert "patched run: clean +6.120 · patched from: corrupted -5.485" in noising


async def test_sweep_view_shows_the_header_and_normalised_cells():
    from mechscope.tui.widgets.views import SweepView

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        bench = app.bench
        request = bench.sweep_with("head", "denoising")
        app.workbench.part(SweepView, SweepView).show(sweep_result(-5.485, 6.120), running=False,
                                                      header=bench.sweep_header(request, sweep_result(-5.485, 6.120)))
        await pilot.pause()
        text = str(app.workbench.query_one("#sweep-summary").render())
        assert "metric clean" not in text
        assert "patched run: corrupted -5.485 · patched from: clean +6.120" in text
        assert "L1.H0" in text and "+2.000  normalised +0.17" in text  # 2 / 11.605


def test_every_sweep_entry_point_follows_one_rule_and_the_header_says_so():
    from mechscope.engine.interventions import HeadAblation

    bench = plain_bench()
    bench.add(HeadAblation(0, 1))
    assert bench.sweep_on_top_default() is False
    for kind in ("head", "attn", "mlp", "resid", "atp"):
        request = bench.sweep_with(kind, "denoising")
        assert request.interventions == ()
        assert "on the unedited model (1 active intervention not applied)" in \
            bench.sweep_header(request)
    on_top = bench.sweep_with("attn", "noising", on_top=True)
    assert on_top.interventions == (HeadAblation(0, 1),)
    assert "on top of 1 intervention: zero L0.H1" in bench.sweep_header(on_top)


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
    bench.remember_vector("v", np.full(4, 100.0))  # norm 200
    stats = SimpleNamespace(resid_norm=np.array([[22000.0, 170.0, 160.0, 180.0]]))  # [layer, pos]
    bench.run = SimpleNamespace(result=SimpleNamespace(stats=stats))
    steer = SteeringVector(1, "v", 4.0)
    added, resid = bench.steering_norm(steer)
    assert (added, resid) == (800.0, 170.0)
    assert bench.steering_note(steer) == " (|Δ| 800 vs median resid 170 after pos 0: LARGER than the residual)"
    small = SteeringVector(1, "v", 0.5)
    assert bench.steering_note(small) == " (|Δ| 100 vs median resid 170 after pos 0)"
