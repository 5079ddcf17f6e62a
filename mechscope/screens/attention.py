"""The attention view's job: the selected head's pattern, from the latest run or a light run after it, with its knockouts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from textual.timer import Timer

from mechscope.engine.addresses import parse_address

if TYPE_CHECKING:
    from mechscope.screens.workbench import WorkbenchScreen

CURSOR_DEBOUNCE_S = 0.12


class AttentionPart:
    """Shows the pattern of the head under the grid's cursor; a head the latest run did not read
    gets a light run once the cursor rests on it."""

    def __init__(self, screen: WorkbenchScreen) -> None:
        self.screen = screen
        self._timer: Timer | None = None

    def follow_cursor(self) -> None:
        """The grid's cursor moved: show its head's pattern now if there is one, else run for it soon."""
        screen = self.screen
        if screen.engine is None or screen.bench.result is None or self.show():
            return
        if self._timer is not None:
            self._timer.stop()
        self._timer = screen.set_timer(CURSOR_DEBOUNCE_S, self.start)

    def start(self) -> None:
        screen = self.screen
        if screen.alive and screen.engine is not None:
            screen.submit(screen.bench.attention_request())

    def selected_pattern(self) -> tuple[str, np.ndarray, list[str]] | None:
        """The selected head's attention pattern: from the latest run or a light run after it."""
        bench = self.screen.bench
        result, selected = bench.result, bench.selected
        if result is None or selected is None:
            return None
        address = f"L{selected[0]}.H{selected[1]}"
        if address in result.attention and bench.result_is_current:
            return address, result.attention[address], result.tokens
        if address in bench.attention:
            pattern, tokens = bench.attention[address]
            return address, pattern, tokens
        if address in result.attention:
            return address, result.attention[address], result.tokens
        return None

    def show(self) -> bool:
        """Show the selected head's pattern; False when no run has it yet."""
        shown = self.selected_pattern()
        if shown is None:
            return False
        address, pattern, tokens = shown
        self.screen.attention_view.show(address, pattern, tokens, self.knockouts(address))
        return True

    def show_knockouts(self) -> None:
        """The list of interventions changed: the shown pattern's knocked-out edges follow it."""
        view = self.screen.attention_view
        if view.address is not None:
            view.set_knockouts(self.knockouts(view.address))

    def knockouts(self, address: str) -> dict[tuple[int, int], str]:
        parsed = parse_address(address)
        return self.screen.bench.edits.knockout_marks(parsed.layer, int(parsed.head))  # type: ignore[arg-type]
