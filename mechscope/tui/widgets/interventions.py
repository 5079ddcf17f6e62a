"""Interventions pane: one line per intervention with a checkbox; space toggles, enter edits, x deletes."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from mechscope.tui.widgets.plain import visible
from mechscope.workbench.stack import Entry


def entry_line(entry: Entry, label: str) -> Text:
    box = "[x]" if entry.intervention.enabled else "[ ]"
    line = Text(f"{box} ", style="bold" if entry.intervention.enabled else "dim")
    line.append(visible(label, lines=False), style="" if entry.intervention.enabled else "dim strike")
    return line


class InterventionList(OptionList):
    """The Workbench owns the list (an InterventionStack); this widget shows it and asks for changes."""

    DEFAULT_CSS = """
    InterventionList { height: 1fr; border: round $panel; padding: 0; }
    InterventionList:focus { border: round $accent; }
    """

    BINDINGS = [
        Binding("space", "toggle_entry", "Toggle", show=False),
        Binding("enter", "edit", "Edit", show=False),
        Binding("x,delete", "delete", "Delete", show=False),
    ]

    class Requested(Message):
        """The user asked to toggle, edit or delete entry `entry_id`."""

        def __init__(self, action: str, entry_id: int) -> None:
            super().__init__()
            self.action = action
            self.entry_id = entry_id

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "interventions"
        self.counts = (0, 0)  # (enabled, all) entries
        self.entry_ids: list[int] = []

    def show_entries(self, entries: tuple[Entry, ...], labels: tuple[str, ...]) -> None:
        """One line per entry; `labels` says what each does (a patch names its source)."""
        ids = [entry.id for entry in entries]
        if entries and ids == self.entry_ids:
            # Same entries (a toggle or an edit): new prompts in place, no relayout.
            for index, (entry, label) in enumerate(zip(entries, labels)):
                self.replace_option_prompt_at_index(index, entry_line(entry, label))
        else:
            self._rebuild(entries, labels)
        self.counts = (sum(entry.intervention.enabled for entry in entries), len(entries))
        self.show_title()

    def show_title(self) -> None:
        """`interventions 2/3` (enabled / all); where the border would cut the count, the count first."""
        enabled, total = self.counts
        title = f"interventions {enabled}/{total}" if total else "interventions"
        if total and 0 < self.outer_size.width - 6 < len(title):
            title = f"{enabled}/{total} interventions"
        self.border_title = title

    def on_resize(self) -> None:
        self.show_title()

    def _rebuild(self, entries: tuple[Entry, ...], labels: tuple[str, ...]) -> None:
        highlighted = self.highlighted
        self.clear_options()
        self.entry_ids = [entry.id for entry in entries]
        if entries:
            self.add_options([Option(entry_line(entry, label), id=f"entry-{entry.id}")
                              for entry, label in zip(entries, labels)])
            self.highlighted = min(highlighted or 0, len(entries) - 1)
        else:
            self.add_option(Option(Text("space on a head ablates it", style="dim"),
                                   disabled=True))

    @property
    def selected_entry_id(self) -> int | None:
        if self.highlighted is None or self.highlighted >= len(self.entry_ids):
            return None
        return self.entry_ids[self.highlighted]

    def _request(self, action: str) -> None:
        entry_id = self.selected_entry_id
        if entry_id is not None:
            self.post_message(self.Requested(action, entry_id))

    def action_toggle_entry(self) -> None:
        self._request("toggle")

    def action_edit(self) -> None:
        self._request("edit")

    def action_delete(self) -> None:
        self._request("delete")
