"""An Input whose editing keys apply in the order they arrive, even in a burst (paste, key repeat, tmux).

Textual's Input inserts a printable key as soon as the key reaches it, but a key bound to an action
(backspace, left, end, ...) first bubbles up to the App, which then runs the binding: in a burst, the
printable keys typed after it are inserted before it runs (`backspace 1 0` on "auto" gave "auto1").
Running the field's own bindings as the key reaches it keeps every key in order. Every field of the
TUI is one, and shows control characters in its value (from a file or a session) as control pictures;
the command palette's search field does the same.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len, get_character_cell_size
from textual import events
from textual.actions import parse
from textual.app import ComposeResult
from textual.command import CommandInput, CommandPalette
from textual.widgets import Input

from mechscope.tui.widgets.plain import ControlPictures, visible


async def run_own_binding(field: Input, event: events.Key) -> None:
    """Run `field`'s own binding for the key now, in its turn, and stop the key; else leave it be."""
    for key in event.aliases:
        for binding in field._bindings.key_to_bindings.get(key, ()):
            _, action, parameters = parse(binding.action)
            if field.check_action(action, parameters) is False:
                continue
            event.stop()
            event.prevent_default()
            await field.run_action(binding.action)
            return


class OrderedInput(Input):
    """An Input that runs its own key bindings at once instead of after the key has bubbled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("highlighter", ControlPictures())
        super().__init__(*args, **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        await run_own_binding(self, event)  # anything else goes on to Input's own handler

    # The field draws each control character (a pasted newline, an ESC from a file) as a one-cell
    # picture, where Textual measures it as zero cells: measure what is drawn, or the cursor and a
    # click land one cell off per such character.
    def _position_to_cell(self, position: int) -> int:
        return cell_len(visible(self.value[:position], lines=False))

    def _cell_offset_to_index(self, offset: int) -> int:
        offset += self.scroll_offset.x
        cells = 0
        for index, char in enumerate(visible(self.value, lines=False)):
            width = get_character_cell_size(char)
            if cells <= offset < cells + width:
                return index
            cells += width
        return max(0, min(offset, len(self.value)))


class OrderedCommandInput(CommandInput):
    """The command palette's search field, keeping a burst's order as every other field does."""

    async def _on_key(self, event: events.Key) -> None:
        await run_own_binding(self, event)


class OrderedCommandPalette(CommandPalette):
    """Textual's command palette, its layout as Textual composes it, with `OrderedCommandInput` as
    its search field."""

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if type(widget) is CommandInput:
                widget = OrderedCommandInput(placeholder=widget.placeholder, select_on_focus=False)
            yield widget
