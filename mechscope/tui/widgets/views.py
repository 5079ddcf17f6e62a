"""The view tabs: attention pattern, logit lens, sweep results, generation, activation stats."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from mechscope.engine.results import (
    GAP_EPSILON,
    ActivationStats,
    GeneratedToken,
    LogitLens,
    SweepResult,
)
from mechscope.tui.commands import key_of
from mechscope.tui.widgets.heatmap import Heatmap
from mechscope.tui.widgets.plain import Plain, cell
from mechscope.tui.widgets.prompt_pane import show_token

SWEEP_TITLES = {"head": "head patching", "resid": "residual patching", "atp": "attribution patching",
                "attn": "attention-output patching", "mlp": "MLP-output patching"}
PER_POSITION = ("resid", "attn", "mlp")  # sweeps whose columns are positions, not heads


def position_labels(count: int) -> list[str]:
    """Column labels two cells wide: every fifth position numbered, the rest dotted."""
    return [str(pos) if pos % 5 == 0 else "·" for pos in range(count)]


class AttentionMap(Heatmap, can_focus=True):
    """The attention heatmap with a (query, key) cell cursor, drawn while it has the focus."""

    DEFAULT_CSS = """
    AttentionMap:focus { background-tint: $accent 8%; }
    """

    BINDINGS = [
        Binding("up", "move(-1, 0)", "Query up", show=False),
        Binding("down", "move(1, 0)", "Query down", show=False),
        Binding("left", "move(0, -1)", "Key left", show=False),
        Binding("right", "move(0, 1)", "Key right", show=False),
        Binding("pageup", "move(-8, 0)", "Page up", show=False),
        Binding("pagedown", "move(8, 0)", "Page down", show=False),
        Binding("k,enter", "screen.command('knockout')", "knock out"),
    ]

    @property
    def cursor_shown(self) -> bool:
        return self.has_focus and self.cursor is not None

    def watch_cursor(self, old: tuple[int, int] | None, new: tuple[int, int] | None) -> None:
        self.refresh()
        if new is not None:
            if self.has_focus:  # unfocused, the view stays scrolled where the user left it
                self.scroll_cursor_visible()
            self.post_message(self.CursorMoved(self, *new))

    def on_focus(self) -> None:
        self.scroll_cursor_visible()
        self.refresh_cells()

    def on_blur(self) -> None:
        self.refresh_cells()

    def action_move(self, d_row: int, d_col: int) -> None:
        self.move_cursor(d_row, d_col)


class AttentionView(Vertical):
    """Query x key attention of the selected head, token labels on the rows, positions on top."""

    DEFAULT_CSS = """
    AttentionView #attention-caption { height: 1; color: $text-muted; }
    AttentionView #attention-roles { height: auto; display: none; }
    AttentionView #attention-roles.shown { display: block; }
    AttentionView Heatmap { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.address: str | None = None  # the head whose pattern is shown
        self.pattern: np.ndarray | None = None  # [query, key]
        self.tokens: list[str] = []
        self.caption_text = ""

    def compose(self) -> ComposeResult:
        yield Plain("move the grid cursor to a head", id="attention-caption")
        yield Plain("", id="attention-roles")
        yield AttentionMap(cell_width=2, diverging=False, id="attention-map")

    def show_roles(self, table: str | None) -> None:
        """The head's role x role attention over the prompt set (None: no set, or not computed yet)."""
        roles = self.query_one("#attention-roles", Static)
        roles.set_class(table is not None, "shown")
        roles.update(table or "")

    def show(self, address: str, pattern: np.ndarray, tokens: list[str],
             knocked_out: dict[tuple[int, int], str] | None = None) -> None:
        """pattern: [query, key]; `knocked_out` marks the (query, key) cells of knocked-out edges."""
        self.address, self.pattern, self.tokens = address, pattern, tokens
        width = len(str(len(tokens)))
        rows = [f"{pos:>{width}} {show_token(tok)[:7]:<7}"
                for pos, tok in enumerate(tokens[: pattern.shape[0]])]
        heatmap = self.query_one(AttentionMap)
        heatmap.marks = dict(knocked_out or {})
        heatmap.set_data(pattern, rows, position_labels(pattern.shape[1]), scale=1.0)
        if heatmap.cursor is None and pattern.size:
            heatmap.set_reactive(AttentionMap.cursor, (pattern.shape[0] - 1, 0))  # last query, first key
            heatmap.show_cell(pattern.shape[0] - 1, 0)  # open on the last query: the one predicting
        self.show_caption()

    def set_knockouts(self, knocked_out: dict[tuple[int, int], str]) -> None:
        self.query_one(AttentionMap).set_marks(knocked_out)

    def show_caption(self) -> None:
        """The head and, while the map has the focus, the cell under the cursor."""
        pattern, tokens, address = self.pattern, self.tokens, self.address
        if pattern is None or address is None:
            return
        heatmap = self.query_one(AttentionMap)
        caption = self.query_one("#attention-caption", Static)
        if heatmap.has_focus and heatmap.cursor is not None:
            query, key = heatmap.cursor
            text = (f"{address} query {query}{show_token(tokens[query]) if query < len(tokens) else ''}"
                    f" → key {key}{show_token(tokens[key]) if key < len(tokens) else ''}"
                    f" = {float(pattern[query, key]):.3f} · k knocks out, esc back")
        else:
            query_top = int(np.argmax(pattern[-1])) if pattern.size else 0
            text = (f"{address} query↓ key→ · last token → {query_top}"
                    f"{show_token(tokens[query_top]) if query_top < len(tokens) else ''}")
        if text != self.caption_text:  # most recomputes leave it as it is: no repaint
            self.caption_text = text
            caption.update(text, layout=False)

    @on(Heatmap.CursorMoved, "#attention-map")
    def cursor_moved(self, event: Heatmap.CursorMoved) -> None:
        event.stop()
        self.show_caption()

    @on(events.DescendantFocus)
    @on(events.DescendantBlur)
    def focus_changed(self) -> None:
        self.show_caption()

    def clear(self, reason: str) -> None:
        self.address, self.pattern, self.caption_text = None, None, reason
        self.query_one(AttentionMap).set_data(None, [], [])
        self.query_one("#attention-caption", Static).update(reason)


class LensView(Vertical):
    """Per layer: the top tokens of the decoded residual, and the target's rank and probability."""

    DEFAULT_CSS = """
    LensView #lens-caption { height: 1; color: $text-muted; }
    LensView DataTable { height: 1fr; }
    """

    COLUMNS = ("layer", "target rank", "p(target)", "top tokens")

    def compose(self) -> ComposeResult:
        yield Plain("logit lens: waiting for a run", id="lens-caption")
        table: DataTable = DataTable(id="lens-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*self.COLUMNS)
        yield table

    def show(self, lens: LogitLens | None) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)  # a column keeps the widest content it ever held; this lens sizes them
        table.add_columns(*self.COLUMNS)
        caption = self.query_one("#lens-caption", Static)
        if lens is None:
            caption.update("logit lens: not computed")
            return
        critical = lens.critical_layer
        for layer in range(lens.top_ids.shape[0]):
            rank = "" if lens.target_rank is None else str(int(lens.target_rank[layer]) + 1)
            prob = "" if lens.target_prob is None else f"{float(lens.target_prob[layer]):.3f}"
            tops = " ".join(f"{show_token(tok)[:8]}:{p:.2f}" for tok, p in
                            zip(lens.top_tokens[layer], lens.top_probs[layer], strict=False))
            label = f"L{layer}" + (" ◀" if layer == critical else "")
            table.add_row(label, rank, prob, cell(tops), key=str(layer))
        if table.row_count:  # open on what matters: the critical layer, else the last layers
            table.move_cursor(row=critical if critical is not None else table.row_count - 1, animate=False)
        where = f"critical layer L{critical}" if critical is not None else "target never stays top-1"
        caption.update(f"logit lens at position {lens.position}: {where}")


COMPACT_SWEEP_HEIGHT = 14  # below this many rows the sweep view's header shrinks to two short lines


class SweepView(Vertical):
    """A sweep's progress, its strongest components, and its matrix (streamed as rows complete).

    In a short view (80x24) the header shrinks to two lines so that the matrix stays in sight."""

    DEFAULT_CSS = """
    SweepView #sweep-summary { height: auto; max-height: 8; }
    SweepView Heatmap { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.shown: tuple[SweepResult, bool, str, str, str] | None = None  # what `show` was given last
        self.normalised = False
        self.title = ""  # what the view calls the sweep shown (`head patching`, `path patching → L23.H3.q`)

    def compose(self) -> ComposeResult:
        head, atp, resid = (key_of(f"sweep('{kind}')") for kind in ("head", "atp", "resid"))
        yield Plain(f"no sweep yet: {head} runs head patching, {atp} AtP, {resid} residual patching, "
                    f"{key_of('sweep_options')} chooses", id="sweep-summary")
        yield Heatmap(cell_width=3, diverging=True, id="sweep-map")

    def show(self, result: SweepResult, running: bool, header: str = "", note: str = "",
             short_header: str = "", normalised: bool = False, title: str = "") -> None:
        """`header` names the runs and the model (Workbench.sweeps.header), `short_header` says it in two
        short lines for a short view; `note` follows the state. `normalised`: the matrix shows each
        cell's share of the gap source - base instead of its Δ metric (the strongest cells list both)."""
        self.shown = (result, running, header, note, short_header)
        self.normalised = normalised
        self.title = title or SWEEP_TITLES.get(result.kind, result.kind)
        order = self.show_summary()
        # head/atp: [layer, head]; resid: [layer, pos]
        values = result.normalised if normalised and result.kind != "atp" else result.values
        cols = ([str(c) for c in range(values.shape[1])] if result.kind not in PER_POSITION
                else position_labels(values.shape[1]))
        heatmap = self.query_one(Heatmap)
        heatmap.set_data(values, [f"L{r}" for r in range(values.shape[0])], cols)
        if not running and len(order) and np.isfinite(values).any():
            heatmap.show_cell(*divmod(int(order[0]), values.shape[1]))  # open on the strongest cell

    def on_resize(self) -> None:
        self.show_summary()

    def show_summary(self) -> np.ndarray:
        """Write the header and the strongest cells for the view's size; returns the cells by strength."""
        if self.shown is None:
            return np.zeros(0, dtype=np.int64)
        result, running, header, note, short_header = self.shown
        values = result.values
        done_rows = int(np.isfinite(values).all(axis=1).sum()) if values.size else 0
        finite = np.where(np.isfinite(values), values, 0.0)
        order = np.argsort(-np.abs(finite), axis=None)[:3]
        compact = bool(short_header) and 0 < self.size.height < COMPACT_SWEEP_HEIGHT  # 0: a hidden tab
        text = Text()
        if compact:
            first, _, rest = short_header.partition("\n")
            progress = "" if result.complete else f" · {done_rows}/{values.shape[0]}" + ("" if running else " stopped")
            first += progress
            if len(first) + len(note) <= self.size.width:
                first += note
            text.append(first + "\n", style="bold")
            text.append(rest + "\n", style="dim")
            room = self.size.height - 2 - 4  # the matrix keeps its column labels, two rows and a scrollbar
            order_shown = order[:max(0, min(len(order), room))]
        else:
            state = "running, esc cancels" if running else ("complete" if result.complete else "stopped")
            text.append(self.title, style="bold")
            text.append(f"  {done_rows}/{values.shape[0]} layers  {state}{note}\n")
            if header:
                text.append(header + "\n", style="dim")
            order_shown = order
        gap = result.source_metric - result.base_metric
        for flat in order_shown:
            row, col = divmod(int(flat), values.shape[1])
            if not np.isfinite(values[row, col]):
                continue
            label = (f"L{row}.H{col}" if result.kind not in PER_POSITION
                     else f"{result.row_labels[row]} pos {result.col_labels[col]}")
            share = values[row, col] / gap if abs(gap) > GAP_EPSILON else float("nan")
            if self.normalised and np.isfinite(share):
                text.append(f"  {label:<14} {share:+.2f} of the gap  (Δ {values[row, col]:+.3f})\n")
            else:
                shown = f"  ({share:+.2f} of the gap)" if np.isfinite(share) else ""
                text.append(f"  {label:<14} {values[row, col]:+.3f}{shown}\n")
        text.rstrip()
        self.query_one("#sweep-summary", Static).update(text)
        return order


class GenerationView(Horizontal):
    """Baseline and intervened continuations side by side, appended token by token."""

    DEFAULT_CSS = """
    GenerationView VerticalScroll { width: 1fr; border: round $panel; }
    GenerationView Static { width: 1fr; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="gen-baseline-box"):
            yield Plain("g generates from the clean prompt", id="gen-baseline")
        with VerticalScroll(id="gen-intervened-box"):
            yield Plain("", id="gen-intervened")

    def on_mount(self) -> None:
        self.query_one("#gen-baseline-box").border_title = "baseline"
        self.query_one("#gen-intervened-box").border_title = "with interventions"
        self.texts = {"baseline": Text(), "intervened": Text()}

    def reset(self, prompt: str) -> None:
        self.query_one("#gen-intervened-box").border_subtitle = ""
        for lane in ("baseline", "intervened"):
            self.texts[lane] = shown_continuation(prompt, "dim")
            self.query_one(f"#gen-{lane}", Static).update(self.texts[lane])

    def mark_stale(self) -> None:
        """The interventions or prompt changed since this generation: say so, with the key that reruns it."""
        self.query_one("#gen-intervened-box").border_subtitle = f"stale: {key_of('generate')} to rerun"

    def append(self, lane: str, token: GeneratedToken) -> None:
        """Add a token to a lane; a lane scrolled to its end stays there, so the newest token shows."""
        box = self.query_one(f"#gen-{lane}-box", VerticalScroll)
        following = box.scroll_y >= box.max_scroll_y
        self.texts[lane].append_text(shown_continuation(token.text, "bold" if token.prob > 0.5 else ""))
        self.query_one(f"#gen-{lane}", Static).update(self.texts[lane])
        if following:
            box.call_after_refresh(box.scroll_end, animate=False)


def shown_continuation(text: str, style: str = "") -> Text:
    """Generated text as a lane shows it: a line break marked ↵ before it breaks the line, a tab →,
    other control characters escaped (never sent raw), so a run of newlines does not look empty."""
    shown = Text()
    start = 0
    for index, char in enumerate(text):
        if char.isprintable():
            continue
        shown.append(text[start:index], style=style)  # the printable run before it
        start = index + 1
        if char == "\n":
            shown.append("↵", style="dim")
            shown.append("\n")
        else:
            shown.append("→" if char == "\t" else repr(char)[1:-1], style="dim")
    shown.append(text[start:], style=style)
    return shown


def stats_text(stats: ActivationStats | None) -> Text:
    text = Text()
    if stats is None:
        return Text("activation stats: not computed", style="dim")
    norms = stats.resid_norm  # [layer, pos]
    per_layer = norms.mean(axis=1) if norms.size else np.zeros(0)
    peak = float(per_layer.max()) if per_layer.size else 1.0
    text.append("residual norm after each layer (mean over positions, max)\n", style="bold")
    for layer, value in enumerate(per_layer):
        bar = "█" * max(1, round(16 * float(value) / peak)) if peak > 0 else ""
        text.append(f"L{layer:<3}", style="dim")
        text.append(f"{bar:<16} {float(value):9.2f} {float(norms[layer].max()):9.2f}\n")
    text.append(f"\nlargest activations (median |x| {stats.median_abs:.3g})\n", style="bold")
    for layer, pos, dim, value in stats.top[:8]:
        ratio = abs(value) / stats.median_abs if stats.median_abs else float("inf")
        text.append(f"L{layer:<3} pos {pos:<4} dim {dim:<5} {value:+10.2f}  ({ratio:,.0f}x median)\n")
    text.rstrip()
    return text


class StatsView(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Plain(stats_text(None), id="stats-text")

    def show(self, stats: ActivationStats | None) -> None:
        self.query_one("#stats-text", Static).update(stats_text(stats))
