"""A small dialog that picks one item from a list (e.g. the kind of a new intervention)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Vertical
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from mechscope.screens.dialog import Dialog
from mechscope.tui.widgets.plain import Plain, plain_title


def choice_prompts(items: list[tuple[str, str, str]]) -> list[Text]:
    """Each item's title, padded so that its description never runs into it, then the description."""
    width = max((len(title) for _, title, _ in items), default=0) + 2
    prompts = []
    for _, title, description in items:
        prompt = Text(f"{title:<{width}}", style="bold")
        prompt.append(description, style="dim")
        prompts.append(prompt)
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
