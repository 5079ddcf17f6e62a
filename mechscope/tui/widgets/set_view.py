"""The "set" view tab: the set-level numbers, a sortable per-row table, set sweep, estimate, massive
activations. Every key it mentions comes from the key table."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable, Static

from mechscope.engine.metric import METRIC_TITLES
from mechscope.tui.commands import key_of, palette_title
from mechscope.tui.widgets.plain import Plain, cell
from mechscope.workbench.sets import EXACT_MARK, PromptSets
from mechscope.workbench.sweeps import sweep_runs

SHOWN_CELLS = 5  # strongest cells of a set sweep
OUTLIER_MADS = 3.5  # a row whose Δ (or metric) is this many scaled MADs from the median is flagged
SORTS = ("row", "Δ", "without", "with")  # what `s` in the table cycles through
LISTED_PROBLEMS = 8  # failing rows named in the set tab; the rest are counted


def mean_std(values: Any) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():+.3f} ± {v.std():.3f}"


def outliers(values: np.ndarray) -> np.ndarray:
    """True for values far from the median (robust z: |v - median| / (1.4826 MAD) > OUTLIER_MADS)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 4:
        return np.zeros(v.shape, dtype=bool)
    median = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - median))
    if mad <= 1e-12:
        return np.abs(v - median) > 1e-6 * max(1.0, abs(median))
    return np.abs(v - median) / mad > OUTLIER_MADS


def summary_text(sets: PromptSets) -> Text:
    """The set, its row and the set numbers, one fact per line (never cut at 120 columns)."""
    text = about_text(sets)
    return text if sets.pset is None else text + numbers_text(sets)


def about_text(sets: PromptSets) -> Text:
    """The set, its row, what loading it changed and the rows that fail the checks."""
    if sets.pset is None:
        return Text(f"no prompt set: {key_of('prompt_set')} loads a JSONL / CSV file or generates "
                    "ioi / capitals / induction", style="dim")
    text = Text(f"set {sets.pset.name} · row {sets.row + 1}/{len(sets.pset)} "
                f"({key_of('set_row(-1)')} {key_of('set_row(1)')} step, enter in the table picks)", style="bold")
    if sets.changes:
        text.append(f"\n{sets.changes}", style="cyan")
    if sets.problems:
        text.append(f"\n{len(sets.problems)} row(s) fail the checks ({key_of('use_spaced_tokens')} fixes spacing, "
                    f"palette {palette_title('drop_failing_rows')!r} drops them):", style="yellow")
        for problem in sets.problems[:LISTED_PROBLEMS]:
            text.append(f"\n  {problem.note}", style="yellow")
        if len(sets.problems) > LISTED_PROBLEMS:
            text.append(f"\n  … {len(sets.problems) - LISTED_PROBLEMS} more", style="yellow")
    return text


def numbers_text(sets: PromptSets) -> Text:
    """The metric over the set without and with the interventions, and what to check (each line starts
    with a newline: it follows `about_text`)."""
    text = Text()
    run = sets.run
    if run is None or not run.ok:
        text.append(f"\nset numbers not computed ({key_of('set_numbers')})", style="dim")
        return text
    request, result = run.request, run.result
    kind = METRIC_TITLES.get(getattr(request, "metric_kind", ""), "metric")
    text.append(f"\n{kind} baseline {mean_std(result.baseline)} (no interventions)")
    count = len(getattr(request, "interventions", ()))
    if count:
        text.append(f"\nwith {count} intervention(s) {mean_std(result.values)}  "
                    f"Δ {mean_std(np.asarray(result.values) - np.asarray(result.baseline))}")
    flagged = int((outliers(result.baseline) | outliers(np.asarray(result.values) - result.baseline)).sum())
    if flagged:
        text.append(f"\n{flagged} outlier row(s) flagged ! in the table (check their target / foil)",
                    style="yellow")
    if sets.run_is_stale():
        text.append(f"\nstale: interventions or metric changed ({key_of('set_numbers')} reruns)",
                    style="yellow")
    return text


def sweep_progress(result: Any) -> str:
    """`12/30 layers`: the layers of a streamed set sweep whose every head is done on every row."""
    per_row = np.asarray(result.per_row)  # [row, layer, head]
    done = int(np.isfinite(per_row).all(axis=(0, 2)).sum()) if per_row.size else 0
    return f"{done}/{per_row.shape[1]} layers"


