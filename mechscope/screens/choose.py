"""A small dialog that picks one item from a list (e.g. the kind of a new intervention)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Vertical
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.plain import Plain, plain_title


def choice_prompts(items: list[tuple[str, str, str]]) -> list[Table]:
    """Each item as a title column and a description column: a description too long for the line wraps
    within its own column, so its second line never reads as another item's title."""
    width = max((len(title) for _, title, _ in items), default=0)
    prompts = []
    for _, title, description in items:
        row = Table.grid(padding=(0, 2))
        row.add_column(width=width, no_wrap=True, style="bold")
        row.add_column(style="dim")
        row.add_row(Text(title), Text(description))
        prompts.append(row)
    return prompts


class ChooseScreen(Dialog[str | None]):
    """Returns the id of the chosen (id, title, description) item on enter, None on escape."""

    DEFAULT_CSS = """
    ChooseScreen { align: center middle; }
    ChooseScreen > Vertical { width: 74; max-width: 100%; height: auto; max-height: 100%;
                              border: round $accent; background: $surface; padding: 0 1; }
    ChooseScreen OptionList { height: auto; max-height: 16; border: none; padding: 0; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, items: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.items = items

    def compose(self) -> ComposeResult:
        options = [Option(prompt, id=item[0]) for item, prompt in zip(self.items, choice_prompts(self.items),
                                                                         strict=True)]
        with Vertical() as box:
            box.border_title = plain_title(self.title_text)
            yield OptionList(*options, id="choose-list")
            yield Plain("enter chooses, esc cancels", classes="dim")

    def answered_by(self, binding: ActiveBinding) -> bool:
        """Enter on the list chooses the highlighted item, which closes the dialog."""
        node = binding.node
        return ((isinstance(node, OptionList) and binding.binding.action == "select"
                 and node.highlighted is not None) or super().answered_by(binding))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
