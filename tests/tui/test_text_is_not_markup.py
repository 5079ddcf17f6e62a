"""Text from users, models and files is shown as written: brackets in a typed value, a prompt, a token,
a model name or a help line are never read as markup (which dropped them, or raised MarkupError and
closed the app), and control characters are drawn as control pictures, never sent to the terminal."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.text import Text
from textual.app import App, ComposeResult
from textual.content import Content
from textual.widgets import DataTable, Input

import mechscope
from mechscope.engine.results import LogitLens
from mechscope.engine.testing import tiny_engine
from mechscope.screens.edit_intervention import EditInterventionScreen
from mechscope.screens.help import HelpScreen
from mechscope.screens.message import MessageScreen
from mechscope.screens.sessions import SessionsScreen
from mechscope.sessions import Session
from mechscope.tui.commands import COMMANDS, key_label
from mechscope.tui.widgets.ordered_input import OrderedInput
from mechscope.tui.widgets.plain import Plain, visible
from mechscope.tui.widgets.views import LensView
from tests.tui.helpers import LensHost, drawn_lines, make_app, settle

MARKUP_LIKE = "[/INST] [b]Mary[/b] [d_model]"


def table_rows(table: DataTable) -> list[list[str]]:
    return [[str(getattr(cell, "plain", cell)) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def load_row(pilot, path: Path, clean: str, corrupted: str) -> None:
    """Write a one-row prompt set to `path` and load it with L, as a user would."""
    path.write_text(json.dumps({"clean": clean, "corrupted": corrupted, "target": " Mary", "foil": " John"}) + "\n")
    await settle(pilot)
    await pilot.press("L")
    await pilot.pause()
    pilot.app.screen.query_one("#ask-input", Input).value = str(path)
    await pilot.press("enter")
    await settle(pilot)


# Each Textual widget that shows text, and the one module allowed to build it (every Input is an
# OrderedInput, which shows control characters as pictures: test_burst_typing.py holds that).
TEXT_WIDGETS = {"Static": "plain.py", "Label": "plain.py", "TextArea": "plain.py"}


def test_text_widgets_are_built_only_where_text_is_made_safe():
    """Every Static, Label and TextArea of the TUI comes from widgets/plain.py, so none parses its
    string as markup or sends a control character raw."""
    package = Path(mechscope.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Call):
                names = [node.func]
            elif isinstance(node, ast.ClassDef):
                names = list(node.bases)
            for name in names:
                shown = name.id if isinstance(name, ast.Name) else getattr(name, "attr", "")
                if TEXT_WIDGETS.get(shown, path.name) != path.name:
                    offenders.append(f"{path.relative_to(package)}:{node.lineno} {shown}")
    assert offenders == []


async def test_a_typed_closing_tag_is_shown_under_its_field():
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        await pilot.press("plus")
        await pilot.pause()
        await pilot.press("enter")  # the first kind: head ablation
        await pilot.pause()
        form = app.screen
        assert isinstance(form, EditInterventionScreen)
        form.query_one("#field-layer", Input).value = "[/x]"
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is form
        assert str(form.query_one("#error-layer").render()) == "layer: '[/x]' is not a whole number"


async def test_prompts_with_brackets_show_as_written_in_the_prompt_set_and_tokens(tmp_path):
    clean = "When Mary and John went to the store, [/INST] gave a drink to"
    corrupted = "When Mary and John went to the store, [b]Mary[/b] gave a drink to"
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await load_row(pilot, tmp_path / "brackets.jsonl", clean, corrupted)
        assert app.bench.inputs.clean == clean and app.bench.result is not None
        await pilot.press("6")
        await settle(pilot)
        cells = table_rows(app.screen.query_one("#set-table", DataTable))
        assert "store, [/INST] gave" in cells[0][6] and "store, [b]Mary[/b]" in cells[0][7]
        tokens = str(app.screen.query_one("#tokens").render())
        assert "10[ 11/" in tokens and "16]" in tokens


async def test_help_keeps_the_brackets_of_its_descriptions():
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=100, record=True, file=io.StringIO())
        for widget in app.screen.query(Plain):
            shown = widget.render()  # text as the widget reads it; a rich table as the console draws it
            console.print(Text(shown.plain) if hasattr(shown, "plain") else widget.content)
        text = " ".join(console.export_text().split())
        assert "a .safetensors or .npy vector [d_model], then steer with it" in text
        assert "A[t,k]" in text


async def test_lens_tokens_that_look_like_tags_are_shown_as_written():
    lens = LogitLens(position=3, top_ids=np.array([[1, 2], [3, 4]]),
                     top_tokens=[["[/b", "]"], ["[b", "x]"]],
                     top_probs=np.array([[0.6, 0.4], [0.7, 0.3]]), target_rank=None, target_prob=None)
    app = LensHost()
    async with app.run_test(size=(100, 20)) as pilot:
        app.query_one(LensView).show(lens)
        await pilot.pause()
        cells = table_rows(app.query_one(DataTable))
        assert [row[3] for row in cells] == ["[/b:0.60 ]:0.40", "[b:0.70 x]:0.30"]


class SessionsHost(App[None]):
    def on_mount(self) -> None:
        self.push_screen(SessionsScreen())


async def test_a_recorded_model_name_with_brackets_is_listed_as_written():
    session = Session.create("brackets", engine=tiny_engine())
    session.record_prompt(MARKUP_LIKE)
    session.close()
    manifest_path = session.path / "session.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["name"] = "org/[/model]"
    manifest_path.write_text(json.dumps(manifest))
    app = SessionsHost()
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        cells = table_rows(app.screen.query_one("#sessions-table", DataTable))
        assert cells[0][0] == "brackets" and cells[0][1] == "org/[/model]"
        assert cells[0][4] == repr(MARKUP_LIKE)


class MessageHost(App[None]):
    def on_mount(self) -> None:
        self.push_screen(MessageScreen("[/x].jsonl", "row 1: [/INST] is not a token", error=True))


async def test_a_message_title_and_text_with_brackets_are_shown_as_written():
    app = MessageHost()
    async with app.run_test(size=(100, 20)) as pilot:
        await pilot.pause()
        box = app.screen.query_one("VerticalScroll")
        assert box.border_title is not None and "[/x].jsonl" in box.border_title.replace("\\", "")
        assert str(app.screen.query_one("#message-text").render()) == "row 1: [/INST] is not a token"


async def test_the_command_palette_shows_each_title_and_help_as_written():
    """The palette reads a command's title and help as markup: each must come back as the key table has it."""
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await settle(pilot)
        commands = {command.title: command for command in app.get_system_commands(app.workbench)}
        expected = {f"{c.title} ({key_label(c.keys)})" if c.keys else c.title: c.help
                    for c in COMMANDS if c.action not in ("help", "quit")}
        assert set(expected) <= set(commands)
        shown = {title: (Content.from_markup(title).plain, Content.from_markup(commands[title].help or "").plain)
                 for title in expected}
        assert shown == {title: (title, help) for title, help in expected.items()}
        assert any("[d_model]" in help for _, help in shown.values())