def sweep_text(sets: PromptSets) -> Text:
    result = sets.sweep_result()
    if result is None:
        return Text(f"set sweep: not run ({key_of('set_sweep')})\n", style="dim")
    mean, std = np.asarray(result.mean), np.asarray(result.std)
    state = "complete" if result.complete else f"running: {sweep_progress(result)}"
    base, source = float(np.mean(result.base_metric)), float(np.mean(result.source_metric))
    patched, source_run = sweep_runs(result.direction)
    text = Text(f"set sweep ({result.direction}, {len(result.base_metric)} rows, {state}, unedited model): "
                f"base metric ({patched}) {base:+.3f}, source ({source_run}) {source:+.3f}, "
                f"gap {source - base:+.3f}; strongest cells (Δ mean ± std over rows, share of the mean gap):\n")
    shares = np.asarray(result.normalised)  # [layer, head]
    flat = np.nan_to_num(np.abs(mean), nan=-1.0).ravel()
    for index in np.argsort(-flat, kind="stable")[:SHOWN_CELLS]:
        if flat[index] < 0:
            break
        layer, head = divmod(int(index), mean.shape[1])
        share = shares[layer, head]
        share_text = f" ({share:+.2f} of the gap)" if np.isfinite(share) else ""
        if sets.bench.sweeps.effect_scale == "normalised" and np.isfinite(share):
            text.append(f"  L{layer}.H{head} {share:+.2f} of the gap (Δ {mean[layer, head]:+.3f} "
                        f"± {std[layer, head]:.3f})\n")
        else:
            text.append(f"  L{layer}.H{head} {mean[layer, head]:+.3f} ± {std[layer, head]:.3f}{share_text}\n")
    return text


def estimate_text(sets: PromptSets) -> Text:
    outcome = sets.estimate
    if outcome is None or not outcome.ok:
        return Text(f"estimate: not run ({key_of('estimate')})\n", style="dim")
    result = outcome.result
    text = Text(f"estimate {result.method} (grid \"estimate\")")
    if not result.exact:
        return text + Text(f": no head verified ({key_of('estimate')} with verify k > 0 patches the top k "
                           "exactly)\n")
    text.append(f": {len(result.exact)} top head(s) verified by exact patching, "
                f"marked {EXACT_MARK} on the grid (in number mode their cells show the exact value):\n")
    for (layer, head), exact in result.exact.items():
        text.append(f"  L{layer}.H{head} estimated {result.estimated[layer, head]:+.3f} → "
                    f"exact {exact:+.3f}\n")
    return text


def function_vector_text(sets: PromptSets) -> Text:
    lines = sets.circuits.function_vector_lines()
    if not lines:
        return Text(f"function vector: not computed ({key_of('function_vector')}, on an in-context set)\n",
                    style="dim")
    return Text("\n".join(lines) + "\n")


def massive_table(sets: PromptSets) -> Table | Text:
    outcome = sets.massive
    if outcome is None or not outcome.ok:
        return Text(f"massive activations: not computed ({key_of('massive')})", style="dim")
    layers: list[Any] = outcome.result
    table = Table(title=f"massive activations over {len(sets.pset or ())} prompts "
                        f"(|h| > {outcome.request.ratio:g} × the layer's median)",  # type: ignore[union-attr]
                  title_justify="left", box=None, padding=(0, 1))
    for column in ("layer", "dims", "values", "in prompts", "constant"):
        table.add_column(column)
    for layer in layers:
        if not layer.dims:
            table.add_row(f"L{layer.layer}", "-", "", "", "")
            continue
        values = ", ".join(f"{np.nanmean(np.asarray(p, dtype=float)):+.1f}" for p in layer.peak)
        counts = ", ".join(str(c) for c in layer.counts)
        table.add_row(f"L{layer.layer}", ", ".join(str(d) for d in layer.dims), values, counts,
                      "yes" if layer.constant else "no")
    return table


