"""Text from prompts, models, files and sessions shown as written: never read as markup, never sent raw.

Two ways such text could act instead of being shown. Textual reads a string given to a Static or Label,
a border title or a table cell as markup: a prompt holding `[/INST]` or a typed `[/x]` raised a
MarkupError that closed the app, and `vector [d_model]` lost its bracket. And Textual writes control
characters through to the terminal: an ESC in a prompt-set file or a shared session recoloured the
screen or set the terminal's title (OSC sequences can do more). So every static text of the TUI is a
`Plain` or `PlainLabel` (a test holds the TUI to it), table cells come from `cell`, border titles with
data from `plain_title`, and fields and text areas show control characters as the Unicode control pictures
(one cell each, so the cursor still lines up): ESC reads ␛.
"""

from __future__ import annotations

from rich.highlighter import Highlighter
from rich.text import Text
from textual.content import Content
from textual.visual import VisualType
from textual.widgets import Static, TextArea

# C0 controls but tab and newline, DEL, and the C1 controls (8-bit CSI and OSC on some terminals).
_MULTILINE = {code: chr(0x2400 + code) for code in range(0x20) if code not in (0x09, 0x0A)}
_MULTILINE |= {0x7F: "\u2421"} | {code: "\ufffd" for code in range(0x80, 0xA0)}
_ONE_LINE = _MULTILINE | {0x09: "\u2409", 0x0A: "\u240a"}


def visible(text: str, lines: bool = True) -> str:
    """`text` with each control character replaced by one visible character; `lines` keeps newlines and tabs."""
    return text.translate(_MULTILINE if lines else _ONE_LINE)


def shown(content: VisualType, lines: bool = True) -> VisualType:
    """Content made safe to show: strings, rich Text and textual Content keep their styles and lengths
    with control characters made visible; other renderables (tables of our own making) pass as they are."""
    if isinstance(content, str):
        return visible(content, lines)
    if isinstance(content, Text):
        safe = content.copy()
        safe.plain = visible(content.plain, lines)
        return safe
    if isinstance(content, Content):
        return Content(visible(content.plain, lines), list(content.spans))
    return content


def cell(text: object, style: str = "") -> Text:
    """A DataTable cell showing `text` as written (a plain string cell would be read as markup)."""
    return Text(visible(str(text), lines=False), style=style)


def plain_title(text: str) -> Content:
    """A border title or subtitle showing `text` as written (a plain string would be read as markup)."""
    return Content(visible(text, lines=False))


class Plain(Static):
    """A Static whose string content is shown as written, never parsed as markup nor sent raw."""

    def __init__(self, content: VisualType = "", *, expand: bool = False, shrink: bool = False,
                 name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(shown(content), expand=expand, shrink=shrink, markup=False, name=name, id=id,
                         classes=classes, disabled=disabled)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        super().update(shown(content), layout=layout)


class PlainLabel(Plain):
    """A label: a Plain as wide as its text (Textual's Label, shown as written)."""

    DEFAULT_CSS = """
    PlainLabel { width: auto; height: auto; min-height: 1; }
    """


class ControlPictures(Highlighter):
    """An Input's highlighter that shows its value's control characters as control pictures."""

    def highlight(self, text: Text) -> None:
        text.plain = visible(text.plain, lines=False)


class PlainTextArea(TextArea):
    """A TextArea that shows control characters in its lines as control pictures."""

    def get_line(self, line_index: int) -> Text:
        line = super().get_line(line_index)
        line.plain = visible(line.plain, lines=False)
        return line