def drawn(app) -> str:
    """Every character the screen would send to the terminal as text."""
    return "".join(drawn_lines(app))


async def test_control_characters_from_a_file_are_drawn_as_pictures_never_sent_raw(tmp_path):
    """An ESC in a prompt-set file reached the terminal raw: it recoloured the field and set the window title."""
    clean = "When Mary and John went to the store, \x1b[41mJohn\x1b[0m gave a drink to"
    corrupted = "When Mary and John went to the store, \x1b]0;PWNED\x1b\\Mary gave a drink to"
    app = make_app()
    async with app.run_test(size=(140, 48)) as pilot:
        await load_row(pilot, tmp_path / "escapes.jsonl", clean, corrupted)
        assert app.bench.inputs.clean == clean  # the model still reads the prompt as written
        for tab in "1234567":
            await pilot.press(tab)
            await settle(pilot)
            screen = drawn(app)
            assert [ch for ch in screen if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0] == [], tab
        await pilot.press("6")
        await settle(pilot)
        screen = drawn(app)
        assert "store, ␛[41mJohn␛[0m gave a drink to" in screen  # the clean field
        assert "store, ␛]0;PWNED␛\\Mary gave" in screen
        cells = table_rows(app.screen.query_one("#set-table", DataTable))
        assert "␛[41mJ" in cells[0][6] and "␛]0;PWNED" in cells[0][7]


def test_visible_maps_each_control_character_to_one_visible_character():
    text = "a\x1bb\x00c\x7fd\x9be\tf\ng\r"
    assert visible(text) == "a␛b␀c␡d\ufffde\tf\ng␍"
    assert visible(text, lines=False) == "a␛b␀c␡d\ufffde␉f␊g␍"
    assert visible("Mary · [/INST] ünïcödé 日本") == "Mary · [/INST] ünïcödé 日本"


class FieldHost(App[None]):
    CSS = "OrderedInput { width: 24; }"

    def compose(self) -> ComposeResult:
        yield OrderedInput(value="a\x1bb\ncd")


async def test_the_field_scrolls_and_clicks_by_the_cells_drawn_for_control_characters():
    """Textual measures ESC and a pasted newline as zero cells, but the field draws each as a one-cell
    picture: a long value full of them did not scroll to its end (the cursor and the last characters
    were off the field), and a click landed on the wrong character."""
    app = FieldHost()
    async with app.run_test(size=(40, 5)) as pilot:
        field = app.query_one(OrderedInput)
        field.focus()
        field.cursor_blink = False
        middle = field.size.height // 2
        await pilot.click(OrderedInput, offset=(field.gutter.left + 2, middle))
        await pilot.pause()
        assert field.cursor_position == 2  # on 'b', the third cell drawn
        field.value = "\n" * 40 + "xyz"
        field.cursor_position = len(field.value)
        await pilot.pause()
        drawn_text = "".join(segment.text for segment in field.render_line(middle))
        assert "␊xyz" in drawn_text, drawn_text
