"""Snapshots of the workbench at 80x24 and 120x40 on a tiny seeded model (no timings on screen)."""

from __future__ import annotations

from mechscope.engine.errors import LoadError
from mechscope.tui.app import MechscopeApp
from tests.tui.helpers import make_app, settle


def snapshot_app() -> MechscopeApp:
    return make_app(session_name="snapshot", deterministic=True)


async def steady(pilot) -> None:
    """Settle, then stop every cursor blinking: a blink timer that fires before the screenshot under
    load would otherwise change it."""
    await settle(pilot)
    for widget in pilot.app.screen.query("Input, TextArea"):
        widget.cursor_blink = False
    await pilot.pause()


async def loaded(pilot) -> None:
    await steady(pilot)


def test_first_screen_80x24(snap_compare):
    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=loaded)


def test_first_screen_120x40(snap_compare):
    assert snap_compare(snapshot_app(), terminal_size=(120, 40), run_before=loaded)


def test_ablations_and_logit_lens_120x40(snap_compare):
    async def ablate(pilot) -> None:
        await settle(pilot)
        await pilot.press("space", "j", "l", "m", "2")
        await steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=(120, 40), run_before=ablate)


def test_head_patching_sweep_80x24(snap_compare):
    async def sweep(pilot) -> None:
        await settle(pilot)
        await pilot.press("w")
        await steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=sweep)


def test_help_80x24(snap_compare):
    async def help_screen(pilot) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=help_screen)


def test_load_error_80x24(snap_compare):
    def broken(progress):
        raise LoadError("no model at /models/missing: not a folder, .gguf file or cached hub id")

    assert snap_compare(MechscopeApp(broken, source="/models/missing"), terminal_size=(80, 24),
                        run_before=loaded)


def test_attention_knockout_120x40(snap_compare):
    async def knockout(pilot) -> None:
        await settle(pilot)
        await pilot.press("K")
        await settle(pilot)
        await pilot.press("up", "right", "right", "k")
        await steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=(120, 40), run_before=knockout)


def test_build_steering_vector_dialog_80x24(snap_compare):
    async def dialog(pilot) -> None:
        await settle(pilot)
        await pilot.press("v")
        await steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=(80, 24), run_before=dialog)


def test_terminal_too_small_60x20(snap_compare):
    assert snap_compare(snapshot_app(), terminal_size=(60, 20), run_before=loaded)
