"""Pilot tests of the sessions screen: list, open, rename, delete, replay timeline with drift."""

from __future__ import annotations

from textual.app import App
from textual.widgets import DataTable, Static

from mechscope.engine import HeadAblation, Metric
from mechscope.engine.testing import tiny_engine
from mechscope.screens.sessions import SessionsScreen
from mechscope.sessions import Session

PROMPT = "When Mary and John went to the store, John gave a drink to"


class ScreenHost(App[None]):
    """Pushes the sessions screen on mount and keeps what it dismissed with."""

    def __init__(self, engine=None, current: str | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.current = current
        self.dismissed: list[str | None] = []

    def on_mount(self) -> None:
        self.push_screen(SessionsScreen(current=self.current), self.dismissed.append)


def record(engine, name: str) -> Session:
    session = Session.create(name, engine=engine)
    metric = Metric("logit_diff", " Mary", " John")
    session.record_prompt(PROMPT, None)
    ablate = HeadAblation(1, 2)
    session.record_intervention("added", 1, ablate)
    for interventions in ([], [ablate]):
        session.record_run(PROMPT, None, metric, interventions,
                           engine.run(PROMPT, interventions, metric=metric))
    session.close()
    return session


async def settle(pilot) -> None:
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def rows(app: App, table_id: str) -> list[list[str]]:
    table = app.screen.query_one(table_id, DataTable)
    return [[str(getattr(cell, "plain", cell)) for cell in table.get_row_at(i)]
            for i in range(table.row_count)]


def status(app: App) -> str:
    return str(app.screen.query_one("#sessions-status", Static).render())


async def test_lists_sessions_and_opens_one() -> None:
    engine = tiny_engine()
    record(engine, "alpha")
    Session.create("beta").record_prompt("The cat sat", None)
    app = ScreenHost(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        listed = {row[0]: row for row in rows(app, "#sessions-table")}
        assert set(listed) == {"alpha", "beta"}
        assert listed["alpha"][1] == "tiny-llama"
        assert listed["alpha"][3] == "4" and listed["alpha"][4] == repr(PROMPT)
        assert listed["beta"][3] == "1"
        assert status(app) == "2 sessions"
        table = app.screen.query_one("#sessions-table", DataTable)
        table.move_cursor(row=list(listed).index("alpha"))
        await pilot.press("enter")
        await settle(pilot)
    assert app.dismissed == ["alpha"]


async def test_rename_and_delete_with_modals() -> None:
    Session.create("old-name").record_note("hello")
    Session.create("doomed").record_note("bye")
    Session.create("live").record_note("being recorded")
    app = ScreenHost(current="live")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#sessions-table", DataTable)

        def select(name: str) -> None:
            names = [row[0].rstrip(" *") for row in rows(app, "#sessions-table")]
            table.move_cursor(row=names.index(name))

        select("old-name")
        await pilot.press("r")
        await settle(pilot)
        field = app.screen.query_one("#rename-input")
        field.value = "new name!"  # invalid: a space and a '!'
        await pilot.press("enter")
        await settle(pilot)
        assert "bad session name" in str(app.screen.query_one("#rename-error", Static).render())
        field.value = "new-name"
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, SessionsScreen)
        assert status(app) == "renamed old-name -> new-name"
        assert {s.name for s in Session.list()} == {"new-name", "doomed", "live"}

        select("doomed")
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert status(app) == "kept doomed"
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert status(app) == "deleted doomed"
        assert {s.name for s in Session.list()} == {"new-name", "live"}

        select("live")  # the session the workbench records into is protected
        await pilot.press("d")
        await settle(pilot)
        assert "being recorded" in status(app)
        assert {row[0] for row in rows(app, "#sessions-table")} == {"new-name", "live *"}


async def test_replay_timeline_shows_match_and_drift() -> None:
    engine = tiny_engine()
    record(engine, "same")
    record(tiny_engine(seed=1), "other")  # recorded on different weights: drifts on `engine`
    app = ScreenHost(engine)
    async with app.run_test(size=(110, 32)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#sessions-table", DataTable)
        names = [row[0] for row in rows(app, "#sessions-table")]

        table.move_cursor(row=names.index("same"))
        await pilot.press("p")
        await settle(pilot)
        timeline = rows(app, "#timeline")
        assert [row[:2] for row in timeline] == [["3", "run"], ["4", "run"]]
        assert [row[2] for row in timeline] == ["ok", "ok"]
        assert timeline[0][3] == timeline[0][4] and " | " in timeline[0][3]
        assert status(app) == "replayed same: 2 steps, all match"

        table.move_cursor(row=names.index("other"))
        await pilot.press("p")
        await settle(pilot)
        timeline_table = app.screen.query_one("#timeline", DataTable)
        assert [row[2] for row in rows(app, "#timeline")] == ["DRIFT", "DRIFT"]
        status_cell = timeline_table.get_row_at(0)[2]
        assert "red" in str(status_cell.style)
        assert status(app) == "replayed other: 2 steps, 2 drifted"
        timeline_table.focus()
        timeline_table.move_cursor(row=1)
        await settle(pilot)
        detail = str(app.screen.query_one("#step-detail", Static).render())
        assert detail.startswith("recorded   ") and "-> " in detail and "metric" in detail


async def test_replay_needs_an_engine() -> None:
    Session.create("lonely").record_note("x")
    app = ScreenHost(engine=None)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert "no model is loaded" in status(app)
        await pilot.press("escape")
        await settle(pilot)
    assert app.dismissed == [None]


async def test_j_and_k_move_through_the_list_and_the_timeline() -> None:
    engine = tiny_engine()
    for name in ("a-first", "b-second", "c-third"):
        record(engine, name)
    app = ScreenHost(engine)
    async with app.run_test(size=(110, 32)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#sessions-table", DataTable)
        names = [row[0] for row in rows(app, "#sessions-table")]
        table.move_cursor(row=0)
        await pilot.press("j", "j", "k")
        assert table.cursor_row == 1
        await pilot.press("p")
        await settle(pilot)
        timeline = app.screen.query_one("#timeline", DataTable)
        timeline.focus()
        timeline.move_cursor(row=0)
        await pilot.press("j")
        await settle(pilot)
        assert timeline.cursor_row == 1 and table.cursor_row == 1
        assert "replayed " + names[1] in status(app)
