"""A matrix heatmap drawn through the line API: fixed row/column labels, cached strips, precomputed colours."""

from __future__ import annotations

import functools
import math

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.color import Color, Gradient
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

BUCKETS = 41  # odd, so a diverging ramp has an exact zero bucket


@functools.lru_cache(maxsize=4)
def bucket_styles(diverging: bool) -> tuple[Style, ...]:
    """One cell style per colour bucket, computed once per ramp (negative blue, positive red)."""
    if diverging:
        gradient = Gradient((0.0, Color.parse("#2f6bff")), (0.5, Color.parse("#262626")),
                            (1.0, Color.parse("#ff3b30")), quality=BUCKETS)
    else:
        gradient = Gradient((0.0, Color.parse("#1c1c1c")), (0.45, Color.parse("#7a2a8a")),
                            (0.8, Color.parse("#f07d2a")), (1.0, Color.parse("#ffe66b")),
                            quality=BUCKETS)
    styles = []
    for index in range(BUCKETS):
        background = gradient.get_color(index / (BUCKETS - 1))
        foreground = "black" if background.brightness > 0.55 else "white"
        styles.append(Style(bgcolor=background.rich_color, color=foreground, bold=True))
    return tuple(styles)


def cell_number(value: float, width: int) -> str:
    """A value in at most `width` characters (`.47`, `-3.1`, `12`, `1.2k`), or `##` when it cannot fit."""
    for digits in (2, 1, 0):
        text = f"{value:.{digits}f}"
        text = text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text
        if text.strip("-.0") == "":
            text = "0"  # -0.004 reads as 0, not "-.0"
        if len(text) <= width:
            return text
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        for digits in (1, 0):
            text = f"{value / scale:.{digits}f}{suffix}"
            if len(text) <= width:
                return text
    return "#" * width


NUMBER_WIDTH = 4  # a number cell: up to 4 characters and one blank column, so neighbours never touch


def legend_markup(low: float, high: float, diverging: bool, swatches: int = 5) -> str:
    """`-0.28 █████ +0.20` in the ramp's colours: what a cell's colour means (for a border subtitle)."""
    styles = bucket_styles(diverging)
    picks = [styles[round(i * (BUCKETS - 1) / (swatches - 1))] for i in range(swatches)]
    ramp = "".join(f"[{style.bgcolor.get_truecolor().hex}]█[/]" for style in picks if style.bgcolor)
    if swatches >= 5:
        return f"{low:+.2f} {ramp} {high:+.2f}"
    return f"{low:+.2f}".replace("0.", ".", 1) + f" {ramp} " + f"{high:+.2f}".replace("0.", ".", 1)


