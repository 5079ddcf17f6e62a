"""The layer x head grid: one coloured cell per attention head, a keyboard cursor, intervention marks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from textual.binding import Binding
from textual.geometry import Size

from mechscope.tui.widgets.heatmap import Heatmap, legend_markup
from mechscope.tui.widgets.plain import plain_title
from mechscope.workbench.sets import EXACT_MARK

WIDE = 110  # the app's wide breakpoint (columns)
GRID_SHARE = 0.55  # the most of the body's width the grid takes (with its border)
GRID_SHARE_NUMBERS = 0.45  # in number mode below WIDE: the predictions and interventions keep their room

# name -> (title, diverging colour ramp)
GRID_METRICS: dict[str, tuple[str, bool]] = {
    "attribution": ("DLA", True),
    "sink": ("sink", False),
    "patching": ("patching", True),
    "atp": ("AtP", True),
}
# Grids over a prompt set (workbench/sets.py) and the head detectors (engine/detectors.py).
SET_GRID_METRICS: dict[str, tuple[str, bool]] = {
    "set patching": ("set patching (mean)", True),
    "estimate": ("estimate (= exact)", True),
    "previous_token": ("previous-token", False),
    "duplicate_token": ("duplicate-token", False),
    "induction": ("induction", False),
    "first_token_sink": ("first-token sink", False),
    "copy_suppression": ("copy suppression", True),
}

# Titles for a grid too narrow for the full title and the cursor cell's value (a 9-head grid at 80 columns).
SHORT_TITLES = {"set patching (mean)": "set mean", "estimate (= exact)": "estimate", "previous-token": "prev-token",
                "duplicate-token": "dup-token", "first-token sink": "first-sink", "copy suppression": "copy-supp",
                "AtP denoising": "AtP den."}


class HeadGrid(Heatmap, can_focus=True):
    """Rows are layers, columns are heads; the cursor selects the head that keys act on."""

    DEFAULT_CSS = """
    HeadGrid { width: auto; min-width: 16; }
    """

    BINDINGS = [
        Binding("up,k", "move(-1, 0)", "Up", show=False),
        Binding("down,j", "move(1, 0)", "Down", show=False),
        Binding("left,h", "move(0, -1)", "Left", show=False),
        Binding("right,l", "move(0, 1)", "Right", show=False),
        Binding("pageup", "move(-8, 0)", "Page up", show=False),
        Binding("pagedown", "move(8, 0)", "Page down", show=False),
        Binding("home", "move(-9999, 0)", "First layer", show=False),
        Binding("end", "move(9999, 0)", "Last layer", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(cell_width=3, diverging=True, empty_text="loading model…", id=id)
        self.n_layers = 0
        self.n_heads = 0
        self.metric_name = "attribution"
        self.metric_title = "DLA"
        self.metric_direction = ""  # a sweep grid's noising or denoising
        self.numbered_marks = frozenset({EXACT_MARK})  # a verified estimate cell shows its exact value
        # Called as the cursor moves, before the next key is handled (the message comes later).
        self.selected_callback: Callable[[int, int], None] | None = None

    def configure(self, n_layers: int, n_heads: int) -> None:
        """Size the grid for a model; values start unknown (NaN)."""
        self.n_layers, self.n_heads = n_layers, n_heads
        self.set_data(np.full((n_layers, n_heads), np.nan, dtype=np.float32),
                      [f"L{layer}" for layer in range(n_layers)],
                      [str(head) for head in range(n_heads)])
        if self.cursor is None:
            self.cursor = (0, 0)

    def show_metric(self, name: str, values: np.ndarray | None, empty_note: str = "not computed",
                    direction: str = "", normalised: bool = False) -> None:
        """Colour the grid by one of GRID_METRICS; None leaves the cells unknown (empty_note says why).

        A sweep's `direction` is named in the title, since noising and denoising cells look alike; short
        enough to leave the cursor cell's value in a 9-head grid's border (`denoising`, `AtP denoising`);
        `normalised` cells (Δ over the gap source - base) add ` ÷gap`."""
        if not self.n_layers:
            return
        self.metric_name = name
        self.metric_direction = direction
        title, diverging = GRID_METRICS.get(name) or SET_GRID_METRICS.get(name, (name, True))
        if direction:
            title = direction if name == "patching" else f"{title} {direction}"
        if normalised:  # the cells are shares of the gap between the two runs, not Δ metric
            title += " ÷gap"
        if values is None:
            values = np.full((self.n_layers, self.n_heads), np.nan, dtype=np.float32)
        self.set_data(values, self.row_labels, self.col_labels, diverging=diverging)
        finite = values[np.isfinite(values)]
        if finite.size:
            swatches = 5 if self.n_heads >= 7 else 2  # a narrow grid has room for a short legend only
            self.border_subtitle = legend_markup(float(finite.min()), float(finite.max()), diverging, swatches)
        else:
            self.border_subtitle = plain_title(empty_note)
        self.metric_title = title
        self.show_cursor_value()

    def set_data(self, values: np.ndarray | None, row_labels: list[str], col_labels: list[str],
                 *, diverging: bool | None = None, scale: float | None = None) -> None:
        super().set_data(values, row_labels, col_labels, diverging=diverging, scale=scale)
        self.show_cursor_value()

    def show_cursor_value(self) -> None:
        """The title names the metric and the cursor cell's exact value, whatever the cells show (a
        short name for the metric where the border would cut the value)."""
        value = None if self.cursor is None else self.value_at(*self.cursor)
        where = "" if self.cursor is None else f" L{self.cursor[0]}.H{self.cursor[1]}"
        shown = f"{where} {value:+.4g}" if value is not None else where
        title = f"{self.metric_title} ·{shown}" if shown else self.metric_title
        room = self.outer_size.width - 6  # the border's corners, a line and a blank either side of the title
        if room > 0 and len(title) > room and self.metric_title in SHORT_TITLES:
            title = f"{SHORT_TITLES[self.metric_title]} ·{shown}" if shown else SHORT_TITLES[self.metric_title]
        self.border_title = plain_title(title)

    def on_resize(self) -> None:
        self.show_cursor_value()

    def watch_cursor(self, old: tuple[int, int] | None, new: tuple[int, int] | None) -> None:
        if new is not None and self.selected_callback is not None:
            self.selected_callback(*new)
        super().watch_cursor(old, new)
        self.show_cursor_value()

    def get_content_width(self, container: Size, viewport: Size) -> int:
        """Every head where there is room; else as many whole cells as the grid's share of the width
        allows (the grid scrolls to follow the cursor), so that the panes beside it keep their room."""
        share = GRID_SHARE_NUMBERS if self.show_numbers and viewport.width < WIDE else GRID_SHARE
        room = int((container.width + 2) * share) - 3  # less the border and the vertical scrollbar
        cols = min(self.shape[1], max((room - self._label_width) // self.cell_width, 1))
        return self._label_width + cols * self.cell_width + 1  # room for the one-cell vertical scrollbar

    def action_move(self, d_row: int, d_col: int) -> None:
        self.move_cursor(d_row, d_col)

    @property
    def selected(self) -> tuple[int, int] | None:
        """The (layer, head) under the cursor."""
        return self.cursor
