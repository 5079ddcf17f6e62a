"""Tables size their columns to what they show now: Textual's DataTable.clear() keeps every column
as wide as the widest content it ever held, so one long lens or prompt set pushed later, shorter
ones' columns off the side."""

from __future__ import annotations

import json

import numpy as np
from textual.widgets import DataTable, Input

from mechscope.engine.results import LogitLens
from mechscope.tui.widgets.views import LensView
from tests.tui.helpers import LensHost, make_app, settle


def lens(tokens: list[str]) -> LogitLens:
    return LogitLens(position=1, top_ids=np.array([list(range(len(tokens)))]), top_tokens=[tokens],
                     top_probs=np.full((1, len(tokens)), 0.5), target_rank=None, target_prob=None)


def widths(table: DataTable) -> dict[str, int]:
    return {str(column.label): column.get_render_width(table) for column in table.columns.values()}


async def test_the_lens_columns_shrink_to_a_shorter_lens():
    app = LensHost()
    async with app.run_test(size=(120, 20)) as pilot:
        view = app.query_one(LensView)
        view.show(lens(["abcdefgh"] * 5))
        await pilot.pause()
        table = view.query_one(DataTable)
        assert widths(table)["top tokens"] == len(" ".join(["abcdefgh:0.50"] * 5)) + 2
        view.show(lens(["a", "b"]))
        await pilot.pause()
        assert widths(table)["top tokens"] == len("a:0.50 b:0.50") + 2
        assert table.get_row_at(0)[3].plain == "a:0.50 b:0.50"


async def test_the_set_table_columns_shrink_to_a_set_of_shorter_prompts(tmp_path):
    def write(path, clean: str, corrupted: str) -> str:
        path.write_text(json.dumps({"clean": clean, "corrupted": corrupted, "target": " Mary",
                                    "foil": " John"}) + "\n")
        return str(path)

    long = write(tmp_path / "long.jsonl", "When Mary and John went to the store, " * 3 + "John gave a drink to",
                 "When Mary and John went to the store, " * 3 + "Mary gave a drink to")
    short = write(tmp_path / "short.jsonl", "Mary and John: John to", "Mary and John: Mary to")
    app = make_app()
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        for path in (long, short):
            await pilot.press("L")
            await pilot.pause()
            app.screen.query_one("#ask-input", Input).value = path
            await pilot.press("enter")
            await settle(pilot)
            await pilot.press("6")
            await settle(pilot)
        table = app.screen.query_one("#set-table", DataTable)
        assert table.row_count == 1 and str(table.get_row_at(0)[6]).endswith("John to")
        assert widths(table)["clean"] == len("Mary and John: John to") + 2
        assert widths(table)["corrupted"] == len("Mary and John: Mary to") + 2