def excerpts(clean: str, corrupted: str, width: int = 22) -> tuple[str, str]:
    """The two prompts around where they first differ (an IOI pair differs in one name near the end)."""
    clean, corrupted = clean.replace("\n", " "), corrupted.replace("\n", " ")
    differ = next((i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b), min(len(clean), len(corrupted)))
    start = max(0, min(differ - width // 2, max(len(clean), len(corrupted)) - width))

    def window(text: str) -> str:
        piece = text[start:start + width]
        return ("…" if start > 0 else "") + piece + ("…" if start + width < len(text) else "")

    return window(clean), window(corrupted) if corrupted else ""


def row_cells(sets: PromptSets) -> list[tuple[int, tuple[Any, ...]]]:
    """(row index, cells) of the per-row table: row, the metric without and with the interventions, Δ,
    ! for an outlier (numbers only once O has run), target / foil, clean / corrupted excerpt."""
    if sets.pset is None:
        return []
    run = sets.run if sets.run is not None and sets.run.ok and not sets.run_is_stale() else None
    baseline = values = delta = flags = None
    if run is not None and len(run.result.baseline) == len(sets.pset):
        baseline = np.asarray(run.result.baseline, dtype=np.float64)
        values = np.asarray(run.result.values, dtype=np.float64)
        delta = values - baseline
        flags = outliers(baseline) | outliers(delta)
    rows = []
    for index, row in enumerate(sets.pset.rows):
        numbers: tuple[Any, ...] = ("", "", "", "")
        if baseline is not None and values is not None and delta is not None and flags is not None:
            numbers = (float(baseline[index]), float(values[index]), float(delta[index]),
                       "!" if flags[index] else "")
        rows.append((index, (index + 1, *numbers, f"{row.target!r}/{row.foil!r}",
                             *excerpts(row.clean, row.corrupted))))
    return rows


class SetRowTable(DataTable):
    """The prompt set's rows; enter makes the highlighted row the current inputs; `s` cycles the sort."""

    BINDINGS = [Binding("enter", "pick", "Use row", show=False), Binding("s", "sort", "Sort", show=False)]

    class Picked(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self) -> None:
        super().__init__(id="set-table", cursor_type="row", zebra_stripes=True)
        self.sort_by = "row"
        self.shown_key: tuple[Any, ...] | None = None

    COLUMNS = (("row", "row"), ("without", "without"), ("with", "with"), ("Δ", "Δ"), ("", "flag"),
               ("target/foil", "tokens"), ("clean", "clean"), ("corrupted", "corrupted"))  # (label, key)

    def on_mount(self) -> None:
        self.add_set_columns()

    def add_set_columns(self) -> None:
        for label, key in self.COLUMNS:
            self.add_column(label, key=key)

    def fill(self, sets: PromptSets) -> None:
        key = (sets.pset, id(sets.run), sets.run_is_stale() if sets.pset is not None else None)
        if key != self.shown_key:
            self.shown_key = key
            self.clear(columns=True)  # a column keeps the widest content it ever held; this set sizes them
            self.add_set_columns()
            for index, cells in row_cells(sets):
                style = "bold yellow" if cells[4] == "!" else ""
                self.add_row(*(cell(f"{c:+.3f}" if isinstance(c, float) else c, style) for c in cells),
                             key=str(index))
            self.apply_sort()
        if sets.pset is not None and self.row_count:
            row = self.get_row_index(str(sets.row))
            if row != self.cursor_row:
                self.move_cursor(row=row, animate=False)

    def apply_sort(self) -> None:
        if not self.row_count:
            return

        def number(text: Any) -> float:
            try:
                return float(str(text))
            except ValueError:
                return float("nan")

        if self.sort_by == "row":
            self.sort("row", key=lambda v: int(str(v)))
        else:  # largest magnitude first; rows without numbers last
            self.sort(self.sort_by, key=lambda v: -abs(n) if (n := number(v)) == n else float("inf"))

    def action_sort(self) -> None:
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        self.apply_sort()
        self.border_title = f"rows · sorted by {self.sort_by} (s)"

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = str(event.column_key.value)
        if column in SORTS:
            self.sort_by = column
            self.apply_sort()
            self.border_title = f"rows · sorted by {self.sort_by} (s)"

    def action_pick(self) -> None:
        if self.row_count:
            key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key
            self.post_message(self.Picked(int(str(key.value))))


class SetView(VerticalScroll):
    """Renders a `PromptSets` state; never holds state of its own (the table's sort aside)."""

    DEFAULT_CSS = """
    SetView #set-table { height: auto; max-height: 12; }
    """

    def compose(self) -> ComposeResult:
        yield Plain("", id="set-numbers")
        yield SetRowTable()
        yield Plain("", id="set-results")
        yield Plain("", id="set-massive")

    def show_numbers(self, sets: PromptSets) -> None:
        """Scroll the set numbers (below the set's name and failing rows) to the top, the table under them."""
        summary = self.query_one("#set-numbers", Static)

        def scroll() -> None:
            above = len(about_text(sets).wrap(self.app.console, max(summary.content_size.width, 1)))
            self.scroll_to(y=summary.virtual_region.y + above, animate=False)

        self.call_after_refresh(scroll)

    def show_results(self) -> None:
        """Scroll to the set sweep and estimate (below the table) once the layout is done."""
        self.call_after_refresh(lambda: self.scroll_to_widget(self.query_one("#set-results"), animate=False,
                                                              top=True))

    def show(self, sets: PromptSets) -> None:
        self.query_one("#set-numbers", Static).update(summary_text(sets))
        table = self.query_one(SetRowTable)
        table.display = sets.pset is not None
        table.fill(sets)
        self.query_one("#set-results", Static).update(Text.assemble(sweep_text(sets), estimate_text(sets),
                                                                    function_vector_text(sets)))
        self.query_one("#set-massive", Static).update(massive_table(sets))
