"""The "set" view tab: the prompt set's rows, set-level numbers, set sweep, estimate, massive activations."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mechscope.workbench.sets import EXACT_MARK, PromptSets

SHOWN_ROWS = 8  # rows listed around the selected one
SHOWN_CELLS = 5  # strongest cells of a set sweep


def _clip(text: str, width: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def rows_table(sets: PromptSets) -> Table | Text:
    if sets.pset is None:
        return Text("no prompt set: L loads a JSONL / CSV file or generates ioi / capitals / induction",
                    style="dim")
    table = Table.grid(padding=(0, 1))
    for _ in range(4):
        table.add_column()
    start = max(0, min(sets.row - SHOWN_ROWS // 2, len(sets.pset) - SHOWN_ROWS))
    for index in range(start, min(start + SHOWN_ROWS, len(sets.pset))):
        row = sets.pset.rows[index]
        style = "bold reverse" if index == sets.row else ""
        table.add_row(f"{'>' if index == sets.row else ' '}{index + 1}", _clip(row.clean),
                      repr(row.target), repr(row.foil), style=style)
    return table


def sweep_text(sets: PromptSets) -> Text:
    result = sets.sweep.result if sets.sweep is not None and sets.sweep.ok else sets.sweep_partial
    if result is None:
        return Text("set sweep: not run (H)", style="dim")
    mean, std = np.asarray(result.mean), np.asarray(result.std)
    state = "complete" if result.complete else "running"
    text = Text(f"set sweep ({result.direction}, {len(result.base_metric)} rows, {state}): "
                f"base metric {np.mean(result.base_metric):+.3f}; strongest cells (mean ± std over rows):\n")
    flat = np.nan_to_num(np.abs(mean), nan=-1.0).ravel()
    for index in np.argsort(-flat, kind="stable")[:SHOWN_CELLS]:
        if flat[index] < 0:
            break
        layer, head = divmod(int(index), mean.shape[1])
        text.append(f"  L{layer}.H{head} {mean[layer, head]:+.3f} ± {std[layer, head]:.3f}\n")
    return text


def estimate_text(sets: PromptSets) -> Text:
    outcome = sets.estimate
    if outcome is None or not outcome.ok:
        return Text("estimate: not run (Z)", style="dim")
    result = outcome.result
    text = Text(f"estimate {result.method} (grid \"estimate\")")
    if not result.exact:
        return text + Text(": no head verified (Z with verify k > 0 patches the top k exactly)\n")
    text.append(f": {len(result.exact)} top head(s) verified by exact patching, "
                f"marked {EXACT_MARK} on the grid (their cells show the exact value):\n")
    for (layer, head), exact in result.exact.items():
        text.append(f"  L{layer}.H{head} estimated {result.estimated[layer, head]:+.3f} → "
                    f"exact {exact:+.3f}\n")
    return text


def massive_table(sets: PromptSets) -> Table | Text:
    outcome = sets.massive
    if outcome is None or not outcome.ok:
        return Text("massive activations: not computed (Y)", style="dim")
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


class SetView(VerticalScroll):
    """Renders a `PromptSets` state; never holds state of its own."""

    def compose(self) -> ComposeResult:
        yield Static("", id="set-numbers")
        yield Static("", id="set-rows")
        yield Static("", id="set-results")
        yield Static("", id="set-massive")

    def show(self, sets: PromptSets) -> None:
        self.query_one("#set-numbers", Static).update(Text(sets.describe(), style="bold"))
        self.query_one("#set-rows", Static).update(rows_table(sets))
        self.query_one("#set-results", Static).update(Text.assemble(sweep_text(sets), estimate_text(sets)))
        self.query_one("#set-massive", Static).update(massive_table(sets))