class Heatmap(ScrollView, can_focus=False):
    """Values of a [row, col] matrix as coloured cells with a fixed header row and label column.

    Cells may carry a one-character mark; NaN cells (not computed yet) show a dot.
    """

    DEFAULT_CSS = """
    Heatmap { background: $surface; }
    """

    cursor: reactive[tuple[int, int] | None] = reactive(None, init=False)
    """The highlighted (row, col), or None for a heatmap without a cursor."""

    class CursorMoved(Message):
        """The cursor moved to (row, col)."""

        def __init__(self, heatmap: Heatmap, row: int, col: int) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.row = row
            self.col = col

        def can_replace(self, message: Message) -> bool:
            # A burst of arrow presses only needs the last position.
            return isinstance(message, Heatmap.CursorMoved) and message.heatmap is self.heatmap

        @property
        def control(self) -> Heatmap:
            return self.heatmap

    def __init__(self, *, cell_width: int = 3, diverging: bool = True, empty_text: str = "",
                 name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.cell_width = cell_width
        self.plain_cell_width = cell_width  # without numbers; number mode widens every cell
        self.diverging = diverging
        self.empty_text = empty_text
        self.values: np.ndarray | None = None  # [row, col]
        self.row_labels: list[str] = []
        self.col_labels: list[str] = []
        self.marks: dict[tuple[int, int], str] = {}
        self.row_marks: set[int] = set()  # rows flagged after their label, e.g. layers with an edit
        self.show_numbers = False  # cells print their values (the 0 key toggles it on every heatmap)
        self.numbered_marks: frozenset[str] = frozenset()  # marks whose cells still print the value
        self.scale = 1.0
        self._label_width = 0
        self._version = 0
        self._strip_cache: LRUCache[tuple, Strip] = LRUCache(1024)
        self._base_style: Style | None = None  # rich_style for the paint in progress

    @property
    def shape(self) -> tuple[int, int]:
        return (0, 0) if self.values is None else (int(self.values.shape[0]), int(self.values.shape[1]))

    def set_data(self, values: np.ndarray | None, row_labels: list[str], col_labels: list[str],
                 *, diverging: bool | None = None, scale: float | None = None) -> None:
        """Show a new matrix; colours scale to `scale` (default: the largest absolute finite value).

        The same matrix again (an edit that did not touch it) keeps every cached row: no repaint.
        """
        values = None if values is None else np.asarray(values, dtype=np.float32)
        if scale is None and values is not None and np.isfinite(values).any():
            scale = float(np.nanmax(np.abs(values)))
        scale = scale if scale and math.isfinite(scale) and scale > 0 else 1.0
        diverging = self.diverging if diverging is None else diverging
        if (values is not None and self.values is not None and values.shape == self.values.shape
                and np.array_equal(values, self.values, equal_nan=True) and scale == self.scale
                and diverging == self.diverging and list(row_labels) == self.row_labels
                and list(col_labels) == self.col_labels):
            return
        self.values = values
        self.row_labels = list(row_labels)
        self.col_labels = list(col_labels)
        self.diverging = diverging
        self.scale = scale
        self._label_width = max((len(label) for label in self.row_labels), default=0) + 1
        rows, cols = self.shape
        self._size_cells()
        if self.cursor is not None and rows and cols:
            row, col = self.cursor
            self.cursor = (min(row, rows - 1), min(col, cols - 1))
        self.refresh_cells()

    def set_marks(self, marks: dict[tuple[int, int], str]) -> None:
        if marks != self.marks:
            self.marks = dict(marks)
            self.refresh_cells()

    def set_row_marks(self, rows: set[int]) -> None:
        if rows != self.row_marks:
            self.row_marks = set(rows)
            self.refresh()

    @property
    def cursor_shown(self) -> bool:
        """Whether the cursor is drawn (subclasses may draw it only while focused)."""
        return self.cursor is not None

    def _size_cells(self) -> None:
        rows, cols = self.shape
        self.cell_width = NUMBER_WIDTH + 1 if self.show_numbers else self.plain_cell_width
        self.virtual_size = Size(self._label_width + cols * self.cell_width, rows + 1)

    def toggle_numbers(self, shown: bool) -> None:
        if shown != self.show_numbers:
            self.show_numbers = shown
            self._size_cells()
            self.refresh_cells()
            self.refresh(layout=True)
            if self.cursor_shown:  # the new size may have hidden the cursor
                self.call_after_refresh(self.scroll_cursor_visible)

    def value_at(self, row: int, col: int) -> float | None:
        """The cell's exact value (None outside the matrix or not computed)."""
        rows, cols = self.shape
        if self.values is None or not (0 <= row < rows and 0 <= col < cols):
            return None
        value = float(self.values[row, col])
        return None if math.isnan(value) else value

    def visible_cols(self) -> int:
        """How many whole cells fit beside the row labels (horizontal scrolling moves by whole cells)."""
        width = self.scrollable_content_region.width - self._label_width
        return max(width // self.cell_width, 1)

    def show_cell(self, row: int, col: int) -> None:
        """Scroll so that (row, col) is in view (after the next layout, when the size is known)."""
        def scroll() -> None:
            height = max(self.scrollable_content_region.height - 1, 1)
            top = max(0, min(row - height // 2, self.shape[0] - height))
            first = max(0, min(col - self.visible_cols() // 2, self.shape[1] - self.visible_cols()))
            self.scroll_to(first * self.cell_width, top, animate=False, immediate=True)

        self.call_after_refresh(scroll)

    def refresh_cells(self) -> None:
        self._version += 1
        self._strip_cache.clear()
        self.refresh()

    def watch_cursor(self, old: tuple[int, int] | None, new: tuple[int, int] | None) -> None:
        self.refresh()
        if new is not None:
            self.scroll_cursor_visible()
            self.post_message(self.CursorMoved(self, *new))

    def scroll_cursor_visible(self) -> None:
        if self.cursor is None:
            return
        row, col = self.cursor
        height = max(self.scrollable_content_region.height - 1, 1)
        scroll_x, scroll_y = self.scroll_offset
        if row < scroll_y:
            scroll_y = row
        elif row >= scroll_y + height:
            scroll_y = row - height + 1
        visible = self.visible_cols()
        first = -(-scroll_x // self.cell_width)  # the first whole cell in view
        if col < first:
            first = col
        elif col >= first + visible:
            first = col - visible + 1
        self.scroll_to(first * self.cell_width, scroll_y, animate=False, immediate=True)

    def move_cursor(self, d_row: int, d_col: int) -> None:
        rows, cols = self.shape
        if not rows or not cols:
            return
        row, col = self.cursor or (0, 0)
        self.cursor = (min(max(row + d_row, 0), rows - 1), min(max(col + d_col, 0), cols - 1))

    def _bucket_style(self, value: float) -> Style:
        styles = bucket_styles(self.diverging)
        if self.diverging:
            position = 0.5 + 0.5 * max(-1.0, min(1.0, value / self.scale))
        else:
            position = max(0.0, min(1.0, value / self.scale))
        return styles[round(position * (BUCKETS - 1))]

    def _cells(self, row: int) -> Strip:
        """The row's cells across the full virtual width (cached by data version and cursor)."""
        shown = self.cursor_shown and self.cursor is not None
        cursor_col = self.cursor[1] if shown and self.cursor is not None and self.cursor[0] == row else None
        key = (self._version, row, cursor_col)
        cached = self._strip_cache.get(key)
        if cached is not None:
            return cached
        assert self.values is not None
        width = self.cell_width
        segments = []
        for col, value in enumerate(self.values[row]):
            mark = self.marks.get((row, col), "")
            if self.show_numbers:
                segments.extend(self._number_cell(float(value), mark, col == cursor_col))
                continue
            if math.isnan(value):
                style, mark = self.base_style, mark or "·"
            else:
                style = self._bucket_style(float(value))
            if col == cursor_col:
                if width >= 3 and len(mark) <= width - 2:
                    text = ("[" + (mark or " ") + "]").center(width)
                else:
                    text = (mark or "[]").center(width)
                style = style + Style(reverse=width < 3 or len(mark) > width - 2, underline=True)
            else:
                text = (mark or " ").center(width)
            segments.append(Segment(text[:width], style))
        strip = Strip(segments, len(self.values[row]) * width)
        self._strip_cache[key] = strip
        return strip

    def _number_cell(self, value: float, mark: str, on_cursor: bool) -> list[Segment]:
        """A number mode cell: the value right-aligned (a mark only where it replaces the value), then
        one blank column in the plain background so that two numbers never run together."""
        if math.isnan(value):
            text, style = (mark or "·").rjust(NUMBER_WIDTH), self.base_style
        else:
            style = self._bucket_style(value)
            text = (mark if mark and mark not in self.numbered_marks else cell_number(value, NUMBER_WIDTH))
            text = text.rjust(NUMBER_WIDTH)
            if mark in self.numbered_marks:
                style = style + Style(underline=True)  # e.g. a verified estimate: the exact value, underlined
        if on_cursor:
            style = style + Style(reverse=True, underline=True)
        return [Segment(text[:NUMBER_WIDTH], style), Segment(" ", self.base_style)]

    def _header(self) -> Strip:
        cursor_col = self.cursor[1] if self.cursor_shown and self.cursor else None
        key = (self._version, "header", cursor_col)
        cached = self._strip_cache.get(key)
        if cached is not None:
            return cached
        base = self.base_style + Style(dim=True)
        highlight = self.base_style + Style(bold=True, reverse=True)
        segments = []
        for col, label in enumerate(self.col_labels):
            style = highlight if cursor_col == col else base
            segments.append(Segment(label[: self.cell_width].center(self.cell_width), style))
        strip = Strip(segments, len(self.col_labels) * self.cell_width)
        self._strip_cache[key] = strip
        return strip

    @property
    def base_style(self) -> Style:
        """The widget's own style, computed once per paint: rich_style walks every ancestor."""
        if self._base_style is None:
            self._base_style = self.rich_style
        return self._base_style

    def render_lines(self, crop: Region) -> list[Strip]:
        self._base_style = None  # styles may have changed since the last paint (focus, theme)
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        rows, cols = self.shape
        if self.values is None or not rows:
            if y == 0 and self.empty_text:
                return Strip([Segment(self.empty_text[:width], self.base_style + Style(dim=True))]
                             ).extend_cell_length(width, self.base_style)
            return Strip.blank(width, self.base_style)
        scroll_x, scroll_y = self.scroll_offset
        label_width = self._label_width
        cells_width = max(width - label_width, 0)
        if y == 0:
            label = Segment(" " * label_width, self.base_style)
            body = self._header()
        else:
            row = y - 1 + scroll_y
            if row >= rows:
                return Strip.blank(width, self.base_style)
            on_cursor = self.cursor_shown and self.cursor is not None and self.cursor[0] == row
            marked = row in self.row_marks
            label_style = self.base_style + (Style(bold=True, reverse=True) if on_cursor
                                             else Style(bold=True) if marked else Style(dim=True))
            label = Segment(self.row_labels[row].rjust(label_width - 1) + ("*" if marked else " "),
                            label_style)
            body = self._cells(row)
        if self.show_numbers:
            # Whole cells only: a number cut at either edge (`-12.06` as `12.0`) would read as another number.
            scroll_x += -scroll_x % self.cell_width  # up: scrolled to the end, the last cell shows whole
            cells_width -= cells_width % self.cell_width
        body = body.crop(scroll_x, scroll_x + cells_width)
        return Strip([label, *body]).extend_cell_length(width, self.base_style).crop(0, width)
