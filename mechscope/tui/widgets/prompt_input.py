"""A prompt field that edits only once the user has deliberately entered it (/, i, enter or a click).

Reaching it with Tab shows the focus but leaves letter keys to the workbench's hotkeys, so a stray
`g` after a Tab never rewrites the prompt the session records."""

from __future__ import annotations

from textual import events
from textual.binding import Binding

from mechscope.tui.widgets.ordered_input import OrderedInput

# Input actions that change the text: skipped while the field is only focused, not entered.
EDITING_ACTIONS = frozenset({
    "delete_left", "delete_right", "delete_left_word", "delete_right_word", "delete_left_all",
    "delete_right_all", "cut", "paste",
})


class PromptInput(OrderedInput):
    """An Input that is 'armed' for typing only after a deliberate entry; blur disarms it."""

    DEFAULT_CSS = """
    PromptInput:focus { background: $accent 25%; }
    PromptInput.-armed:focus { background: $boost; text-style: none; }
    """

    BINDINGS = [Binding("tab", "hand_on(1)", show=False), Binding("shift+tab", "hand_on(-1)", show=False)]

    armed = False

    def arm(self) -> None:
        self.armed = True
        self.add_class("-armed")

    def disarm(self) -> None:
        self.armed = False
        self.remove_class("-armed")

    def _on_blur(self, event: events.Blur) -> None:
        self.disarm()

    async def _on_key(self, event: events.Key) -> None:
        if not self.armed:
            event.prevent_default()  # skip Input's own handler; the key still bubbles to the hotkeys

    def _on_paste(self, event: events.Paste) -> None:
        """Paste all of the text: Input keeps only its first line, which cut a chat-formatted prompt
        short without a word. Newlines stay in the prompt the model reads (the field shows ␊)."""
        event.prevent_default()
        if not self.armed or not event.text:
            return
        event.stop()
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        if self.selection.is_empty:
            self.insert_text_at_cursor(text)
        else:
            self.replace(text, *self.selection)

    async def _on_mouse_down(self, event: events.MouseDown) -> None:
        self.arm()  # a click into the field is a deliberate entry

    def action_hand_on(self, step: int) -> None:
        """Tab out of a field being edited: the next prompt field is entered too (still editing)."""
        screen = self.screen
        reached = screen.focus_next() if step > 0 else screen.focus_previous()
        if isinstance(reached, PromptInput):
            reached.arm()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self.armed and action in EDITING_ACTIONS | {"hand_on"}:
            return False
        return super().check_action(action, parameters)

    async def action_submit(self) -> None:
        self.arm()  # enter on a field reached with Tab enters it (and runs now, as enter always does)
        await super().action_submit()
