"""The base of every dialog: it answers each enter on a field or press of a button, by closing or by
counting the answer, so keys typed after one wait for the answer, however long the check takes."""

from __future__ import annotations

from typing import TypeVar

from textual import on
from textual.binding import ActiveBinding
from textual.screen import ModalScreen
from textual.widgets import Button, Input

ResultType = TypeVar("ResultType")


class Dialog(ModalScreen[ResultType]):
    """A modal screen whose closing keys are answered: after enter on a field (Input.Submitted) or a
    button (Button.Pressed) it has either closed or added one to `answers`."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0  # submits and presses handled (one that left the dialog open refused a value...)

    def answered_by(self, binding: ActiveBinding) -> bool:
        """Whether the key `binding` is for sends a message this dialog answers: enter on a field
        submits it, enter on a button presses it."""
        node = binding.node
        return ((isinstance(node, Input) and binding.binding.action == "submit")
                or isinstance(node, Button))

    # Textual runs this after a subclass's own handlers for the same message (each class's in turn),
    # so by now the dialog has checked the value and closed, or shown why not.
    @on(Input.Submitted)
    @on(Button.Pressed)
    def count_answer(self) -> None:
        self.answers += 1
